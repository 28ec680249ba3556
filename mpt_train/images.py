"""Stream the Parquet image shards of `mpt-data images` as a weighted mixture of datasets.

Mixture file (YAML), paths relative to the file:

    seed: 0                      # optional
    vertex_flip: mirror.npy      # optional (V,) mirror-vertex map of the mesh, for flips
    datasets:
      - name: h36m
        shards: shards/h36m      # a folder written by `mpt-data images` (has summary.json)
        weight: 0.6
      - name: coco
        shards: shards/coco
        weight: 0.4

Order and disjointness: the unit of reading is one Parquet row group (a few dozen persons).
Each dataset's row groups form a sequence Q = P_0 ++ P_1 ++ ... of seeded permutations
(one per pass over the dataset); consumer slot s of S (S = ranks × DataLoader workers) reads
Q[s], Q[s + S], Q[s + 2S], ..., so within every pass each row group goes to exactly one slot.
Rows inside a row group are shuffled with a seed of their own. Which dataset the k-th sample
of a slot comes from is a weighted draw seeded by (seed, slot, k // 4096), and the sample's
augmentation by (seed, slot, k): everything is a function of (seed, slot, k), so
``state_dict`` is the number of samples each slot has produced and resuming replays only the
(cheap) dataset draws, never the images.

Bad rows: a row whose JPEG cannot be decoded (OpenCV refuses it, or it lacks the end-of-image
marker FF D9, i.e. it is truncated) is skipped: the slot's k-th sample is then the next good
row of the same dataset, so the draws, the augmentation and every later sample stay the same
functions of (seed, slot, k). A skip is counted per slot and dataset, and the counts travel
with every sample (``skipped_rows``, (D,) int64, cumulative) to :class:`ImageBatches`, which
keeps them in its state: a resumed stream seeks past produced + skipped rows, so it skips the
same rows at the same places and never reads the skipped data again. Each process warns once
per bad row (``BadRowWarning``, naming the shard file, the row and the key); the count grows
at every encounter (once per pass). A row group that cannot be read at all raises
``ImageShardError`` naming the file and row group.

Samples are dicts of tensors in the targets layout of ``mpt_train.losses``: image (3, 224,
224) float RGB in [0, 1]; joints2d (K, 2) crop pixels; visible (K,); joints3d (K, 3) metres,
camera frame, root at the origin; joints3d_conf (K,); has_joints3d (); vertices (V, 3);
has_vertices (); pose (72,), betas (10,), has_smpl (); dataset index (). Samples without a
mesh carry zeros of the configured vertex count. K and the root follow the shards' joint set
(``mpt_data.image_schema``): people K = 17 COCO joints with SPIN's pelvis as the root; hands K = 21
(FreiHAND's order) with the wrist as the root, MANO pose (48,), and no flip augmentation (a mirrored
right hand is a left hand). All datasets of one mixture carry the same joint set.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpt_data import image_schema
from mpt_data.conventions import JOINT_SETS, SPIN_JOINTS, root_index

from .augment import AugmentConfig, augment_pose, augment_sample, sample_params
from .data import derived_seed

LOADER_STATE_VERSION = 2  # 2: per-slot skipped-row counts; a version-1 state (no skips possible then) loads
CHOICE_BLOCK = 4096
SPIN_PELVIS = SPIN_JOINTS.index("pelvis")


class ImageShardError(RuntimeError):
    """An image shard that cannot be read (the message names the file, the row group and what to do)."""


class MixtureError(ValueError):
    """A mixture YAML that cannot work (the message names the file, the key and how to fix it)."""


class ImageDecodeError(ValueError):
    """One row's JPEG cannot be decoded; the stream skips such a row and counts it."""


class BadRowWarning(UserWarning):
    """A row of an image shard was skipped (the message names the shard file, row and key)."""


@dataclass(frozen=True)
class MixtureEntry:
    name: str
    shards: str
    weight: float


@dataclass(frozen=True)
class ImageStreamConfig:
    """The image stream: datasets with weights, seed, augmentation, mesh size."""

    datasets: tuple[MixtureEntry, ...]
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_vertices: int = 0  # V of the model's mesh: zeros of this size where a sample has none
    context: float | None = None  # read from the shards' summary when None
    vertex_flip: str | None = None  # .npy (V,) mirror-vertex map; without it flips drop the mesh label


