"""Streaming (mesh, camera) pairs from a store: sharded per rank and worker, shuffled, resumable.

The epoch's order of pairs is a pure function of (seed, epoch) (:mod:`mpt_train.order`): the
chunks that hold meshes of the split in a seeded permutation, the pairs of each window of
`shuffle_buffer_chunks` consecutive chunks shuffled together (a block shuffle buffer). The
world_size x num_workers "slots" each take a contiguous span of it, so a slot reads whole
windows (neighbouring slots share at most the window on their border), and every rank makes
the same number of full batches. Each slot batches its own pairs; torch's DataLoader
interleaves the workers' batches round-robin, which this module reproduces exactly to skip to
any batch on resume without reading the skipped data. Everything needed for that plan (which
meshes of which chunk belong to the split) is metadata read once at open. A state saved on one
layout resumes on another (elastic resume, see :class:`PairLoader`).

Per-sample randomness for the device-side augmentation derives from the integer "key"
each sample carries: a hash of (seed, epoch, pair index), independent of the layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mpt_data import schema
from mpt_data.remote import redact_options
from mpt_train.order import (Layout, Segment, chunk_order, eval_spans, remainder, resumed_batch_size, size, take,
                             train_spans, window_offsets, window_pair_order, window_pieces, worker_batches)
from mpt_train.store import StoreReader, open_store

STATE_VERSION = 2  # 2: the epoch order of mpt_train.order and the epoch's earlier segments ("earlier")
# Layout fields a state may change on resume (elastic resume); every other one must match.
_ELASTIC = ("world_size", "num_workers", "batch_size")

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class LoaderConfig:
    """Configuration of the pair stream.

    shards: store path or fsspec URL. split: "train", "val" or "test".
    batch_size: pairs per batch, per rank. num_workers: DataLoader worker processes per rank
    (0 = read in the main process). seed: data-order seed.
    shuffle: permute chunks and pairs each epoch (False: store order, for evaluation).
    drop_last: drop each worker's partial batch and trim every rank to the same number of
    batches, which DDP training needs; False keeps every pair (evaluation: a finite pass
    over all pairs of the split, ranks may then differ by a few batches).
    shuffle_buffer_chunks: chunks whose pairs are shuffled together (memory: this many chunks).
    joint_set: 3D joint set emitted as "joints3d" (None: the store's heatmap joint set, coco17 for
    a body store, hand21 for a hand store); extra_joint_sets are emitted as
    "joints3d_<set>". cameras: subset of camera indices (None: all).
    allow_unfrozen: accept a store that is not frozen. storage_options: fsspec options for a remote `shards`
    (endpoint, credentials); cache_dir: local read-through chunk cache. rank, world_size: used when
    torch.distributed is not initialised (otherwise taken from it).
    pin_memory: None = pin when CUDA is available. prefetch_factor: batches per worker in flight.
    """

    shards: str
    split: str = "train"
    batch_size: int = 64
    num_workers: int = 2
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    shuffle_buffer_chunks: int = 4
    joint_set: str | None = None
    extra_joint_sets: tuple[str, ...] = ()
    cameras: tuple[int, ...] | None = None
    vertices: bool = True
    allow_unfrozen: bool = False
    rank: int = 0
    world_size: int = 1
    pin_memory: bool | None = None
    prefetch_factor: int = 4
    # fsspec options to reach `shards` (may hold credentials: never written down, see to_dict) and a local
    # read-through chunk cache (mpt_train.store.ChunkCache).
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.split not in schema.SPLITS:
            raise ValueError(f"split {self.split!r}: expected one of {list(schema.SPLITS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer_chunks < 1:
            raise ValueError(f"shuffle_buffer_chunks must be >= 1, got {self.shuffle_buffer_chunks}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def for_eval(self, split: str = "val") -> "LoaderConfig":
        """The same store and layout as a finite, deterministic pass over every pair of `split`."""
        return replace(self, split=split, shuffle=False, drop_last=False)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-able data to write into checkpoints and run configs: tuples as lists, and the
        storage options with every credential replaced (`mpt_data.remote.redact_options`)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        out["storage_options"] = redact_options(self.storage_options)
        return out


# ----------------------------------------------------------------------------------------
# Pure planning functions (numpy only; no store access).


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, epoch: int, pair_index: np.ndarray) -> np.ndarray:
    """(n,) int64 keys in [0, 2^63): a hash of (seed, epoch, pair index).

    pair_index = mesh * num_cameras + camera (store-wide camera index), so a pair's key
    does not depend on ranks, workers or batch composition.
    """
    with np.errstate(over="ignore"):
        base = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ np.array([epoch], dtype=np.uint64))
        h = _splitmix64(base ^ np.asarray(pair_index, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(1)).astype(np.int64)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts`` (e.g. seed, rank, step)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def interleave(batch_counts: list[int]) -> list[tuple[int, int]]:
    """The order in which torch's DataLoader returns worker batches: round-robin over workers,
    skipping workers that have run out. Returns [(worker, batch of that worker), ...]."""
    out = []
    for r in range(max(batch_counts, default=0)):
        out += [(w, r) for w, n in enumerate(batch_counts) if r < n]
    return out


# ----------------------------------------------------------------------------------------


def _dist_rank_world(config: LoaderConfig) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return config.rank, config.world_size


class PairStream(IterableDataset):
    """Batches of (mesh, camera) pairs for one rank; each DataLoader worker streams its own chunks.

    Yields dicts of CPU tensors (B <= batch_size):
      joints2d (B, K, 2) float32 crop pixels; visible (B, K) bool;
      joints3d (B, J, 3) float32 metres, world (body) axes, root-centred, for config.joint_set
      (and joints3d_<set> for extra_joint_sets); vertices (B, V, 3) float32 metres, same frame;
      camera_R (B, 3, 3) float32 world -> camera rotation; mesh, camera, key (B,) int64.
    """

    def __init__(self, reader: StoreReader, config: LoaderConfig, rank: int, world_size: int) -> None:
        super().__init__()
        self.reader = reader
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_batches = 0
        self.earlier: tuple[Segment, ...] = ()  # segments of `epoch` run on other layouts (mpt_train.order)
        self.worker_offset = 0
        self.split_value = schema.SPLITS[config.split]
        self.joint_set: str = config.joint_set or reader.attrs.get(schema.ATTR_HEATMAP_JOINT_SET, "coco17")
        for name in (self.joint_set, *config.extra_joint_sets):
            if name not in reader.joint_sets:
                raise ValueError(f"{reader.url}: joint set {name!r} not in the store; it has {list(reader.joint_sets)}")
        cams = tuple(range(reader.num_cameras)) if config.cameras is None else tuple(config.cameras)
        if not cams or any(not 0 <= c < reader.num_cameras for c in cams) or len(set(cams)) != len(cams):
            raise ValueError(f"cameras {config.cameras}: expected distinct indices in 0..{reader.num_cameras - 1}")
        self.cameras = np.asarray(cams, dtype=np.int64)
        self.chunk_counts = reader.split_counts(self.split_value)
        self.chunk_ids = np.flatnonzero(self.chunk_counts > 0)
        self.camera_R = reader.cameras.R.astype(np.float32)
        self._orders: dict[int, np.ndarray] = {}

    @property
    def num_workers(self) -> int:
        return max(1, self.config.num_workers)

    @property
    def num_pairs(self) -> int:
        """Pairs of the split (all ranks)."""
        return int(self.chunk_counts.sum()) * len(self.cameras)

    # -- plan
    @property
    def layout(self) -> Layout:
        return Layout(self.world_size, self.num_workers, self.config.batch_size)

    def _chunk_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders.clear()  # one epoch at a time
            self._orders[epoch] = chunk_order(self.chunk_ids, self.config.seed, epoch, self.config.shuffle)
        return self._orders[epoch]

    def _window_offsets(self, epoch: int) -> np.ndarray:
        per_chunk = self.chunk_counts[self._chunk_order(epoch)] * len(self.cameras)
        return window_offsets(per_chunk, self.config.shuffle_buffer_chunks)

    def _remainder(self, earlier: tuple[Segment, ...]) -> np.ndarray:
        """The pairs an epoch has not consumed after its `earlier` segments, as intervals of positions
        in its order (the same for every epoch: only what sits at a position depends on it)."""
        return remainder(self.num_pairs, earlier)

    def _spans(self, earlier: tuple[Segment, ...]) -> tuple[np.ndarray, list[int]]:
        """(spans, batches per worker of this rank): every slot's [start, stop) in the remainder."""
        n, lay, b = size(self._remainder(earlier)), self.layout, self.config.batch_size
        if self.config.drop_last:
            per_rank, spans = train_spans(n, lay)
            return spans, worker_batches(per_rank, lay.num_workers)
        spans = eval_spans(n, lay)
        mine = spans[self.rank * lay.num_workers : (self.rank + 1) * lay.num_workers]
        return spans, [-(-int(hi - lo) // b) for lo, hi in mine]

    def rank_plan(self, epoch: int, earlier: tuple[Segment, ...] = ()) -> list[tuple[int, int]]:
        """[(worker, worker batch)] in the order this rank yields its batches in `epoch` after the
        `earlier` segments. With drop_last every rank makes the same number of full batches. (Every
        epoch has the same plan; which pairs the batches hold depends on the epoch.)"""
        return interleave(self._spans(earlier)[1])

    def num_batches(self, epoch: int, earlier: tuple[Segment, ...] = ()) -> int:
        """Batches this rank yields in `epoch` after the `earlier` segments (from metadata alone)."""
        return len(self.rank_plan(epoch, earlier))

    def slot_pieces(self, epoch: int, earlier: tuple[Segment, ...], slot: int) -> list[tuple[int, int, int]]:
        """The pair sequence of `slot` as [(window, first, stop)] runs of window positions, in order."""
        spans, _ = self._spans(earlier)
        lo, hi = (int(x) for x in spans[slot])
        return window_pieces(take(self._remainder(earlier), lo, hi), self._window_offsets(epoch))

    def window_chunks(self, epoch: int, window: int) -> tuple[int, ...]:
        """The chunk ids of `window` of `epoch`, read together."""
        w = self.config.shuffle_buffer_chunks
        return tuple(int(c) for c in self._chunk_order(epoch)[window * w : (window + 1) * w])

    def for_epoch(self, epoch: int, skip_batches: int = 0, earlier: tuple[Segment, ...] = ()) -> "PairStream":
        """A copy that streams `epoch` after its `earlier` segments, starting after the first
        `skip_batches` batches of the current one."""
        total = self.num_batches(epoch, earlier)
        if skip_batches < 0 or skip_batches > total:
            raise ValueError(f"skip_batches {skip_batches} outside 0..{total} for epoch {epoch}")
        other = object.__new__(PairStream)
        other.__dict__.update(self.__dict__)
        other._orders = {}
        other.epoch, other.skip_batches, other.earlier = epoch, skip_batches, tuple(earlier)
        # torch's DataLoader always asks worker process 0 first; the plan's next batch may
        # belong to another worker, so process i plays worker (i + offset) mod W. Round-robin
        # over the workers that still have batches is then the plan's own continuation.
        plan = self.rank_plan(epoch, earlier)
        other.worker_offset = plan[skip_batches][0] if skip_batches < len(plan) else 0
        return other

    # -- reading
    def _load_window(self, chunks: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The split's meshes of a window's `chunks`, in chunk order (rows of the window's pair order)."""
        sets = (self.joint_set, *self.config.extra_joint_sets)
        parts = []
        # The window's chunks in one batch of concurrent requests (round trips overlap on object storage).
        for data in self.reader.read_chunks(list(chunks), joint_sets=sets, vertices=self.config.vertices):
            keep = data["split"] == self.split_value
            parts.append({k: v[keep] for k, v in data.items()})
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # Only the selected cameras, so camera positions index axis 1 directly.
        out["joints2d"] = out["joints2d"][:, self.cameras]
        out["visible"] = out["visible"][:, self.cameras]
        return out

    def _gather_into(self, out: dict[str, np.ndarray], at: int, data: dict[str, np.ndarray], pairs: np.ndarray) -> None:
        """Write the pairs' sample fields into rows [at, at + len(pairs)) of the batch arrays `out`."""
        rows, cpos = pairs[:, 0], pairs[:, 1]
        n = len(pairs)
        cam = self.cameras[cpos]
        mesh = data["mesh"][rows]
        dst = slice(at, at + n)
        out["joints2d"][dst] = data["joints2d"][rows, cpos]
        out["visible"][dst] = data["visible"][rows, cpos]
        np.take(data[f"joints/{self.joint_set}"], rows, axis=0, out=out["joints3d"][dst])
        for name in self.config.extra_joint_sets:
            np.take(data[f"joints/{name}"], rows, axis=0, out=out[f"joints3d_{name}"][dst])
        if self.config.vertices:
            np.take(data["vertices"], rows, axis=0, out=out["vertices"][dst])
        out["camera_R"][dst] = self.camera_R[cam]
        out["mesh"][dst] = mesh
        out["camera"][dst] = cam
        # An unshuffled (evaluation) pass is the same every time, its augmentation included.
        out["key"][dst] = sample_keys(self.config.seed, self.epoch if self.config.shuffle else 0,
                                      mesh * self.reader.num_cameras + cam)

    def _allocate(self, n: int, shared: bool) -> dict[str, torch.Tensor]:
        """Empty batch tensors for n pairs; in shared memory inside a worker process, so handing
        the batch to the main process costs no copy."""
        k = self.reader.num_heatmap_joints
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "joints2d": ((n, k, 2), torch.float32),
            "visible": ((n, k), torch.bool),
            "joints3d": ((n, *self._joint_shape(self.joint_set)), torch.float32),
            "camera_R": ((n, 3, 3), torch.float32),
            "mesh": ((n,), torch.int64),
            "camera": ((n,), torch.int64),
            "key": ((n,), torch.int64),
        }
        for name in self.config.extra_joint_sets:
            shapes[f"joints3d_{name}"] = ((n, *self._joint_shape(name)), torch.float32)
        if self.config.vertices:
            shapes["vertices"] = ((n, self.reader.num_vertices, 3), torch.float32)
        out = {}
        for key, (shape, dtype) in shapes.items():
            t = torch.empty(shape, dtype=dtype)
            out[key] = t.share_memory_() if shared else t
        return out

    def _joint_shape(self, name: str) -> tuple[int, int]:
        return (int(self.reader.group[f"{schema.JOINTS_GROUP}/{name}"].shape[1]), 3)

    def _worker_range(self, worker: int) -> tuple[int, int]:
        """[first, stop) batch numbers of this worker in the current segment after the skip."""
        plan = self.rank_plan(self.epoch, self.earlier)
        done = sum(1 for w, _ in plan[: self.skip_batches] if w == worker)
        total = sum(1 for w, _ in plan if w == worker)
        return done, total

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else (info.id + self.worker_offset) % self.num_workers
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"PairStream planned for {self.num_workers} workers, runs in {info.num_workers}")
        if info is not None:
            self.reader._group = None  # re-open in this process
        first, stop = self._worker_range(worker)
        if first >= stop:
            return
        b = self.config.batch_size
        # The slot's pairs: runs of window positions; a window's runs are consecutive, so its
        # chunks are read once and released when the sequence moves past it.
        pieces = self.slot_pieces(self.epoch, self.earlier, self.rank * self.num_workers + worker)
        starts = np.concatenate([[0], np.cumsum([hi - lo for _, lo, hi in pieces])]).astype(np.int64)
        last_end = {w: int(starts[i + 1]) for i, (w, _, _) in enumerate(pieces)}
        loaded: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        for batch_no in range(first, stop):
            lo, hi = batch_no * b, min((batch_no + 1) * b, int(starts[-1]))
            batch = self._allocate(hi - lo, shared=info is not None)
            views = {key: t.numpy() for key, t in batch.items()}
            first_piece = int(np.searchsorted(starts, lo, side="right")) - 1
            for i in range(first_piece, len(pieces)):
                p_lo = int(starts[i])
                if p_lo >= hi:
                    break
                w, w_first, _ = pieces[i]
                if w not in loaded:
                    chunks = self.window_chunks(self.epoch, w)
                    data = self._load_window(chunks)
                    order = window_pair_order(len(data["mesh"]), len(self.cameras), self.config.seed, self.epoch,
                                              w, self.config.shuffle)
                    loaded[w] = (data, order)
                data, order = loaded[w]
                a, z = max(lo, p_lo), min(hi, int(starts[i + 1]))
                self._gather_into(views, a - lo, data, order[w_first + a - p_lo : w_first + z - p_lo])
            for w in [k for k in loaded if last_end[k] <= hi]:
                del loaded[w]  # fully consumed: release the window's chunks
            yield batch


class PairLoader:
    """One rank's batches, epoch after epoch, with an exact mid-epoch `state_dict`.

    Iterating yields the rest of the current epoch, then moves to the next epoch (use
    `loader.epoch` as the epoch counter). `state_dict()` taken after n batches of an epoch
    resumes at batch n + 1 of it; taken after its last batch, at the next epoch's first.

    Elastic resume: a state saved on W ranks x K workers loads on W' x K' (training loaders,
    ``drop_last``) when the global batch W x batch_size stays the same; a loader configured with
    the original run's per-rank batch takes W x batch_size / W' instead. The epoch then goes on
    with exactly the pairs it has not consumed, re-partitioned over the new slots
    (:mod:`mpt_train.order`): the epoch's set of pairs is the one an uninterrupted run sees,
    their order after the resume point differs. On the same layout the resume is bit-exact.
    """

    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.reader = open_store(config.shards, allow_unfrozen=config.allow_unfrozen,
                                 storage_options=config.storage_options, cache_dir=config.cache_dir)
        rank, world = _dist_rank_world(config)
        self.rank, self.world_size = rank, world
        self.dataset = PairStream(self.reader, config, rank, world)
        self.epoch = 0
        self.batches_done = 0
        self.earlier: tuple[Segment, ...] = ()  # this epoch's segments on other layouts, before this one
        pin = config.pin_memory
        self.pin_memory = torch.cuda.is_available() if pin is None else pin

    @property
    def fingerprint(self) -> str | None:
        return self.reader.fingerprint

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches this rank yields in `epoch` (default: the current one, after its segments on other
        layouts), partial ones included."""
        if epoch is None or epoch == self.epoch:
            return self.dataset.num_batches(self.epoch, self.earlier)
        return self.dataset.num_batches(epoch)

    @property
    def batch_size(self) -> int:
        """Pairs per batch on this rank (an elastic resume may have changed the configured one)."""
        return self.config.batch_size

    def __len__(self) -> int:
        return self.num_batches()

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch at the next iteration."""
        self.epoch, self.batches_done, self.earlier = int(epoch), 0, ()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batches_done >= self.num_batches():
            # A position at the end of an epoch (e.g. a checkpoint after its last step)
            # continues with the next epoch rather than an empty pass.
            self.epoch, self.batches_done, self.earlier = self.epoch + 1, 0, ()
        if self.num_batches() == 0 and self.config.drop_last:
            # (an evaluation rank may legitimately have nothing: its metric sums are then zero)
            raise ValueError(
                f"{self.config.shards}: split {self.config.split!r} gives rank {self.rank} no batch of "
                f"{self.config.batch_size} in epoch {self.epoch} ({self.dataset.num_pairs} pairs over "
                f"{self.world_size} rank(s), {self.world_size * self.config.batch_size} per step; "
                f"meshes per split: {self.reader.split_sizes()}); use a smaller batch_size or fewer ranks"
            )
        stream = self.dataset.for_epoch(self.epoch, self.batches_done, self.earlier)
        workers = self.config.num_workers
        # Starting a DataLoader draws its workers' base seed from `generator`, or from the global
        # torch RNG when none is given: that draw would put the training step's randomness one
        # draw out of step after a mid-epoch resume. This generator is a pure function of the
        # position (and the streams read nothing from it: their order comes from the plan).
        gen = torch.Generator().manual_seed(derived_seed(self.config.seed, self.epoch, self.rank, self.batches_done))
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.config.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
            generator=gen,
        )
        for batch in loader:
            self.batches_done += 1  # counted before the consumer sees it: a checkpoint taken
            yield batch  # while processing this batch resumes after it
        self.epoch += 1
        self.batches_done = 0
        self.earlier = ()

    def _layout(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "split": cfg.split,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "num_workers": self.dataset.num_workers,
            "world_size": self.world_size,
            "shuffle": cfg.shuffle,
            "drop_last": cfg.drop_last,
            "shuffle_buffer_chunks": cfg.shuffle_buffer_chunks,
            "cameras": [int(c) for c in self.dataset.cameras],
        }

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, batches done in the current segment, the epoch's earlier segments on
        other layouts as [world_size, num_workers, batch_size, batches]) plus everything that
        fixes the data order."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "earlier": [[s.layout.world_size, s.layout.num_workers, s.layout.batch_size, s.batches]
                        for s in self.earlier],
            "layout": self._layout(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], allow_other_store: bool = False) -> None:
        """Resume at the saved position, on this loader's layout.

        Refuses another version, store (unless ``allow_other_store``), split, seed, shuffle,
        cameras or window size. Another number of ranks or workers is an elastic resume (see the
        class docstring): refused when the global batch would change or does not divide over
        this loader's ranks, and for a loader that keeps partial batches (evaluation).
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this loader reads {STATE_VERSION}"
                             + ("; version 1 states follow an earlier data order and cannot be continued: "
                                "start the run afresh" if state.get("version") == 1 else ""))
        if state["fingerprint"] != self.fingerprint and not allow_other_store:
            raise ValueError(
                f"loader state was saved on store fingerprint {state['fingerprint']!r}, "
                f"{self.config.shards} has {self.fingerprint!r}; resume on the same store or force it"
            )
        mine, saved = self._layout(), state["layout"]
        diff = {k: (v, mine.get(k)) for k, v in saved.items() if k not in _ELASTIC and mine.get(k) != v}
        if diff:
            raise ValueError(
                "loader state does not match this loader's data layout (saved, current): "
                + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items())
            )
        then = Layout(int(saved["world_size"]), int(saved["num_workers"]), int(saved["batch_size"]))
        earlier = tuple(Segment(Layout(int(w), int(k), int(b)), int(n)) for w, k, b, n in state["earlier"])
        if any(s.layout.global_batch != then.global_batch for s in earlier):
            raise ValueError(f"loader state: segments {state['earlier']} with another global batch than "
                             f"{then.global_batch}")
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if then != self.dataset.layout:
            if not self.config.drop_last:
                raise ValueError(f"loader state of {then.world_size} rank(s) x {then.num_workers} worker(s): a loader "
                                 "that keeps partial batches resumes only on the same ranks and workers")
            per_rank = resumed_batch_size(then.world_size, then.batch_size, self.world_size, self.config.batch_size)
            if per_rank != self.config.batch_size:
                self.config = replace(self.config, batch_size=per_rank)
                self.dataset = PairStream(self.reader, self.config, self.rank, self.world_size)
        # Batches per rank depend on the global batch and the earlier segments only, not on the layout.
        total = self.dataset.num_batches(epoch, earlier)
        if not 0 <= done <= total:
            raise ValueError(f"loader state: batches_done {done} outside 0..{total}")
        if then != self.dataset.layout and done > 0:
            # The saved segment ends here; this loader re-partitions what the epoch has left.
            earlier, done = (*earlier, Segment(then, done)), 0
        self.epoch, self.batches_done, self.earlier = epoch, done, earlier


def make_loader(config: LoaderConfig) -> PairLoader:
    """Open the store and build the rank's loader (rank and world from torch.distributed when initialised)."""
    return PairLoader(config)
