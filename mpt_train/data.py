"""Streaming (mesh, camera) pairs from a store: sharded per rank and worker, shuffled, resumable.

Data order is a pure function of (seed, epoch, layout): each epoch permutes the store's
chunks that hold meshes of the split, deals them round-robin to the world_size x
num_workers "slots" (so ranks and workers read disjoint chunks), and within a slot
shuffles all pairs of `shuffle_buffer_chunks` consecutive chunks together (a block
shuffle buffer). Each slot batches its own pairs; torch's DataLoader interleaves the
workers' batches round-robin, which this module reproduces exactly to skip to any batch
on resume without reading the skipped data. Everything needed for that plan (which
meshes of which chunk belong to the split) is metadata read once at open.

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
from mpt_train.store import StoreReader, open_store

STATE_VERSION = 1

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
    joint_set: 3D joint set emitted as "joints3d"; extra_joint_sets are emitted as
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
    joint_set: str = "coco17"
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


def _rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, *stream])


def chunk_order(chunk_ids: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of the chunks that hold pairs of the split: a seeded permutation."""
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    if not shuffle:
        return chunk_ids
    return chunk_ids[_rng(seed, epoch, 0).permutation(len(chunk_ids))]


def slot_chunks(order: np.ndarray, slot: int, num_slots: int) -> np.ndarray:
    """Chunks of one (rank, worker) slot: every num_slots-th chunk of the epoch's order."""
    return order[slot::num_slots]


def interleave(batch_counts: list[int]) -> list[tuple[int, int]]:
    """The order in which torch's DataLoader returns worker batches: round-robin over workers,
    skipping workers that have run out. Returns [(worker, batch of that worker), ...]."""
    out = []
    for r in range(max(batch_counts, default=0)):
        out += [(w, r) for w, n in enumerate(batch_counts) if r < n]
    return out


