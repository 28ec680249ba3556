"""The order of an epoch's (mesh, camera) pairs and its partition over ranks and loader workers.

Pure numpy functions of metadata (how many pairs of the split each chunk holds); no store access.

**The epoch order P** is a function of (seed, epoch) alone, never of the number of ranks, workers
or the batch size: the split's chunks in a seeded permutation, cut into *windows* of
``window_chunks`` consecutive chunks, and the pairs of each window in a seeded permutation (a
block shuffle: a reader holds one window's chunks at a time). A position of P is an integer in
[0, N), N the pairs of the split.

**Consumption.** Training takes P in global steps of G = world_size x per-rank batch pairs. A
*segment* is a stretch of an epoch run with one :class:`Layout` (W ranks, K workers per rank,
per-rank batch b, W b = G). At the start of a segment the pairs not yet consumed in the epoch,
in P order (the *remainder* R, |R| = n), are cut into W K contiguous spans, one per (rank,
worker) *slot*: each rank makes T = n // G batches, its worker k the batches k, k + K, ... of
them (how torch's DataLoader deals them), and slot (r, k) reads its span front to back. A span
covers consecutive windows, so a slot reads whole windows and two neighbouring slots share at
most the window on their border. After `batches` steps of the segment each slot has consumed a
prefix of its span; the segment's next remainder is R without those prefixes, still in P order.

**What is exact.** The remainder's last n - T G pairs lie beyond every span, so each segment
hands them on untouched: whatever the layouts and wherever they change (as long as G stays the
same), an epoch consumes exactly the pairs P[:(N // G) G], each once, and skips the last N mod G
pairs of its order (other ones each epoch). With one layout the whole epoch is one segment and
the rank's batches are a pure function of (seed, epoch, layout, batch number), which makes a
resume on the same layout bit-exact. A change of layout keeps the set and re-partitions the
remainder: the order after the change differs from the one the old layout would have taken.

Remainders are unions of intervals of P: (n, 2) int64 arrays of sorted, disjoint [start, stop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """How a segment is partitioned: world_size ranks x num_workers slots each (>= 1: a loader
    without worker processes reads in one slot), batch_size pairs per rank and step."""

    world_size: int
    num_workers: int
    batch_size: int

    def __post_init__(self) -> None:
        if min(self.world_size, self.num_workers, self.batch_size) < 1:
            raise ValueError(f"layout {self}: every field must be >= 1")

    @property
    def slots(self) -> int:
        return self.world_size * self.num_workers

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size


@dataclass(frozen=True)
class Segment:
    """A finished stretch of an epoch: its layout and the batches each rank took in it."""

    layout: Layout
    batches: int


def chunk_order(chunk_ids: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of the chunks that hold pairs of the split: a seeded permutation of
    ``chunk_ids`` (n,) int64, or ``chunk_ids`` as given when not ``shuffle``."""
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    if not shuffle:
        return chunk_ids
    return chunk_ids[np.random.default_rng([seed, epoch, 0]).permutation(len(chunk_ids))]


def window_pair_order(rows: int, num_cameras: int, seed: int, epoch: int, window: int,
                      shuffle: bool) -> np.ndarray:
    """(rows * num_cameras, 2) int64 (row among the window's meshes of the split, camera position):
    the order of one window's pairs, mesh-major when not ``shuffle``."""
    pairs = np.stack(np.meshgrid(np.arange(rows), np.arange(num_cameras), indexing="ij"), -1).reshape(-1, 2)
    if shuffle:
        pairs = pairs[np.random.default_rng([seed, epoch, 1, window]).permutation(len(pairs))]
    return pairs


def window_offsets(pairs_per_chunk: np.ndarray, window_chunks: int) -> np.ndarray:
    """(num_windows + 1,) int64: position in P where each window starts (then N), from the pairs
    of each chunk in the epoch's chunk order."""
    per_chunk = np.asarray(pairs_per_chunk, dtype=np.int64)
    starts = np.arange(0, len(per_chunk), window_chunks)
    sizes = np.add.reduceat(per_chunk, starts) if len(per_chunk) else np.zeros(0, np.int64)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def whole(n: int) -> np.ndarray:
    """The remainder of a fresh epoch of ``n`` pairs: [(0, n)] (no interval when n == 0)."""
    return np.array([[0, n]] if n > 0 else [], dtype=np.int64).reshape(-1, 2)


def size(intervals: np.ndarray) -> int:
    """Positions in a union of intervals."""
    return int((intervals[:, 1] - intervals[:, 0]).sum())


