"""`mpt-data freihand`: the FreiHAND dataset's own layout → image shards of hands (joint set ``hand21``).

Input, a FreiHAND root as released (``ROOT``; N annotated samples of a split, metres, camera frame):
  ROOT/<split>_K.json      (N, 3, 3)  camera intrinsics (pixels; pixel centres at integer coordinates)
  ROOT/<split>_mano.json   (N, 1, 61) MANO parameters: 48 axis-angle pose values (global rotation
                                      first, then 15 finger joints x 3; right hand), 10 shape
                                      values, 3 translation values
  ROOT/<split>_xyz.json    (N, 21, 3) 3D joints in FreiHAND's order (wrist; thumb, index, middle,
                                      ring, little finger, each base → tip: conventions.HAND21_JOINTS)
  ROOT/<split>_verts.json  (N, 778, 3) MANO mesh vertices
  ROOT/<split>_scale.json  (N,)      evaluation split: the length of a reference bone, metres
  ROOT/<split>/rgb/%08d.jpg          224 × 224 hand crops
split "training": K, mano, xyz and verts are required. Its images repeat the annotations in colour
versions (green screen, homogenised, two automatic colourings): image i shows annotation i mod N, so
the released 130,240 images use the 32,560 annotations 4 times (FreiHAND's ``fh_utils.sample_version``).
split "evaluation": K is required (and scale, when present, is checked); xyz, verts and mano are
optional (the released evaluation annotations add them): without them the rows carry no 3D truth
(``has_joints3d`` / ``has_vertices`` / ``has_smpl`` false) and serve prediction only. Image i uses
annotation i.

Output: ``OUT/<dataset>/part-*.parquet`` then ``summary.json``, the format of :mod:`mpt_data.images`
with joint set ``hand21`` (``mpt_data.image_schema``, version 2): the stored crop is the whole image
(FreiHAND's images are already hand crops; crop box (0, 0, 224), context 1.0) with its JPEG bytes
kept as they are; joints2d = xyz projected with K (x, y, confidence 1 for a joint in front of the
camera); joints3d = xyz (confidence 1); pose (48,) and betas (10,) from mano; vertices (778·3,).
SPIN's ``part`` and ``S`` are zeros. An image that is missing, truncated or not decodable is skipped and
counted as in :mod:`mpt_data.images`. A file that is missing, unreadable, of the wrong shape, of another
length than ``<split>_K.json`` or holding a non-finite number is refused with one line naming it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mpt_data import image_schema as shard
from mpt_data.fileio import FolderLock, atomic_write_json
from mpt_data.images import (CORRUPT, EXAMPLES_PER_REASON, LOCK_FILE, MISSING, NUM_SPIN, AnnotationError,
                             IngestSummary, cut_crop, decode_image_strict, write_shard)

JOINT_SET = "hand21"
NUM_JOINTS = 21
NUM_VERTICES = 778
MANO_PARAMS = 61  # 48 pose + 10 shape + 3 translation
POSE_VALUES, SHAPE_VALUES = 48, 10
SPLITS = ("training", "evaluation")
# FreiHAND's released sizes (checked only as information: a smaller copy, e.g. the synthetic one, is fine)
TRAINING_ANNOTATIONS, TRAINING_VERSIONS, EVALUATION_SAMPLES = 32560, ("gs", "hom", "sample", "auto"), 3960
IMAGE_NAME = "{split}/rgb/{index:08d}.jpg"


class FreiHANDError(AnnotationError):
    """A FreiHAND file that cannot be ingested (the message names the file and the problem)."""


@dataclass(frozen=True)
class FreiHANDConfig:
    """One split's ingest. root: the FreiHAND folder; split: training | evaluation; out: output root (a
    ``<dataset>/`` folder is made in it); dataset: default ``freihand_<split>``; versions: training colour
    versions to take (1-4, 0: every version whose images exist); max_samples: stop after this many images
    (0: all); rows_per_shard / rows_per_group as in :class:`mpt_data.images.ImagesConfig`."""

    root: str
    split: str
    out: str
    dataset: str = ""
    versions: int = 0
    max_samples: int = 0
    rows_per_shard: int = 512
    rows_per_group: int = 32
    jpeg_quality: int = 92  # only for an image that must be re-encoded (not a square JPEG)

    @property
    def name(self) -> str:
        return self.dataset or f"freihand_{self.split}"


# ------------------------------------------------------------------------------------------
# Pure geometry


def project(xyz: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Pinhole projection: (..., J, 3) camera-frame metres, (..., 3, 3) intrinsics → (..., J, 2) pixels."""
    uvw = np.einsum("...ij,...nj->...ni", k, xyz)
    return uvw[..., :2] / uvw[..., 2:3]


# ------------------------------------------------------------------------------------------
# Reading and validating the annotation files