MIXTURE_KEYS = ("datasets", "seed", "vertex_flip")
MIXTURE_DATASET_KEYS = ("name", "shards", "weight")


def read_mixture(path: str | Path, **overrides) -> ImageStreamConfig:
    """Parse a mixture YAML into a config; clear errors (MixtureError) for unknown keys, missing folders or
    bad weights, as recipes give."""
    from mpt_data.recipe import read_yaml, unknown_key_message

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mixture file {path} does not exist")
    doc = read_yaml(path, MixtureError) or {}
    if not isinstance(doc, dict):
        raise MixtureError(f"{path}: top level must be a mapping with {list(MIXTURE_KEYS)}")
    for key in doc:
        if key not in MIXTURE_KEYS:
            raise MixtureError(f"{path}: {unknown_key_message(str(key), MIXTURE_KEYS)}")
    entries = doc.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"{path}: 'datasets' must be a non-empty list of {{name, shards, weight}}")
    out = []
    for e in entries:
        if not isinstance(e, dict):
            raise MixtureError(f"{path}: dataset entry {e!r} must be a mapping with {list(MIXTURE_DATASET_KEYS)}")
        for key in e:
            if key not in MIXTURE_DATASET_KEYS:
                raise MixtureError(f"{path}: dataset entry {e.get('name', e)!r}: "
                                   f"{unknown_key_message(str(key), MIXTURE_DATASET_KEYS)}")
        missing = {"name", "shards"} - set(e)
        if missing:
            raise MixtureError(f"{path}: dataset entry {e} lacks {sorted(missing)}")
        folder = Path(e["shards"])
        folder = folder if folder.is_absolute() else path.parent / folder
        weight = float(e.get("weight", 1.0))
        if not weight > 0:
            raise MixtureError(f"{path}: dataset {e['name']} has weight {weight}; weights must be > 0")
        out.append(MixtureEntry(str(e["name"]), str(folder), weight))
    flip = doc.get("vertex_flip")
    if flip is not None:
        flip = Path(flip) if Path(flip).is_absolute() else path.parent / flip
        if not flip.is_file():
            raise FileNotFoundError(f"{path}: vertex_flip file {flip} does not exist")
        flip = str(flip)
    kw = {"seed": int(doc.get("seed", 0)), "vertex_flip": flip} | overrides
    return ImageStreamConfig(datasets=tuple(out), **kw)


@dataclass
class _Dataset:
    """A shard folder's read units. ``kept`` (file, row group) → the row indices of that group to
    use, for a dataset cut down to a share of its rows; a unit's ``rows`` is then that count."""

    name: str
    context: float
    units: list[tuple[str, int, int]]  # (file, row group, rows)
    kept: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    first_row: dict[tuple[str, int], int] = field(default_factory=dict)  # (file, row group) -> its first row in the file
    joint_set: str = image_schema.DEFAULT_JOINT_SET  # what its rows' joint columns hold (coco17 or hand21)

    def file_row(self, path: str, group: int, index: int) -> int:
        """Row number in the file of row ``index`` of a loaded (possibly cut-down) row group."""
        kept = self.kept.get((path, group))
        return self.first_row.get((path, group), 0) + (kept[index] if kept is not None else index)