@dataclass(frozen=True)
class _Window:
    chunks: tuple[int, ...]  # chunk ids read together
    start: int  # offset of the window's first pair in the slot's pair sequence
    order: np.ndarray  # (n, 2) int64: (row within the window's selected meshes, camera position)


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
        self.worker_offset = 0
        self.split_value = schema.SPLITS[config.split]
        for name in (config.joint_set, *config.extra_joint_sets):
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
    def _chunk_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders.clear()  # one epoch at a time
            self._orders[epoch] = chunk_order(self.chunk_ids, self.config.seed, epoch, self.config.shuffle)
        return self._orders[epoch]

    def _worker_batches(self, epoch: int, rank: int) -> list[int]:
        """Batches each worker of `rank` makes in `epoch`."""
        order = self._chunk_order(epoch)
        slots = self.world_size * self.num_workers
        b, out = self.config.batch_size, []
        for w in range(self.num_workers):
            n = int(self.chunk_counts[slot_chunks(order, rank * self.num_workers + w, slots)].sum())
            n *= len(self.cameras)
            out.append(n // b if self.config.drop_last else -(-n // b))
        return out

    def rank_plan(self, epoch: int) -> list[tuple[int, int]]:
        """[(worker, worker batch)] in the order this rank yields its batches in `epoch`."""
        plan = interleave(self._worker_batches(epoch, self.rank))
        if self.config.drop_last:
            # DDP: every rank must take the same number of steps.
            shortest = min(sum(self._worker_batches(epoch, r)) for r in range(self.world_size))
            plan = plan[:shortest]
        return plan

    def num_batches(self, epoch: int) -> int:
        """Batches this rank yields in `epoch` (from metadata alone)."""
        return len(self.rank_plan(epoch))

    def _windows(self, epoch: int, slot: int) -> list[_Window]:
        cfg = self.config
        chunks = slot_chunks(self._chunk_order(epoch), slot, self.world_size * self.num_workers)
        windows, start, n_cams = [], 0, len(self.cameras)
        for w0 in range(0, len(chunks), cfg.shuffle_buffer_chunks):
            group = tuple(int(c) for c in chunks[w0 : w0 + cfg.shuffle_buffer_chunks])
            rows = int(self.chunk_counts[list(group)].sum())
            pairs = np.stack(np.meshgrid(np.arange(rows), np.arange(n_cams), indexing="ij"), -1).reshape(-1, 2)
            if cfg.shuffle:
                pairs = pairs[_rng(cfg.seed, epoch, 1, slot, w0).permutation(len(pairs))]
            windows.append(_Window(group, start, pairs))
            start += len(pairs)
        return windows

    def for_epoch(self, epoch: int, skip_batches: int = 0) -> "PairStream":
        """A copy that streams `epoch` starting after its first `skip_batches` batches."""
        if skip_batches < 0 or skip_batches > self.num_batches(epoch):
            raise ValueError(f"skip_batches {skip_batches} outside 0..{self.num_batches(epoch)} for epoch {epoch}")
        other = object.__new__(PairStream)
        other.__dict__.update(self.__dict__)
        other._orders = {}
        other.epoch, other.skip_batches = epoch, skip_batches
        # torch's DataLoader always asks worker process 0 first; the plan's next batch may
        # belong to another worker, so process i plays worker (i + offset) mod W. Round-robin
        # over the workers that still have batches is then the plan's own continuation.
        plan = self.rank_plan(epoch)
        other.worker_offset = plan[skip_batches][0] if skip_batches < len(plan) else 0
        return other

    # -- reading
    def _load_window(self, window: _Window) -> dict[str, np.ndarray]:
        sets = (self.config.joint_set, *self.config.extra_joint_sets)
        parts = []
        # The window's chunks in one batch of concurrent requests (round trips overlap on object storage).
        for data in self.reader.read_chunks(list(window.chunks), joint_sets=sets, vertices=self.config.vertices):
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
        np.take(data[f"joints/{self.config.joint_set}"], rows, axis=0, out=out["joints3d"][dst])
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
            "joints3d": ((n, *self._joint_shape(self.config.joint_set)), torch.float32),
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
        """[first, stop) batch numbers of this worker in the current epoch after the skip."""
        plan = self.rank_plan(self.epoch)
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
        windows = self._windows(self.epoch, self.rank * self.num_workers + worker)
        total_pairs = windows[-1].start + len(windows[-1].order) if windows else 0
        loaded: dict[int, dict[str, np.ndarray]] = {}
        for batch_no in range(first, stop):
            lo, hi = batch_no * b, min((batch_no + 1) * b, total_pairs)
            batch = self._allocate(hi - lo, shared=info is not None)
            views = {key: t.numpy() for key, t in batch.items()}
            for wi, win in enumerate(windows):
                w_lo, w_hi = win.start, win.start + len(win.order)
                if w_hi <= lo or w_lo >= hi:
                    continue
                if wi not in loaded:
                    loaded[wi] = self._load_window(win)
                a, z = max(lo, w_lo), min(hi, w_hi)
                self._gather_into(views, a - lo, loaded[wi], win.order[a - w_lo : z - w_lo])
            for wi in [k for k in loaded if windows[k].start + len(windows[k].order) <= hi]:
                del loaded[wi]  # fully consumed: release the window's chunks
            yield batch


class PairLoader:
    """One rank's batches, epoch after epoch, with an exact mid-epoch `state_dict`.

    Iterating yields the rest of the current epoch, then moves to the next epoch (use
    `loader.epoch` as the epoch counter). `state_dict()` taken after n batches of an epoch
    resumes at batch n + 1 of it; taken after its last batch, at the next epoch's first.
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
        pin = config.pin_memory
        self.pin_memory = torch.cuda.is_available() if pin is None else pin

    @property
    def fingerprint(self) -> str | None:
        return self.reader.fingerprint

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches this rank yields in `epoch` (default: the current one), partial ones included."""
        return self.dataset.num_batches(self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return self.num_batches()

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch at the next iteration."""
        self.epoch, self.batches_done = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batches_done >= self.num_batches():
            # A position at the end of an epoch (e.g. a checkpoint after its last step)
            # continues with the next epoch rather than an empty pass.
            self.epoch, self.batches_done = self.epoch + 1, 0
        if self.num_batches() == 0 and self.config.drop_last:
            # (an evaluation rank may legitimately have nothing: its metric sums are then zero)
            raise ValueError(
                f"{self.config.shards}: split {self.config.split!r} gives rank {self.rank} no batch of "
                f"{self.config.batch_size} in epoch {self.epoch} ({self.dataset.num_pairs} pairs over "
                f"{self.world_size} rank(s) x {self.dataset.num_workers} worker(s), whole chunks each; "
                f"meshes per split: {self.reader.split_sizes()}); use a smaller batch_size or fewer workers"
            )
        stream = self.dataset.for_epoch(self.epoch, self.batches_done)
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
        """Position (epoch, batches done) plus everything that fixes the data order."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "layout": self._layout(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], allow_other_store: bool = False) -> None:
        """Resume at the saved position. Refuses another version, store or data layout."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this loader reads {STATE_VERSION}")
        if state["fingerprint"] != self.fingerprint and not allow_other_store:
            raise ValueError(
                f"loader state was saved on store fingerprint {state['fingerprint']!r}, "
                f"{self.config.shards} has {self.fingerprint!r}; resume on the same store or force it"
            )
        mine = self._layout()
        diff = {k: (v, mine.get(k)) for k, v in state["layout"].items() if mine.get(k) != v}
        if diff:
            raise ValueError(
                "loader state does not match this loader's data layout (saved, current): "
                + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items())
            )
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if not 0 <= done <= self.num_batches(epoch):
            raise ValueError(f"loader state: batches_done {done} outside 0..{self.num_batches(epoch)}")
        self.epoch, self.batches_done = epoch, done


def make_loader(config: LoaderConfig) -> PairLoader:
    """Open the store and build the rank's loader (rank and world from torch.distributed when initialised)."""
    return PairLoader(config)