def take(intervals: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Positions ``lo`` .. ``hi`` - 1 of the sequence that ``intervals`` lists (in their order),
    as intervals of P."""
    lens = intervals[:, 1] - intervals[:, 0]
    ends = np.cumsum(lens)
    starts = ends - lens
    keep = (ends > lo) & (starts < hi)
    out = intervals[keep].copy()
    out[:, 0] += np.maximum(lo - starts[keep], 0)
    out[:, 1] -= np.maximum(ends[keep] - hi, 0)
    return out


def worker_batches(batches: int, num_workers: int) -> list[int]:
    """Of a rank's ``batches`` batches, dealt round-robin, how many each worker makes."""
    return [len(range(k, batches, num_workers)) for k in range(num_workers)]


def train_spans(n: int, layout: Layout) -> tuple[int, np.ndarray]:
    """(T, spans) for a remainder of ``n`` pairs: T = n // G batches per rank, and spans (slots, 2)
    int64 [start, stop) positions in the remainder of slot r * num_workers + k (whole batches)."""
    per_rank = n // layout.global_batch
    per_worker = np.asarray(worker_batches(per_rank, layout.num_workers), np.int64) * layout.batch_size
    lengths = np.tile(per_worker, layout.world_size)
    stops = np.cumsum(lengths)
    return per_rank, np.stack([stops - lengths, stops], 1)


def eval_spans(n: int, layout: Layout) -> np.ndarray:
    """(slots, 2) [start, stop) in the remainder: ``n`` pairs in near-equal contiguous spans, for
    a pass that keeps every pair (partial batches included)."""
    lengths = np.full(layout.slots, n // layout.slots, np.int64)
    lengths[: n % layout.slots] += 1
    stops = np.cumsum(lengths)
    return np.stack([stops - lengths, stops], 1)


def consumed_spans(n: int, segment: Segment) -> np.ndarray:
    """(slots, 2) [start, stop) positions of the remainder (``n`` pairs) that a segment consumed:
    each slot's span prefix of the batches its worker made in ``segment.batches`` rank batches."""
    lay = segment.layout
    per_rank, spans = train_spans(n, lay)
    if not 0 <= segment.batches <= per_rank:
        raise ValueError(f"segment of {segment.batches} batches: a remainder of {n} pairs makes "
                         f"{per_rank} steps of {lay.global_batch}")
    done = np.tile(np.asarray(worker_batches(segment.batches, lay.num_workers), np.int64), lay.world_size)
    return np.stack([spans[:, 0], spans[:, 0] + done * lay.batch_size], 1)


def remainder(num_pairs: int, earlier: tuple[Segment, ...] = ()) -> np.ndarray:
    """The pairs an epoch of ``num_pairs`` pairs has not consumed after the ``earlier`` segments,
    in P order, as intervals of P."""
    rest = whole(num_pairs)
    for seg in earlier:
        n = size(rest)
        used = consumed_spans(n, seg)
        keep = np.stack([np.concatenate([[0], used[:, 1]]), np.concatenate([used[:, 0], [n]])], 1)
        keep = keep[keep[:, 1] > keep[:, 0]]
        parts = [take(rest, int(a), int(b)) for a, b in keep]
        rest = np.concatenate(parts) if parts else whole(0)
    return rest


def window_pieces(intervals: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """A sequence of P positions as [(window, first, stop)]: consecutive runs of positions
    ``offsets[window] + first`` .. ``offsets[window] + stop - 1`` of one window each, in order."""
    out = []
    for a, b in intervals.tolist():
        w = int(np.searchsorted(offsets, a, side="right")) - 1
        while a < b:
            stop = min(b, int(offsets[w + 1]))
            out.append((w, a - int(offsets[w]), stop - int(offsets[w])))
            a, w = stop, w + 1
    return out


def resumed_batch_size(saved_world: int, saved_batch: int, world: int, requested: int) -> int:
    """The per-rank batch that keeps a checkpoint's global batch (saved_world x saved_batch) on
    ``world`` ranks. ``requested`` (the run's configured per-rank batch) must be that value or
    the original run's one (then adjusted). Raises ValueError saying what to run instead."""
    total = saved_world * saved_batch
    if total % world:
        divisors = [w for w in range(1, total + 1) if total % w == 0]
        raise ValueError(f"the checkpoint's global batch of {total} pairs ({saved_world} rank(s) x {saved_batch}) "
                         f"does not divide over {world} ranks; resume on one of {divisors[:12]} ranks")
    per_rank = total // world
    if requested not in (per_rank, saved_batch):
        raise ValueError(f"a per-rank batch of {requested} on {world} rank(s) would change the global batch of "
                         f"{total} pairs it was saved with ({saved_world} rank(s) x {saved_batch}); give {per_rank}")
    return per_rank
