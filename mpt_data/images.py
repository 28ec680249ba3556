"""`mpt-data images`: SPIN-style image annotations + image folders → Parquet shards of person crops.

Input (one ``.npz`` per dataset, the layout SPIN's preprocessing writes):
  imgname (N,) str     image path relative to the image root
  center  (N, 2)       person box centre, image pixels (x, y)
  scale   (N,)         person box side / 200 px (the box is square, side 200·scale)
  part    (N, 24, 3)   2D joints in image pixels + confidence, SPIN-24 order (conventions.SPIN_JOINTS)
  S       (N, 24, 4)   optional 3D joints, metres, camera frame + confidence, same order
  pose    (N, 72)      optional SMPL axis-angle; shape (N, 10) optional betas; has_smpl (N,) optional
  gender  (N,)         optional 'm' / 'f'
  vertices (N, V, 3)   optional (this project's extension, written by the synthetic dataset):
                       mesh vertices, metres, camera frame
Any other key is ignored. Every present per-sample array must have N rows, or the file is refused.

Output: ``OUT/<dataset>/part-00000.parquet, ...`` then ``OUT/<dataset>/summary.json`` (written
last: its presence marks a complete dataset). Each row is one person:
  key, dataset, imgname, index         provenance (index = row of the .npz)
  jpeg                                 square crop of side 200·scale·context around ``center``,
                                       resized to ``crop_px`` (context margin for augmentation;
                                       pixels outside the source image are black)
  crop_box (3,)                        x0, y0, side of that square in source-image pixels
  joints2d (17·3,)                     COCO-17 from ``part``: x, y in crop pixels, confidence
  part (24·3,)                         SPIN-24 ``part`` in crop pixels
  joints3d (17·4,), has_joints3d       COCO-17 from ``S`` (x, y, z metres, confidence)
  S (24·4,)                            SPIN-24 ``S`` (zeros when absent)
  pose (72,), betas (10,), has_smpl    SMPL parameters when present
  vertices (V·3,) variable, has_vertices
  gender                               'm', 'f' or ''
A sample is skipped, counted by reason in the summary (``skipped``, with up to
``EXAMPLES_PER_REASON`` image names per reason in ``examples``) and never written when:
  path outside the image root      ``imgname`` resolves (``..``, an absolute path, or a symlink
                                   followed to its target) to a file outside ``--images``; it is
                                   refused before the file is even opened
  missing image                    no such file under the root
  truncated JPEG (no end-of-image marker)   a JPEG whose last two bytes are not FF D9. OpenCV
                                   decodes a truncated JPEG with only a warning (the lost rows
                                   come out grey), so the decode alone cannot be trusted: this
                                   marker check is the strict test (the one YOLOv5 also uses)
  truncated PNG (no IEND chunk)    the same for a PNG whose final IEND chunk is absent
  corrupt image                    empty, or OpenCV cannot decode it at all (not an image)
  box outside the image            its person box misses the image entirely
  non-finite or non-positive label NaN/inf in a label, or scale <= 0
The output folder is locked (``.ingest.lock``, mpt_data.fileio.FolderLock) while ingesting, so two
runs cannot interleave their shards; every file is written atomically.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mpt_data import image_schema as shard
from mpt_data.conventions import COCO_JOINTS, SPIN_JOINTS, SPIN_TO_COCO
from mpt_data.fileio import FolderLock, atomic_write, atomic_write_json

SPIN_BOX_UNIT_PX = 200.0  # SPIN's scale unit: box side = 200 * scale pixels
NUM_SPIN = len(SPIN_JOINTS)
NUM_COCO = len(COCO_JOINTS)
PER_SAMPLE_KEYS = ("imgname", "center", "scale", "part", "S", "pose", "shape", "has_smpl", "gender", "vertices")
LOCK_FILE = ".ingest.lock"
EXAMPLES_PER_REASON = 5
PNG_SIGNATURE, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND"

OUTSIDE_ROOT = "path outside the image root"
MISSING = "missing image"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"
TRUNCATED_PNG = "truncated PNG (no IEND chunk)"
CORRUPT = "corrupt image"


class AnnotationError(ValueError):
    """An annotation file that cannot be ingested at all (names the file and the problem)."""


@dataclass(frozen=True)
class ImagesConfig:
    """One dataset's ingestion.

    annotations: the SPIN-style ``.npz``. image_root: folder the ``imgname`` paths are under.
    out: output root (a ``<dataset>/`` folder is made in it). dataset: name, default the
    ``.npz`` stem. context: stored crop side / person box side. crop_px: stored crop side in
    pixels. rows_per_shard: persons per Parquet file; rows_per_group: persons per row group. jpeg_quality: 0-100.
    """

    annotations: str
    image_root: str
    out: str
    dataset: str = ""
    context: float = 1.5
    crop_px: int = 336
    rows_per_shard: int = 512
    rows_per_group: int = 32  # Parquet row group: the trainer's unit of reading
    jpeg_quality: int = 92

    @property
    def name(self) -> str:
        return self.dataset or Path(self.annotations).stem


@dataclass(frozen=True)
class IngestSummary:
    dataset: str
    total: int
    written: int
    skipped: dict[str, int]
    shards: list[str]
    config: dict
    version: int = shard.SHARD_FORMAT_VERSION
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first image names skipped for it


# ------------------------------------------------------------------------------------------
# Pure geometry


def crop_square(center: np.ndarray, scale: float, context: float) -> tuple[float, float, float]:
    """(x0, y0, side) in image pixels of the stored crop: side = 200·scale·context around center."""
    side = SPIN_BOX_UNIT_PX * float(scale) * context
    return float(center[0]) - side / 2, float(center[1]) - side / 2, side


def image_to_crop(points: np.ndarray, box: tuple[float, float, float], crop_px: int) -> np.ndarray:
    """Image pixels (..., 2) → crop pixels (..., 2) for ``box`` = (x0, y0, side) resized to crop_px.

    Pixel centres are at integer coordinates (the convention of SPIN's files, of cv2 warps and
    of mpt_data.raster), so a point keeps its place on the person exactly.
    """
    x0, y0, side = box
    k = crop_px / side
    out = np.empty_like(points, dtype=np.float32)
    out[..., 0] = (points[..., 0] - x0) * k
    out[..., 1] = (points[..., 1] - y0) * k
    return out


def box_outside(center: np.ndarray, scale: float, width: int, height: int) -> bool:
    """True when the person box (side 200·scale around center) misses the image entirely."""
    half = SPIN_BOX_UNIT_PX * float(scale) / 2
    return bool(
        center[0] + half <= 0 or center[1] + half <= 0 or center[0] - half >= width or center[1] - half >= height
    )


def cut_crop(image: np.ndarray, box: tuple[float, float, float], crop_px: int) -> np.ndarray:
    """(H, W, 3) uint8 image → (crop_px, crop_px, 3) uint8 crop of ``box``; outside is black."""
    import cv2

    x0, y0, side = box
    k = crop_px / side
    m = np.array([[k, 0, -k * x0], [0, k, -k * y0]], np.float64)  # crop = k * (image - (x0, y0))
    return cv2.warpAffine(image, m, (crop_px, crop_px), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


# ------------------------------------------------------------------------------------------
# Reading and validating the annotation file


def read_annotations(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate a SPIN-style ``.npz``: required keys, shapes, equal lengths.

    Raises AnnotationError naming the file and the offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file does not exist")
    # An .npz is a zip archive; numpy reads any other file as a pickle and would blame "object data".
    with open(path, "rb") as f:
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip with members, or an empty one
            raise AnnotationError(f"{path}: not a readable .npz (not a zip archive); give the SPIN-format "
                                  "annotation .npz (imgname, center, scale, part)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files if k in PER_SAMPLE_KEYS}
    except Exception as exc:
        raise AnnotationError(f"{path}: not a readable .npz ({exc})") from exc
    for key in ("imgname", "center", "scale", "part"):
        if key not in data:
            raise AnnotationError(f"{path}: missing required key '{key}'")
    n = len(data["imgname"])
    lengths = {k: len(v) for k, v in data.items()}
    bad = {k: m for k, m in lengths.items() if m != n}
    if bad:
        raise AnnotationError(f"{path}: arrays disagree in length: imgname has {n}, but {bad}")
    expect = {"center": (2,), "scale": (), "part": (NUM_SPIN, 3), "S": (NUM_SPIN, 4), "pose": (72,), "shape": (10,),
              "has_smpl": ()}
    for key, tail in expect.items():
        if key in data and data[key].shape[1:] != tail:
            raise AnnotationError(f"{path}: '{key}' has shape {data[key].shape}, expected (N, {', '.join(map(str, tail))})")
    if "vertices" in data and (data["vertices"].ndim != 3 or data["vertices"].shape[2] != 3):
        raise AnnotationError(f"{path}: 'vertices' has shape {data['vertices'].shape}, expected (N, V, 3)")
    return data


def _labels_finite(data: dict[str, np.ndarray], i: int) -> bool:
    for key in ("center", "scale", "part", "S", "pose", "shape", "vertices"):
        if key in data and not np.all(np.isfinite(data[key][i])):
            return False
    return True


# ------------------------------------------------------------------------------------------
# Rows and shards


def _schema(joint_set: str = shard.DEFAULT_JOINT_SET):
    """The Parquet schema of a shard whose rows carry ``joint_set`` (its size fixes the joint columns)."""
    import pyarrow as pa

    from mpt_data.conventions import JOINT_SETS

    f32 = pa.float32()
    k, pose = len(JOINT_SETS[joint_set]), shard.POSE_SIZES[joint_set]
    fields = [
        (shard.KEY, pa.string()), (shard.DATASET, pa.string()), (shard.IMGNAME, pa.string()), (shard.INDEX, pa.int32()),
        (shard.JPEG, pa.binary()), (shard.CROP_BOX, pa.list_(f32, 3)),
        (shard.JOINTS2D, pa.list_(f32, k * 3)), (shard.PART, pa.list_(f32, NUM_SPIN * 3)),
        (shard.JOINTS3D, pa.list_(f32, k * 4)), (shard.HAS_JOINTS3D, pa.bool_()),
        (shard.SPIN_3D, pa.list_(f32, NUM_SPIN * 4)),
        (shard.POSE, pa.list_(f32, pose)), (shard.BETAS, pa.list_(f32, 10)), (shard.HAS_SMPL, pa.bool_()),
        (shard.VERTICES, pa.list_(f32)), (shard.HAS_VERTICES, pa.bool_()), (shard.GENDER, pa.string()),
    ]
    return pa.schema(fields, metadata={shard.VERSION_METADATA_KEY: str(shard.SHARD_FORMAT_VERSION),
                                       shard.JOINT_SET_METADATA_KEY: joint_set})


def sample_row(data: dict[str, np.ndarray], i: int, image: np.ndarray, cfg: ImagesConfig) -> dict:
    """The Parquet row of sample ``i`` cut from its decoded image (H, W, 3) uint8 BGR."""
    import cv2

    box = crop_square(data["center"][i], float(data["scale"][i]), cfg.context)
    crop = cut_crop(image, box, cfg.crop_px)
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {data['imgname'][i]}")
    part = data["part"][i].astype(np.float32).copy()
    part[:, :2] = image_to_crop(part[:, :2], box, cfg.crop_px)
    part[part[:, 2] <= 0, :2] = 0.0  # unlabelled joints carry no position
    has_s = "S" in data and bool(np.any(data["S"][i][:, 3] > 0))
    s = data["S"][i].astype(np.float32) if has_s else np.zeros((NUM_SPIN, 4), np.float32)
    has_smpl = "pose" in data and "shape" in data and bool(data["has_smpl"][i] if "has_smpl" in data else True)
    verts = data["vertices"][i].astype(np.float32).reshape(-1) if "vertices" in data else np.zeros(0, np.float32)
    gender = str(data["gender"][i]) if "gender" in data else ""
    return {
        shard.KEY: f"{cfg.name}/{i}", shard.DATASET: cfg.name, shard.IMGNAME: str(data["imgname"][i]), shard.INDEX: i,
        shard.JPEG: jpeg.tobytes(), shard.CROP_BOX: np.asarray(box, np.float32),
        shard.JOINTS2D: part[list(SPIN_TO_COCO)].reshape(-1), shard.PART: part.reshape(-1),
        shard.JOINTS3D: s[list(SPIN_TO_COCO)].reshape(-1), shard.HAS_JOINTS3D: has_s, shard.SPIN_3D: s.reshape(-1),
        shard.POSE: data["pose"][i].astype(np.float32) if has_smpl else np.zeros(72, np.float32),
        shard.BETAS: data["shape"][i].astype(np.float32) if has_smpl else np.zeros(10, np.float32),
        shard.HAS_SMPL: has_smpl, shard.VERTICES: verts, shard.HAS_VERTICES: verts.size > 0, shard.GENDER: gender,
    }


def write_shard(rows: list[dict], path: Path, rows_per_group: int, joint_set: str = shard.DEFAULT_JOINT_SET) -> None:
    """Write ``rows`` (dicts keyed by the column names) as one shard of ``joint_set``, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(joint_set)
    columns = {}
    for column in schema:
        values = [r[column.name] for r in rows]
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            values = [np.asarray(v, np.float32) for v in values]
        columns[column.name] = pa.array(values, type=column.type)
    table = pa.table(columns, schema=schema)
    atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd", row_group_size=rows_per_group))