def open_dataset(folder: str | Path, name: str) -> _Dataset:
    """Index a shard folder: its row groups and stored-crop context. Refuses an unfinished one, or a shard
    of another format version."""
    import pyarrow.parquet as pq


    folder = Path(folder)
    summary = folder / "summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{folder}: no summary.json, not a finished `mpt-data images` output")
    info = json.loads(summary.read_text())
    units, first_row = [], {}
    joint_set: str | None = None
    for shard in info["shards"]:
        path = folder / shard
        try:
            md = pq.ParquetFile(path).metadata
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ImageShardError(f"{path}: not a readable Parquet shard ({exc}); run `mpt-data images` again "
                                  f"for dataset {name}") from exc
        version = image_schema.shard_format_version(md.metadata)
        if version not in image_schema.READABLE_VERSIONS:
            raise ImageShardError(f"{path}: image shard format version {version}, this reader reads "
                                  f"{', '.join(map(str, image_schema.READABLE_VERSIONS))}; run `mpt-data images` "
                                  f"again for dataset {name}")
        shard_set = image_schema.shard_joint_set(md.metadata)
        if shard_set not in JOINT_SETS or shard_set not in image_schema.POSE_SIZES:
            raise ImageShardError(f"{path}: joint set {shard_set!r} is not one image shards carry "
                                  f"({', '.join(image_schema.POSE_SIZES)})")
        if joint_set is not None and shard_set != joint_set:
            raise ImageShardError(f"{path}: rows carry {shard_set!r} joints, earlier shards of dataset {name} "
                                  f"carry {joint_set!r}; run the ingest again for it")
        joint_set = shard_set
        start = 0
        for g in range(md.num_row_groups):
            rows = md.row_group(g).num_rows
            units.append((str(path), g, rows))
            first_row[(str(path), g)] = start
            start += rows
    if not units:
        raise ImageShardError(f"{folder}: dataset {name} has no samples; run `mpt-data images` on annotations "
                              "with at least one usable person")
    return _Dataset(name, float(info["config"]["context"]), units, first_row=first_row,
                    joint_set=joint_set or image_schema.DEFAULT_JOINT_SET)


