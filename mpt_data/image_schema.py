"""The image-shard format: what `mpt-data images` writes and `mpt_train.images` reads.

One folder per dataset: Parquet shards ``part-00000.parquet, ...`` (one row per person crop), then
``summary.json`` last (its presence marks a finished folder). Each shard records ``SHARD_FORMAT_VERSION``
in its Parquet key-value metadata under ``VERSION_METADATA_KEY``; a reader refuses any other version,
so a change of columns or of their meaning cannot be read silently with the old rules.

Version 2 (this one) adds the shard's joint set, in the key-value metadata under ``JOINT_SET_METADATA_KEY``:
``coco17`` (people: 17 COCO joints, SMPL pose (72,)) or ``hand21`` (FreiHAND hands: 21 joints in
FreiHAND's order, MANO pose (48,), 778 MANO vertices; ``part`` and ``S`` are zeros). Version 1 shards
recorded no joint set and are read as ``coco17``; a version-1 reader refuses version 2, which is right
for a hand shard it would misread.

Pure data and one pure function, no pyarrow: the trainer imports it without the data side's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping

SHARD_FORMAT_VERSION = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)  # 1: no joint-set key, always coco17
VERSION_METADATA_KEY = "mpt_image_shards"  # Parquet key-value metadata: str(SHARD_FORMAT_VERSION)
JOINT_SET_METADATA_KEY = "mpt_joint_set"  # Parquet key-value metadata (version 2): the joint set's name
DEFAULT_JOINT_SET = "coco17"
# Per joint set: the SMPL / MANO pose length stored in ``pose``.
POSE_SIZES: dict[str, int] = {"coco17": 72, "hand21": 48}
SUMMARY_FILE = "summary.json"
SHARD_FILE = "part-{index:05d}.parquet"
SHARD_GLOB = "part-*.parquet"
# A complete JPEG starts with SOI and ends with EOI; a file cut short lacks the EOI (ingest and the reader check it).
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"

# Columns, in file order. K = the shard's joint set (17 COCO joints, or 21 hand joints), S = 24 SPIN joints
# (zeros in hand shards); pixels are crop pixels of the stored crop unless said otherwise, 3D in metres in the
# annotation's camera frame.
KEY = "key"  # str: "<dataset>/<index>"
DATASET = "dataset"  # str
IMGNAME = "imgname"  # str: image path relative to the image root
INDEX = "index"  # int32: row of the annotation file
JPEG = "jpeg"  # binary: the stored crop, JPEG
CROP_BOX = "crop_box"  # float32 (3,): x0, y0, side of the crop in image pixels
JOINTS2D = "joints2d"  # float32 (K * 3,): x, y, confidence
PART = "part"  # float32 (S * 3,): SPIN's 2D joints as annotated, x, y, confidence
JOINTS3D = "joints3d"  # float32 (K * 4,): x, y, z, confidence
HAS_JOINTS3D = "has_joints3d"  # bool
SPIN_3D = "S"  # float32 (S * 4,): SPIN's 3D joints as annotated
POSE = "pose"  # float32 (72,): SMPL axis-angle; (48,) MANO axis-angle in hand shards
BETAS = "betas"  # float32 (10,)
HAS_SMPL = "has_smpl"  # bool
VERTICES = "vertices"  # float32 (V * 3,), empty when absent
HAS_VERTICES = "has_vertices"  # bool
GENDER = "gender"  # str, "" when unknown

COLUMNS: tuple[str, ...] = (KEY, DATASET, IMGNAME, INDEX, JPEG, CROP_BOX, JOINTS2D, PART, JOINTS3D, HAS_JOINTS3D,
                            SPIN_3D, POSE, BETAS, HAS_SMPL, VERTICES, HAS_VERTICES, GENDER)


def shard_format_version(key_value_metadata: Mapping[bytes, bytes] | None) -> int | None:
    """The format version a shard records (its Parquet file's key-value metadata), None when it records none."""
    raw = (key_value_metadata or {}).get(VERSION_METADATA_KEY.encode())
    if raw is None:
        return None
    text = raw.decode("ascii", errors="replace")
    return int(text) if text.isdigit() else None


def shard_joint_set(key_value_metadata: Mapping[bytes, bytes] | None) -> str:
    """The joint set a shard's rows carry: its recorded name, ``coco17`` when it records none (version 1)."""
    raw = (key_value_metadata or {}).get(JOINT_SET_METADATA_KEY.encode())
    return raw.decode("ascii", errors="replace") if raw is not None else DEFAULT_JOINT_SET