def annotation_path(root: str | Path, split: str, what: str) -> Path:
    """``ROOT/<split>_<what>.json``."""
    return Path(root) / f"{split}_{what}.json"


def _json_entries(text: str, path: Path):
    """The entries of a JSON list, decoded one at a time (the whole list as Python floats would take several
    times the memory of the arrays: FreiHAND's training_verts.json holds 76 million numbers)."""
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        raise FreiHANDError(f"{path}: expected a JSON list of entries")
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise FreiHANDError(f"{path}: not readable JSON (the list is not closed)")
        if text[i] == "]":
            return
        try:
            entry, i = decoder.raw_decode(text, i)
        except ValueError as exc:
            raise FreiHANDError(f"{path}: not readable JSON ({exc})") from exc
        yield entry


def _load_json_array(path: Path, tail: tuple[int, ...], n: int | None) -> np.ndarray:
    """``path`` as a float64 array (N, *tail): FreiHANDError naming the file for anything else."""
    if not path.is_file():
        raise FreiHANDError(f"{path}: file does not exist (the FreiHAND layout: ROOT/<split>_K.json, _mano.json, "
                            "_xyz.json, _verts.json and ROOT/<split>/rgb/)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise FreiHANDError(f"{path}: not readable JSON ({exc})") from exc
    rows = []
    for k, entry in enumerate(_json_entries(text, path)):
        try:
            row = np.asarray(entry, np.float64)
        except (TypeError, ValueError) as exc:
            raise FreiHANDError(f"{path}: entry {k} is not a numeric array of shape {tail} ({exc})") from exc
        if row.shape != tail:
            raise FreiHANDError(f"{path}: entries have shape {row.shape}, expected {tail} (entry {k})")
        rows.append(row)
    del text
    if not rows:
        raise FreiHANDError(f"{path}: expected a non-empty JSON list of entries of shape {tail}")
    arr = np.stack(rows)
    if n is not None and len(arr) != n:
        raise FreiHANDError(f"{path}: {len(arr)} entries, but the split's K file has {n}")
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    if bad.any():
        raise FreiHANDError(f"{path}: entry {int(np.flatnonzero(bad)[0])} holds a non-finite number "
                            f"({int(bad.sum())} such entries)")
    return arr


def read_split(root: str | Path, split: str) -> dict[str, np.ndarray]:
    """The annotation files of ``split``: ``K`` (N, 3, 3) always; ``xyz`` (N, 21, 3), ``verts`` (N, 778, 3),
    ``mano`` (N, 61) and, for the evaluation split, ``scale`` (N,) when present (training: all required)."""
    if split not in SPLITS:
        raise FreiHANDError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise FreiHANDError(f"{root}: FreiHAND folder does not exist")
    k = _load_json_array(annotation_path(root, split, "K"), (3, 3), None)
    out = {"K": k}
    n = len(k)
    parts = {"mano": (1, MANO_PARAMS), "xyz": (NUM_JOINTS, 3), "verts": (NUM_VERTICES, 3)}
    if split == "evaluation":
        parts["scale"] = ()
    for what, tail in parts.items():
        path = annotation_path(root, split, what)
        if split == "evaluation" and not path.is_file():
            continue  # without the released evaluation annotations: rows for prediction only
        out[what] = _load_json_array(path, tail, n)
    if "mano" in out:
        out["mano"] = out["mano"].reshape(n, MANO_PARAMS)
    if "K" in out and not (np.abs(out["K"][:, 2, :2]).max() == 0 and np.all(out["K"][:, 2, 2] == 1)):
        raise FreiHANDError(f"{annotation_path(root, split, 'K')}: not pinhole intrinsics (last row must be 0 0 1)")
    return out


def image_ids(root: str | Path, split: str, annotations: int, versions: int = 0) -> range:
    """The image ids to ingest: ``versions`` × N for training (0: as many versions as the largest image id
    present needs, at least 1), N for evaluation."""
    if split == "evaluation":
        return range(annotations)
    if versions:
        if not 1 <= versions <= len(TRAINING_VERSIONS):
            raise FreiHANDError(f"versions {versions}: the training split has 1 to {len(TRAINING_VERSIONS)}")
        return range(versions * annotations)
    rgb = Path(root) / split / "rgb"
    ids = [int(p.stem) for p in rgb.glob("*.jpg") if p.stem.isdigit()] if rgb.is_dir() else []
    if not ids:
        raise FreiHANDError(f"{rgb}: no images named like 00000000.jpg")
    return range(-(-(max(ids) + 1) // annotations) * annotations)


# ------------------------------------------------------------------------------------------
# Rows


def freihand_row(data: dict[str, np.ndarray], image_id: int, blob: bytes, image: np.ndarray, cfg: FreiHANDConfig
                 ) -> dict:
    """The Parquet row of image ``image_id`` (its bytes and decoded (H, W, 3) BGR image)."""
    import cv2

    n = len(data["K"])
    a = image_id % n
    h, w = image.shape[:2]
    side = max(h, w)
    if h != w or not blob.startswith(shard.JPEG_SOI):  # the reader needs a square JPEG crop
        ok, enc = cv2.imencode(".jpg", cut_crop(image, (0.0, 0.0, float(side)), side),
                               [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for image {image_id}")
        blob = enc.tobytes()
    j2 = np.zeros((NUM_JOINTS, 3), np.float32)
    j3 = np.zeros((NUM_JOINTS, 4), np.float32)
    has_xyz = "xyz" in data
    if has_xyz:
        xyz = data["xyz"][a]
        front = xyz[:, 2] > 0
        j2[front, :2] = project(xyz[front], data["K"][a])
        j2[front, 2] = 1.0
        j3[:, :3], j3[:, 3] = xyz, 1.0
    has_mano = "mano" in data
    mano = data["mano"][a] if has_mano else np.zeros(MANO_PARAMS)
    verts = data["verts"][a].reshape(-1).astype(np.float32) if "verts" in data else np.zeros(0, np.float32)
    return {
        shard.KEY: f"{cfg.name}/{image_id}", shard.DATASET: cfg.name,
        shard.IMGNAME: IMAGE_NAME.format(split=cfg.split, index=image_id), shard.INDEX: a,
        shard.JPEG: blob, shard.CROP_BOX: np.array([0.0, 0.0, side], np.float32),
        shard.JOINTS2D: j2.reshape(-1), shard.PART: np.zeros(NUM_SPIN * 3, np.float32),
        shard.JOINTS3D: j3.reshape(-1), shard.HAS_JOINTS3D: has_xyz, shard.SPIN_3D: np.zeros(NUM_SPIN * 4, np.float32),
        shard.POSE: mano[:POSE_VALUES].astype(np.float32),
        shard.BETAS: mano[POSE_VALUES:POSE_VALUES + SHAPE_VALUES].astype(np.float32),
        shard.HAS_SMPL: has_mano, shard.VERTICES: verts, shard.HAS_VERTICES: verts.size > 0, shard.GENDER: "",
    }


def ingest_freihand(cfg: FreiHANDConfig, progress: bool = False) -> IngestSummary:
    """Convert one FreiHAND split into image shards; returns the summary (also saved as summary.json)."""
    data = read_split(cfg.root, cfg.split)
    ids = image_ids(cfg.root, cfg.split, len(data["K"]), cfg.versions)
    if cfg.max_samples:
        ids = ids[:cfg.max_samples]
    out = Path(cfg.out) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out / LOCK_FILE, f"image dataset {out}"):
        return _ingest_locked(cfg, data, ids, out, progress)


def _ingest_locked(cfg: FreiHANDConfig, data: dict[str, np.ndarray], ids: range, out: Path, progress: bool
                   ) -> IngestSummary:
    marker = out / shard.SUMMARY_FILE
    if marker.exists():
        marker.unlink()  # complete again only at the end
    for old in out.glob(shard.SHARD_GLOB):
        old.unlink()
    root = Path(cfg.root)
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    rows: list[dict] = []
    shards: list[str] = []
    it = ids
    if progress:
        from tqdm import tqdm

        it = tqdm(ids, desc=f"freihand {cfg.split}")
    for i in it:
        name = IMAGE_NAME.format(split=cfg.split, index=i)
        path = root / name
        blob = path.read_bytes() if path.is_file() else b""
        image, reason = decode_image_strict(blob) if blob else (None, MISSING if not path.is_file() else CORRUPT)
        if image is None:
            skipped[reason] += 1
            shown = examples.setdefault(reason, [])
            if len(shown) < EXAMPLES_PER_REASON:
                shown.append(f"{i}: {name}")
            continue
        rows.append(freihand_row(data, i, blob, image, cfg))
        if len(rows) == cfg.rows_per_shard:
            shards.append(_flush(rows, out, len(shards), cfg.rows_per_group))
            rows = []
    if rows:
        shards.append(_flush(rows, out, len(shards), cfg.rows_per_group))
    config = asdict(cfg) | {"context": 1.0, "joint_set": JOINT_SET, "annotations": len(data["K"])}
    summary = IngestSummary(cfg.name, len(ids), len(ids) - sum(skipped.values()), dict(sorted(skipped.items())),
                            shards, config, examples=dict(sorted(examples.items())))
    atomic_write_json(marker, asdict(summary), indent=2)
    return summary


def _flush(rows: list[dict], out: Path, k: int, rows_per_group: int) -> str:
    name = shard.SHARD_FILE.format(index=k)
    write_shard(rows, out / name, rows_per_group, JOINT_SET)
    return name