def image_path_inside(root: Path, name: str) -> Path | None:
    """The file ``name`` names under ``root`` (an already resolved folder), or None when it lies outside.

    Resolving follows ``..`` and symlinks, so ``../x.jpg``, ``/etc/x.jpg`` and a link inside the
    root that points out of it are all outside; a link to another file inside the root is fine.
    """
    p = (root / name).resolve()
    return p if p.is_relative_to(root) else None


def truncation_reason(blob: bytes) -> str:
    """'' when the encoded image ends with its format's end marker, else the skip reason.

    JPEG: the last two bytes must be the end-of-image marker FF D9; PNG: the last chunk must be
    IEND. Other formats (and non-images) are left to the decoder.
    """
    if blob.startswith(shard.JPEG_SOI) and not blob.endswith(shard.JPEG_EOI):
        return TRUNCATED_JPEG
    if blob.startswith(PNG_SIGNATURE) and PNG_IEND not in blob[-12:]:
        return TRUNCATED_PNG
    return ""


def decode_image_strict(blob: bytes) -> tuple[np.ndarray | None, str]:
    """Encoded image bytes → ((H, W, 3) uint8 BGR, '') or (None, skip reason); see truncation_reason."""
    import cv2

    if not blob:
        return None, CORRUPT
    reason = truncation_reason(blob)
    if reason:
        return None, reason
    img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    return (img, "") if img is not None else (None, CORRUPT)