def read_row_group(path: str, group: int):
    """One row group of a shard as a pyarrow Table; ImageShardError naming both if it cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).read_row_group(group)
    except (OSError, ValueError) as exc:
        raise ImageShardError(f"{path}: row group {group} cannot be read ({exc}); the shard is damaged, run "
                              "`mpt-data images` again for its dataset") from exc


def decode_jpeg(blob: bytes) -> np.ndarray:
    """JPEG bytes → (H, W, 3) uint8 RGB; ImageDecodeError when OpenCV refuses them or the
    end-of-image marker is missing (a truncated JPEG, which OpenCV would decode with grey rows)."""
    import cv2

    if not blob.endswith(image_schema.JPEG_EOI):
        raise ImageDecodeError("JPEG without its end-of-image marker (truncated)")
    img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError("OpenCV cannot decode the JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageStream(torch.utils.data.IterableDataset):
    """Endless weighted mixture of image datasets, disjoint per rank and worker, resumable."""

    def __init__(self, cfg: ImageStreamConfig, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.datasets = [open_dataset(e.shards, e.name) for e in cfg.datasets]
        sets = {ds.joint_set for ds in self.datasets}
        if len(sets) > 1:
            raise MixtureError("the datasets carry different joint sets ("
                               + ", ".join(f"{ds.name}: {ds.joint_set}" for ds in self.datasets)
                               + "); mix people with people and hands with hands")
        self.joint_set = sets.pop()
        w = np.asarray([e.weight for e in cfg.datasets], np.float64)
        self.weights = w / w.sum()
        self.produced: dict[int, int] = {}  # slot -> samples produced (main-process bookkeeping)
        self.skipped: dict[int, list[int]] = {}  # slot -> rows skipped per dataset before those samples
        self.vertex_flip: np.ndarray | None = None
        self._warned: set[tuple[str, int]] = set()  # (file, row) already reported by this process
        # DataLoader worker i serves slot (i + slot_offset) % workers: a loader restarted after b batches
        # hands out its first batch from worker 0, which must then be the slot whose turn is next
        self.slot_offset = 0

    # -- order -------------------------------------------------------------------------
    def _choices(self, slot: int, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, slot, block, 0xC0])
        return rng.choice(len(self.datasets), size=CHOICE_BLOCK, p=self.weights)

    def _unit(self, d: int, slot: int, slots: int, t: int) -> int:
        """Index of the t-th row group dataset ``d`` gives to ``slot``."""
        n = len(self.datasets[d].units)
        q = slot + t * slots
        perm = np.random.default_rng([self.cfg.seed, d, q // n, 0xA1]).permutation(n)
        return int(perm[q % n])

    def _rows(self, d: int, unit: int, q: int) -> np.ndarray:
        rows = self.datasets[d].units[unit][2]
        return np.random.default_rng([self.cfg.seed, d, unit, q, 0xB2]).permutation(rows)

    def _positions(self, slot: int, k: int) -> list[int]:
        """Samples each dataset has given ``slot`` before its k-th sample."""
        counts = np.zeros(len(self.datasets), np.int64)
        full, rest = divmod(k, CHOICE_BLOCK)
        for b in range(full):
            counts += np.bincount(self._choices(slot, b), minlength=len(self.datasets))
        if rest:
            counts += np.bincount(self._choices(slot, full)[:rest], minlength=len(self.datasets))
        return counts.tolist()

    # -- iteration -----------------------------------------------------------------------
    def _slot(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        wid = (wid + self.slot_offset) % workers
        return self.rank * workers + wid, self.world_size * workers

    def samples(self, slot: int, slots: int, start: int = 0, skipped: list[int] | None = None):
        """Yield the slot's samples from its ``start``-th on; ``skipped``: the rows per dataset the
        slot skipped before that sample (from the state; zeros when None). Each sample carries
        the cumulative ``skipped_rows`` (D,) of its slot."""
        n_data = len(self.datasets)
        skipped = [0] * n_data if skipped is None else [int(x) for x in skipped]
        if len(skipped) != n_data:
            raise ValueError(f"skipped-row counts for {len(skipped)} datasets, the mixture has {n_data}")
        pos = self._positions(slot, start)
        cursors: list[tuple[int, int, list[dict]] | None] = [None] * n_data  # (t, row, rows)
        for d in range(n_data):
            cursors[d] = self._seek(d, slot, slots, pos[d] + skipped[d])  # rows read = samples + skips
        totals = [sum(rows for _, _, rows in ds.units) for ds in self.datasets]
        k = start
        while True:
            d = int(self._choices(slot, k // CHOICE_BLOCK)[k % CHOICE_BLOCK])
            run = 0  # consecutive bad rows of dataset d at this sample
            while True:
                t, r, rows = cursors[d]
                if rows is None:
                    rows = self._load_unit(d, slot, slots, t)
                row = rows[r]
                r += 1
                if r == len(rows):
                    t, r, rows = t + 1, 0, None
                cursors[d] = (t, r, rows)
                try:
                    sample = self.prepare_row(row, d, np.random.default_rng([self.cfg.seed, slot, k, 0xE3]))
                    break
                except ImageDecodeError as exc:
                    skipped[d] += 1
                    run += 1
                    self.report_bad_row(row, d, exc, skipped[d])
                    if run >= totals[d]:
                        raise ImageShardError(f"dataset {self.datasets[d].name}: none of its {totals[d]} rows has a "
                                              "decodable image; run `mpt-data images` again for it") from exc
            sample["skipped_rows"] = torch.tensor(skipped, dtype=torch.int64)
            k += 1
            yield sample

    def report_bad_row(self, row: dict, d: int, exc: Exception, count: int) -> None:
        """Warn, once per process and row, that ``row`` of dataset ``d`` is skipped (count: skips so far)."""
        where = row["_where"]
        if where in self._warned:
            return
        self._warned.add(where)
        warnings.warn(f"{where[0]}: row {where[1]} (key {row.get('key')}) skipped: {exc}; "
                      f"dataset {self.datasets[d].name}: {count} bad row(s) skipped so far by this reader",
                      BadRowWarning, stacklevel=2)

    def _seek(self, d: int, slot: int, slots: int, consumed: int) -> tuple[int, int, list[dict] | None]:
        """Cursor (row group ordinal, row, loaded rows) after ``consumed`` rows of dataset d."""
        t = 0
        while True:
            rows = self.datasets[d].units[self._unit(d, slot, slots, t)][2]
            if consumed < rows:
                return (t, 0, None) if consumed == 0 else (t, consumed, self._load_unit(d, slot, slots, t))
            consumed -= rows
            t += 1

    def _load_unit(self, d: int, slot: int, slots: int, t: int) -> list[dict]:
        unit = self._unit(d, slot, slots, t)
        rows = self.load_rows(d, unit)
        order = self._rows(d, unit, slot + t * slots)
        return [rows[i] for i in order]

    def load_rows(self, d: int, unit: int) -> list[dict]:
        """The rows of dataset d's read unit, in file order, each with ``_where`` = (file, row in file)."""
        ds = self.datasets[d]
        path, group, _ = ds.units[unit]
        table = read_row_group(path, group)
        kept = ds.kept.get((path, group))
        if kept is not None:  # only the kept rows become Python objects (a 1 % cut keeps ~1 per group)
            table = table.take(kept)
        rows = table.to_pylist()
        for i, row in enumerate(rows):
            row["_where"] = (path, ds.file_row(path, group, i))
        return rows

    def prepare_row(self, row: dict, d: int, rng: np.random.Generator) -> dict:
        """One sample (the module's layout) from a row of dataset ``d``, augmented with draws from
        ``rng`` as the stream's augmentation config says; ImageDecodeError for a bad JPEG."""
        cfg = self.cfg
        k = len(JOINT_SETS[self.joint_set])
        j2 = np.asarray(row["joints2d"], np.float32).reshape(k, 3)
        s = np.asarray(row["S"], np.float32).reshape(len(SPIN_JOINTS), 4)
        j3 = np.asarray(row["joints3d"], np.float32).reshape(k, 4)
        hand = self.joint_set != "coco17"
        if hand:  # the root is the joint set's own (a hand's wrist): FreiHAND annotates it with the rest
            r = root_index(self.joint_set)
            pelvis_ok = bool(row["has_joints3d"]) and j3[r, 3] > 0
            root = j3[r, :3] if pelvis_ok else np.zeros(3, np.float32)
        else:  # people: SPIN's pelvis
            pelvis_ok = bool(row["has_joints3d"]) and s[SPIN_PELVIS, 3] > 0
            root = s[SPIN_PELVIS, :3] if pelvis_ok else np.zeros(3, np.float32)
        conf3 = (j3[:, 3] > 0) & pelvis_ok
        verts = np.asarray(row["vertices"], np.float32).reshape(-1, 3)
        has_v = bool(row["has_vertices"]) and pelvis_ok and len(verts) == cfg.num_vertices
        sample = {
            "image": decode_jpeg(row["jpeg"]), "joints2d": j2,
            "joints3d": j3[:, :3] - root, "joints3d_conf": conf3,
            "vertices": verts - root if has_v else np.zeros((cfg.num_vertices, 3), np.float32),
            "has_vertices": has_v, "pose": np.asarray(row["pose"], np.float32),
        }
        context = cfg.context or self.datasets[d].context
        p = sample_params(cfg.augment, rng)
        if hand:
            # A mirrored right hand is a left hand, which a right-hand MANO model cannot fit: no flips. The
            # MANO pose's global rotation (its first 3 values) turns with the picture like SMPL's root.
            p = dataclasses.replace(p, flip=False)
            mano = sample.pop("pose")
            root_pose = np.zeros(72, np.float32)
            root_pose[:3] = mano[:3]
            mano = mano.copy()
            mano[:3] = augment_pose(root_pose, p)[:3]
        out = augment_sample(sample, context, p, cfg.augment.out_size, self.vertex_flip)
        if hand:
            out["pose"] = mano
        return {
            "image": torch.from_numpy(out["image"]).permute(2, 0, 1).float().div_(255.0),
            "joints2d": torch.from_numpy(out["joints2d"]), "visible": torch.from_numpy(out["visible"]),
            "joints3d": torch.from_numpy(out["joints3d"]), "joints3d_conf": torch.from_numpy(out["joints3d_conf"]),
            "has_joints3d": torch.tensor(bool(out["joints3d_conf"].all())),
            "vertices": torch.from_numpy(np.ascontiguousarray(out["vertices"], np.float32)),
            "has_vertices": torch.tensor(bool(out["has_vertices"])),
            "pose": torch.from_numpy(out["pose"]), "betas": torch.tensor(row["betas"], dtype=torch.float32),
            "has_smpl": torch.tensor(bool(row["has_smpl"])), "dataset": torch.tensor(d),
        }

    def __iter__(self):
        slot, slots = self._slot()
        return iter(self.samples(slot, slots, self.produced.get(slot, 0), self.skipped.get(slot)))

    # -- resume ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": LOADER_STATE_VERSION, "seed": self.cfg.seed, "produced": dict(self.produced),
                "skipped": {k: list(v) for k, v in self.skipped.items()},
                "datasets": [e.name for e in self.cfg.datasets]}

    def load_state_dict(self, state: dict, allow_other_store: bool = False) -> None:
        """Restore the position. Image shards carry no store fingerprint, so ``allow_other_store`` changes nothing."""
        if state.get("version") not in (1, LOADER_STATE_VERSION):
            raise ValueError(f"image loader state version {state.get('version')} != {LOADER_STATE_VERSION}")
        if state["datasets"] != [e.name for e in self.cfg.datasets] or state["seed"] != self.cfg.seed:
            raise ValueError("image loader state is from another mixture or seed")
        self.produced = {int(k): int(v) for k, v in state["produced"].items()}
        # version 1 was written by a stream that stopped at a bad row instead of skipping it: no skips
        self.skipped = {int(k): [int(x) for x in v] for k, v in state.get("skipped", {}).items()}


class ImageBatches:
    """Batches of an ImageStream in one process, with exact resume (the trainer's data iterator).

    With ``num_workers`` DataLoader workers the batches arrive round-robin from the workers,
    each worker a slot of its own; the state is the number of batches handed out and, per slot,
    the rows skipped so far (taken off each batch's ``skipped_rows``, which is not passed on).
    """

    def __init__(self, stream: ImageStream, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
        self.stream, self.batch_size, self.num_workers = stream, batch_size, num_workers
        self.pin_memory = pin_memory
        self.batches = 0
        self.skipped: dict[int, list[int]] = {}  # slot -> rows skipped per dataset, as of its last batch

    @property
    def skipped_rows(self) -> int:
        """Bad rows skipped so far by this rank (every encounter counts: once per pass over the data)."""
        return sum(sum(v) for v in self.skipped.values())

    def _sync_stream(self) -> None:
        w = max(self.num_workers, 1)
        produced = {}
        for wid in range(w):
            n_w = self.batches // w + (1 if wid < self.batches % w else 0)
            produced[self.stream.rank * w + wid] = n_w * self.batch_size
        self.stream.produced = produced
        self.stream.skipped = {k: list(v) for k, v in self.skipped.items()}
        self.stream.slot_offset = self.batches % w

    def __iter__(self):
        self._sync_stream()
        w = max(self.num_workers, 1)
        # Its own generator, a pure function of the position: starting a DataLoader otherwise draws its
        # workers' base seed from the global torch RNG (the stream itself reads nothing from it).
        gen = torch.Generator().manual_seed(derived_seed(self.stream.cfg.seed, self.stream.rank, self.batches))
        loader = torch.utils.data.DataLoader(self.stream, batch_size=self.batch_size, num_workers=self.num_workers,
                                             pin_memory=self.pin_memory, persistent_workers=False, generator=gen)
        for batch in loader:
            counts = batch.pop("skipped_rows")
            self.skipped[self.stream.rank * w + self.batches % w] = counts[-1].tolist()
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        self._sync_stream()
        return {"version": LOADER_STATE_VERSION, "batches": self.batches, "batch_size": self.batch_size,
                "num_workers": self.num_workers, "skipped_rows": self.skipped_rows, "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") not in (1, LOADER_STATE_VERSION):
            raise ValueError(f"image batches state version {state.get('version')} != {LOADER_STATE_VERSION}")
        if (state["batch_size"], state["num_workers"]) != (self.batch_size, self.num_workers):
            raise ValueError("resume needs the same batch size and number of workers")
        self.stream.load_state_dict(state["stream"])
        self.batches = int(state["batches"])
        self.skipped = {k: list(v) for k, v in self.stream.skipped.items()}


# ------------------------------------------------------------------------------------------
# A share of the data, and a finite ordered pass for evaluation


def keep_units(stream: ImageStream, fraction: float, seed: int) -> None:
    """Keep a seeded ``fraction`` of each dataset's rows (at least one), so that 1 % of 1000
    images trains on 10 of them whatever the row-group size; groups left empty are dropped."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction}: must be in (0, 1]")
    for d, ds in enumerate(stream.datasets):
        sizes = np.asarray([rows for _, _, rows in ds.units], np.int64)
        total = int(sizes.sum())
        k = max(1, int(round(total * fraction)))
        chosen = np.sort(np.random.default_rng([seed, d, 0xF7]).permutation(total)[:k])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        unit_of = np.searchsorted(starts, chosen, side="right") - 1
        units, kept = [], {}
        for u in np.unique(unit_of):
            path, group, _ = ds.units[u]
            local = (chosen[unit_of == u] - starts[u]).tolist()
            units.append((path, group, len(local)))
            kept[(path, group)] = local
        ds.units, ds.kept = units, kept


class ImageEvalBatches:
    """Every sample of the given shard folders once, in order, centred crops (no augmentation).

    Row groups are dealt to ranks round-robin, so ranks see disjoint parts. Batches carry the
    training keys plus ``spin3d`` (B, 24, 4): the raw SPIN-24 3D joints (camera frame,
    metres, confidence) for the benchmark protocols. A row whose JPEG cannot be decoded is
    left out with a warning naming its shard and row (as in the training stream) and counted
    in ``skipped_rows`` (this pass).
    """

    def __init__(self, folders: list[str], batch_size: int, num_vertices: int, rank: int = 0, world_size: int = 1,
                 max_samples: int = 0):
        self.folders, self.batch_size = list(folders), batch_size
        self.rank, self.world_size, self.max_samples = rank, world_size, max_samples
        self.skipped_rows = 0
        entries = tuple(MixtureEntry(Path(f).name, f, 1.0) for f in self.folders)
        self.stream = ImageStream(ImageStreamConfig(entries, augment=AugmentConfig(enabled=False),
                                                    num_vertices=num_vertices), rank, world_size)

    def __iter__(self):
        rng = np.random.default_rng(0)
        buf: list[dict] = []
        n = 0
        self.skipped_rows = 0
        for d, ds in enumerate(self.stream.datasets):
            for u in range(len(ds.units)):
                if u % self.world_size != self.rank:
                    continue
                for row in self.stream.load_rows(d, u):
                    if self.max_samples and n >= self.max_samples:
                        break
                    try:
                        s = self.stream.prepare_row(row, d, rng)
                    except ImageDecodeError as exc:
                        self.skipped_rows += 1
                        self.stream.report_bad_row(row, d, exc, self.skipped_rows)
                        continue
                    s["spin3d"] = torch.tensor(row["S"], dtype=torch.float32).reshape(24, 4)
                    buf.append(s)
                    n += 1
                    if len(buf) == self.batch_size:
                        yield _collate(buf)
                        buf = []
        if buf:
            yield _collate(buf)


def _collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


# ------------------------------------------------------------------------------------------
# Batches -> device tensors


def crop_pixels_to_unit(joints2d: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 2) crop pixels with pixel centres at integers (image shards, cv2) -> [-1, 1] across the
    crop, the unit of :func:`mpt_train.inputs.normalise_2d` (whose pixel centres are at i + 0.5)."""
    from mpt_data.schema import PIXEL_CENTRE

    from .inputs import normalise_2d

    return normalise_2d(joints2d.float() + PIXEL_CENTRE, size)


def image_prepare(device: torch.device):
    """prepare(batch, train) -> (images (B, 3, 224, 224) on device, targets of mpt_train.losses);
    2D joints converted from crop pixels to [-1, 1] crop units."""
    keys = ("joints3d", "vertices", "joints2d", "visible", "has_joints3d", "has_vertices", "joints3d_conf")

    def prepare(batch: dict, train: bool = False) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(device, non_blocking=True)
        targets = {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}
        if "joints2d" in targets:  # the re-projection loss compares in [-1, 1] crop units
            targets["joints2d"] = crop_pixels_to_unit(targets["joints2d"], images.shape[-1])
        for k in ("spin3d",):
            if k in batch:
                targets[k] = batch[k].to(device)
        return images, targets

    return prepare