def _iter_images(data: dict[str, np.ndarray], root: Path) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yields (index, decoded image or None, skip reason); an image used by consecutive rows is read once.

    ``root`` must be resolved; nothing outside it is opened."""
    last_name, last = None, (None, "")
    for i, name in enumerate(data["imgname"]):
        name = str(name)
        if name != last_name:
            p = image_path_inside(root, name)
            if p is None:
                last = (None, OUTSIDE_ROOT)
            elif not p.is_file():
                last = (None, MISSING)
            else:
                last = decode_image_strict(p.read_bytes())
            last_name = name
        yield i, last[0], last[1]


def ingest(cfg: ImagesConfig, progress: bool = False) -> IngestSummary:
    """Convert one annotation file and its images into shards; returns the summary (also saved)."""
    data = read_annotations(cfg.annotations)
    root = Path(cfg.image_root)
    if not root.is_dir():
        raise AnnotationError(f"{cfg.image_root}: image folder does not exist")
    out = Path(cfg.out) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out / LOCK_FILE, f"image dataset {out}"):
        return _ingest_locked(cfg, data, root.resolve(), out, progress)


def _ingest_locked(cfg: ImagesConfig, data: dict[str, np.ndarray], root: Path, out: Path, progress: bool
                   ) -> IngestSummary:
    marker = out / shard.SUMMARY_FILE
    if marker.exists():
        marker.unlink()  # a re-run rewrites the dataset; it is complete again only at the end
    for old in out.glob(shard.SHARD_GLOB):
        old.unlink()
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}

    def skip(reason: str, i: int) -> None:
        skipped[reason] += 1
        shown = examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{i}: {data['imgname'][i]}")

    rows: list[dict] = []
    shards: list[str] = []
    n = len(data["imgname"])
    it = _iter_images(data, root)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=n, desc=f"images {cfg.name}")
    for i, image, reason in it:
        if image is None:
            skip(reason, i)
            continue
        if not _labels_finite(data, i) or float(data["scale"][i]) <= 0:
            skip("non-finite or non-positive label", i)
            continue
        h, w = image.shape[:2]
        if box_outside(data["center"][i], float(data["scale"][i]), w, h):
            skip("box outside the image", i)
            continue
        rows.append(sample_row(data, i, image, cfg))
        if len(rows) == cfg.rows_per_shard:
            shards.append(_flush(rows, out, len(shards), cfg.rows_per_group))
            rows = []
    if rows:
        shards.append(_flush(rows, out, len(shards), cfg.rows_per_group))
    written = n - sum(skipped.values())
    summary = IngestSummary(cfg.name, n, written, dict(sorted(skipped.items())), shards, asdict(cfg),
                            examples=dict(sorted(examples.items())))
    atomic_write_json(marker, asdict(summary), indent=2)
    return summary


def _flush(rows: list[dict], out: Path, k: int, rows_per_group: int) -> str:
    name = shard.SHARD_FILE.format(index=k)
    write_shard(rows, out / name, rows_per_group)
    return name

