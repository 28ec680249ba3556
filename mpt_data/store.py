"""The MPT store on disk: create, write, checksum, freeze, verify and summarise.

A store is one Zarr v3 group in a local directory (schema 1, paths in `mpt_data.schema`):

| path | shape, dtype | meaning |
| --- | --- | --- |
| `meshes/vertices` | (N, V, 3) int16, attrs `scale_m` = `scale_factor` = 1e-4, `units` = m | root-centred vertices (root: the pelvis of a body, the wrist of a hand), AMASS world axes, z up; metres = stored * scale_m (CF readers such as xarray decode it through `scale_factor`) |
| `meshes/joints/<set>` | (N, J, 3) float32 | 3D joints of each joint set (bodies: `smpl24`, `coco17`, `h36m17` if a regressor was given; hands: `hand21`), same frame |
| `meshes/pose` | (N, P) float32 | axis-angle pose (bodies: the source's, P = 156, SMPL+H layout; hands: the mesh's right-hand MANO pose, P = 48) |
| `meshes/betas` | (N, B) float32 | shape parameters given to the model (B = the recipe's num_betas; zeros for hands) |
| `meshes/sequence` | (N,) int32 | row of `sequences.parquet` the mesh came from |
| `meshes/frame` | (N,) int32 | frame index in the source file |
| `meshes/split` | (N,) int8 | `schema.SPLITS` value (train 0, val 1, test 2) |
| `views/joints2d` | (N, C, K, 2) float32 | heatmap joints (`heatmap_joint_set`: COCO-17 for bodies, HAND-21 for hands) in crop pixels, 0..224 |
| `views/visible` | (N, C, K) bool | joint inside the crop and in front of the camera |
| `views/crop` | (N, C, 3) float32 | crop square x0, y0, side in image pixels |
| `cameras/K`, `cameras/R`, `cameras/t` | (C,3,3), (C,3,3), (C,3) float32 | intrinsics (pixels); world->camera rotation and translation (metres). attrs: `names`, `subject_position` (world position of the root, metres) |
| `cameras/image_size` | (C, 2) int32 | width, height in pixels |
| `topology/template` | (V, 3) float32 | rest-pose template, zero betas, root at the origin, the model's own axes (y up for SMPL), metres |
| `topology/faces` | (F, 3) int32 | triangles |
| `topology/level<l>/vertex_ids` | (V_l,) int32 | vertices of level l-1 kept in level l (level 0 = the full mesh; l = 1, 2: about V/4, V/16) |
| `topology/level<l>/faces` | (F_l, 3) int32 | triangles of level l, indices into level l |
| `topology/level<l>/up_index`, `up_weight` | (V_{l-1}, 3) int32, float32 | each vertex of level l-1 as a weighted sum of 3 level-l vertices |
| `topology/regressors/<set>` | (J, V) float32 | joint regressor of each joint set (rows sum to 1) |
| `sequences.parquet` | one row per source file | index, path, subset, subject, gender, fps, frames, sampled (meshes made of the file), first_mesh, split, size, sha256, status, reason |
| `_build/partitions/p<i>.json` | JSON | completion record of partition i: range, counts, per-chunk checksums, recipe hash, sources |
| `_build/static.json` | JSON | checksums of the arrays written by the driver (cameras, topology) and of sequences.parquet |
| `integrity.json` | canonical JSON | written by freeze: what a reader must see (metadata, attributes, chunk checksums) |

Group attributes: `schema`, `tool_version`, `state` (`building` | `complete` | `frozen`), `recipe` (resolved),
`recipe_hash`, `counts` (meshes, cameras, views, vertices, faces, sequences, skipped, splits), `joint_sets`
({name: J}), `heatmap_joint_set`, `body_model` (type, sizes, file hashes), `chunk_meshes`, `shard_meshes`,
`partitions`, `fingerprint` (set by freeze).

A hand store (`body_model.type: mano`, see `mpt_data.meshes`) has the same arrays: each sampled frame makes one
right-hand mesh per side of the recipe's `hands`, consecutive in that order (mesh `first_mesh + k` of a file is
side `k % len(hands)` of its frame `meshes/frame`).

Every array carries zarr v3 `dimension_names` (`schema.dimension_names`: `mesh`, `vertex`, `xyz`, `camera`,
`<set>_joint`, ...), so xarray opens each group as a Dataset and the whole store as a DataTree.

Per-mesh arrays are chunked along axis 0 (`chunk_meshes` meshes per chunk, a loader reads whole chunks) and
sharded (`shard_meshes` per shard file); one build task owns whole shards, so parallel writers never share a
file. Checksums are BLAKE2b-128 of each chunk's decoded little-endian bytes, so they describe content and not
the codec; the sequences table is hashed as canonical JSON of its rows, not as Parquet bytes.

Sealing a built store (`mpt_data.freeze`) re-hashes every chunk against these records and writes
`integrity.json`, whose SHA-256 is the fingerprint (the manifest's contract: `mpt_data.integrity`). A frozen store
has consolidated metadata and read-only files, and refuses writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpt_data import __version__, schema
from mpt_data.fileio import FolderLock
from mpt_data.integrity import StoreError, chunk_digest
from mpt_data.remote import Location, is_local, local_path

BUILD_DIR = "_build"
STATIC_RECORD = "_build/static.json"
PARTITIONS_DIR = "_build/partitions"



class FrozenStoreError(StoreError):
    """A write was attempted on a frozen store."""


@dataclass(frozen=True)
class StoreLayout:
    """Sizes that fix every array shape of a store before any data is written."""

    num_meshes: int
    num_vertices: int
    num_cameras: int
    joint_sets: dict[str, int]  # name -> J
    pose_dim: int
    num_betas: int
    heatmap_joints: int
    chunk_meshes: int
    shard_meshes: int

    def __post_init__(self) -> None:
        if self.chunk_meshes <= 0 or self.shard_meshes <= 0 or self.shard_meshes % self.chunk_meshes:
            raise StoreError(
                f"shard_meshes ({self.shard_meshes}) must be a positive multiple of chunk_meshes ({self.chunk_meshes})"
            )

    @property
    def num_partitions(self) -> int:
        return -(-self.num_meshes // self.shard_meshes)

    def partition_range(self, i: int) -> tuple[int, int]:
        """Global mesh range [start, stop) of partition i: exactly one shard of every per-mesh array."""
        start = i * self.shard_meshes
        return start, min(start + self.shard_meshes, self.num_meshes)


def mesh_array_specs(layout: StoreLayout) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-mesh arrays: path -> (shape after axis 0, dtype)."""
    c, k = layout.num_cameras, layout.heatmap_joints
    specs: dict[str, tuple[tuple[int, ...], str]] = {
        schema.VERTICES: ((layout.num_vertices, 3), "int16"),
        schema.POSE: ((layout.pose_dim,), "float32"),
        schema.BETAS: ((layout.num_betas,), "float32"),
        schema.SEQUENCE: ((), "int32"),
        schema.FRAME: ((), "int32"),
        schema.SPLIT: ((), "int8"),
        schema.JOINTS2D: ((c, k, 2), "float32"),
        schema.VISIBLE: ((c, k), "bool"),
        schema.CROP: ((c, 3), "float32"),
    }
    for name, j in sorted(layout.joint_sets.items()):
        specs[f"{schema.JOINTS_GROUP}/{name}"] = ((j, 3), "float32")
    return specs


def quantise_vertices(vertices_m: np.ndarray) -> np.ndarray:
    """(..., 3) float metres -> int16 at `schema.VERTEX_SCALE_M`; raises if a value leaves the int16 range.

    Rounds in float32 (the body model's precision): deterministic, and within 0.05 mm + float32 error.
    """
    q = np.multiply(np.asarray(vertices_m, dtype=np.float32), np.float32(1.0 / schema.VERTEX_SCALE_M))
    np.rint(q, out=q)
    lim = np.iinfo(np.int16).max
    worst = float(np.abs(q).max()) if q.size else 0.0
    if not worst <= lim:  # also catches NaN
        raise StoreError(f"vertex at {worst * schema.VERTEX_SCALE_M:.3f} m from the root exceeds the int16 range "
                         f"(±{lim * schema.VERTEX_SCALE_M:.3f} m)")
    return q.astype(np.int16)


def dequantise_vertices(stored: np.ndarray, scale_m: float = schema.VERTEX_SCALE_M) -> np.ndarray:
    """int16 store values -> float32 metres."""
    return stored.astype(np.float32) * np.float32(scale_m)


def _compressors(dtype: str) -> list:
    import zarr.codecs as zc

    # Byte shuffle groups the high bytes of neighbouring values, which the compressor then packs well. Blosc's
    # level also sets its block size. On shards of int16 6890-vertex meshes (measured), LZ4 at level 5
    # compresses 3-5x faster than zstd at level 1, for 11 % fewer bytes when frames are sampled densely and
    # 1.5 % more when sparsely (level 9: 6-20 % fewer, 1.3-1.8x slower than level 5). Compression was a third
    # of the build's task time after the forward, the build is CPU-bound, and LZ4 also decodes faster.
    shuffle = "noshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return [zc.BloscCodec(cname="lz4", clevel=5, shuffle=shuffle, typesize=np.dtype(dtype).itemsize)]


def chunk_checksums(data: np.ndarray, chunk: int) -> list[str]:
    """BLAKE2b-128 hex digest (`chunk_digest`) of each `chunk`-long slab of `data` along axis 0."""
    a = np.asarray(data)
    if a.ndim == 0 or a.shape[0] == 0:
        return [chunk_digest(a).hex()]
    return [chunk_digest(a[s : s + chunk]).hex() for s in range(0, a.shape[0], chunk)]


def table_checksum(rows: list[dict[str, Any]]) -> str:
    """BLAKE2b-128 of a table's rows as canonical JSON: the content, not the Parquet writer's bytes."""
    blob = json.dumps(rows, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def read_table_checksum(path: Path) -> str:
    """`table_checksum` of a Parquet file's rows."""
    import pyarrow.parquet as pq

    return table_checksum(pq.read_table(path).to_pylist())


def store_lock(path: str | Path) -> FolderLock:
    """The exclusive lock of a store's writers (build, freeze): the file `.<name>.lock` beside the store, not
    inside it, so `build --overwrite`'s removal of the store cannot delete another writer's lock."""
    path = Path(os.path.abspath(path))
    return FolderLock(path.parent / f".{path.name}.lock", f"store {path}")


def open_store(path: str | Path, mode: str = "r", storage_options: dict[str, Any] | None = None):
    """Open the store's root group. mode 'r' reads; 'r+' writes and refuses a frozen store.

    `path` may be an fsspec URL (s3://...) reached with `storage_options`, read-only: a store is built and frozen
    in a local folder and then copied to object storage (`mpt-data copy`)."""
    import zarr

    if not is_local(path):
        if mode != "r":
            raise StoreError(f"{path}: a store on object storage is read-only here; build and freeze it in a local "
                             "folder, then `mpt-data copy` it there")
        return Location(str(path), dict(storage_options or {})).open_group()
    path = local_path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path} is not an MPT store (no zarr.json); build one with `mpt-data build`")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        group = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
    if group.attrs.get(schema.ATTR_SCHEMA) != schema.SCHEMA_VERSION:
        raise StoreError(f"{path} has schema {group.attrs.get(schema.ATTR_SCHEMA)!r}; this tool reads schema {schema.SCHEMA_VERSION}")
    if mode != "r" and group.attrs.get(schema.ATTR_STATE) == schema.STATE_FROZEN:
        raise FrozenStoreError(f"{path} is frozen (fingerprint {group.attrs.get(schema.ATTR_FINGERPRINT)}); it refuses writes. Build a new store instead.")
    return group


def create_store(path: str | Path, layout: StoreLayout, attrs: dict[str, Any]) -> None:
    """Create an empty store (state 'building') with every per-mesh array allocated from `layout`."""
    import zarr

    path = Path(path)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update(
        {
            **attrs,
            schema.ATTR_SCHEMA: schema.SCHEMA_VERSION,
            schema.ATTR_TOOL_VERSION: __version__,
            schema.ATTR_STATE: schema.STATE_BUILDING,
            schema.ATTR_CHUNK_MESHES: layout.chunk_meshes,
            schema.ATTR_SHARD_MESHES: layout.shard_meshes,
            schema.ATTR_PARTITIONS: layout.num_partitions,
            schema.ATTR_JOINT_SETS: dict(sorted(layout.joint_sets.items())),
            schema.ATTR_FINGERPRINT: None,
        }
    )
    n = max(layout.num_meshes, 0)
    for name, (rest, dtype) in mesh_array_specs(layout).items():
        group.create_array(
            name,
            shape=(n, *rest),
            dtype=dtype,
            chunks=(layout.chunk_meshes, *rest),
            shards=(layout.shard_meshes, *rest),
            compressors=_compressors(dtype),
            fill_value=0,
            attributes={schema.ATTR_SCALE_M: schema.VERTEX_SCALE_M, **schema.VERTEX_CF_ATTRS} if name == schema.VERTICES else {},
            dimension_names=schema.dimension_names(name),
        )


def write_static_arrays(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """Write small driver-owned arrays (cameras, topology) whole, one chunk each; returns their checksums."""
    group = open_store(path, "r+")
    sums: dict[str, list[str]] = {}
    for name, value in sorted(arrays.items()):
        value = np.ascontiguousarray(value)
        try:
            dims = schema.dimension_names(name)
        except ValueError as err:
            raise StoreError(str(err)) from err
        arr = group.create_array(
            name,
            shape=value.shape,
            dtype=value.dtype,
            chunks=value.shape if value.size else None,
            compressors=_compressors(str(value.dtype)),
            fill_value=0,
            attributes=(attrs or {}).get(name, {}),
            dimension_names=dims,
            overwrite=True,
        )
        arr[...] = value
        if value.ndim == 0:
            raise StoreError(f"{name}: static arrays need at least one axis")
        sums[name] = chunk_checksums(value, max(value.shape[0], 1))
    return sums


def write_mesh_block(path: str | Path, start: int, arrays: dict[str, np.ndarray], chunk_meshes: int) -> dict[str, list[str]]:
    """Write per-mesh data for meshes [start, start + n) and return per-chunk checksums of what was written.

    `start` must be shard-aligned and the block must cover whole shards (or run to the array's end): the caller
    owns those shards alone, and a re-run writes the same bytes.
    """
    group = open_store(path, "r+")
    sums: dict[str, list[str]] = {}
    for name, value in sorted(arrays.items()):
        arr = group[name]
        value = np.ascontiguousarray(value, dtype=arr.dtype)
        if value.shape[1:] != arr.shape[1:] or start + value.shape[0] > arr.shape[0]:
            raise StoreError(f"{name}: block {value.shape} at {start} does not fit array {arr.shape}")
        arr[start : start + value.shape[0]] = value
        sums[name] = chunk_checksums(value, chunk_meshes)
    return sums


def partition_record_path(path: str | Path, i: int) -> Path:
    return Path(path) / PARTITIONS_DIR / f"p{i:06d}.json"


def read_partition_record(path: str | Path, i: int) -> dict | None:
    """The completion record of partition i, or None if absent or unreadable (then the partition is redone)."""
    p = partition_record_path(path, i)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record_is_valid(record: dict | None, *, index: int, start: int, stop: int, recipe_hash: str,
                    arrays: list[str], chunk_meshes: int) -> bool:
    """True when a completion record matches the planned partition and carries a checksum per chunk of each array."""
    if not record or record.get("partition") != index or record.get("recipe_hash") != recipe_hash:
        return False
    if (record.get("start"), record.get("stop")) != (start, stop):
        return False
    sums = record.get("checksums", {})
    nchunks = -(-(stop - start) // chunk_meshes)
    return sorted(sums) == sorted(arrays) and all(len(sums[a]) == nchunks for a in arrays)


def collect_checksums(path: str | Path) -> dict[str, list[str]]:
    """Merge the static record and every partition record into {array path: [chunk checksums in order]}."""
    path = Path(path)
    group = open_store(path)
    static = json.loads((path / STATIC_RECORD).read_text())
    sums: dict[str, list[str]] = {k: list(v) for k, v in static["checksums"].items()}
    recipe_hash = group.attrs[schema.ATTR_RECIPE_HASH]
    chunk = group.attrs[schema.ATTR_CHUNK_MESHES]
    n = group.attrs[schema.ATTR_COUNTS]["meshes"]
    shard = group.attrs[schema.ATTR_SHARD_MESHES]
    arrays = sorted(_mesh_array_paths(group))
    missing = []
    for i in range(group.attrs[schema.ATTR_PARTITIONS]):
        start, stop = i * shard, min((i + 1) * shard, n)
        rec = read_partition_record(path, i)
        if not record_is_valid(rec, index=i, start=start, stop=stop, recipe_hash=recipe_hash, arrays=arrays, chunk_meshes=chunk):
            missing.append(i)
            continue
        for a in arrays:
            sums.setdefault(a, []).extend(rec["checksums"][a])
    if missing:
        raise StoreError(
            f"{path}: partitions {missing[:10]}{'...' if len(missing) > 10 else ''} have no valid completion record; "
            "run `mpt-data build ... --resume` to finish them"
        )
    for a in arrays:
        sums.setdefault(a, [])
    return sums


def _mesh_array_paths(group) -> list[str]:
    names = [schema.VERTICES, schema.POSE, schema.BETAS, schema.SEQUENCE, schema.FRAME, schema.SPLIT,
             schema.JOINTS2D, schema.VISIBLE, schema.CROP]
    names += [f"{schema.JOINTS_GROUP}/{s}" for s in group.attrs[schema.ATTR_JOINT_SETS]]
    return names


def _dir_size(p: Path) -> int:
    """Bytes of the regular files under `p` (links are not followed: a store's size is its own files')."""
    if p.is_symlink():
        return 0
    if p.is_file():
        return p.stat().st_size
    total = 0
    for folder, _, files in os.walk(p, followlinks=False):
        for name in files:
            st_ = os.lstat(os.path.join(folder, name))
            total += st_.st_size if stat.S_ISREG(st_.st_mode) else 0
    return total


def store_info(path: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts, sizes on disk (or in the bucket) per array, recipe, split sizes, state and fingerprint of a store."""
    group = open_store(path, storage_options=storage_options)
    attrs = dict(group.attrs)
    sizes = {}
    names = _mesh_array_paths(group) + [schema.CAMERAS, schema.TOPOLOGY, schema.SEQUENCES_TABLE]
    if is_local(path):
        path = local_path(path)
        for name in names:
            p = path / name
            if p.exists():
                sizes[name] = _dir_size(p)
        total, has_manifest = _dir_size(path), (path / schema.INTEGRITY_MANIFEST).is_file()
    else:
        files = Location(str(path), dict(storage_options or {})).files()
        for name in names:
            inside = [size for rel, size in files.items() if rel == name or rel.startswith(name + "/")]
            if inside:
                sizes[name] = sum(inside)
        total, has_manifest = sum(files.values()), schema.INTEGRITY_MANIFEST in files
    counts = attrs.get(schema.ATTR_COUNTS, {})
    n = max(counts.get("meshes", 0), 1)
    v = counts.get("vertices", 0)
    raw = n * (v * 3 * 4)
    return {
        "path": str(path),
        "state": attrs.get(schema.ATTR_STATE),
        "fingerprint": attrs.get(schema.ATTR_FINGERPRINT),
        "schema": attrs.get(schema.ATTR_SCHEMA),
        "tool_version": attrs.get(schema.ATTR_TOOL_VERSION),
        "counts": counts,
        "joint_sets": attrs.get(schema.ATTR_JOINT_SETS),
        "heatmap_joint_set": attrs.get(schema.ATTR_HEATMAP_JOINT_SET),
        "body_model": (attrs.get(schema.ATTR_BODY_MODEL) or {}).get("type"),
        "sizes_bytes": sizes,
        "total_bytes": total,
        "vertex_bytes_per_mesh": sizes.get(schema.VERTICES, 0) / n,
        "vertex_raw_float32_bytes_per_mesh": raw / n,
        "recipe": attrs.get(schema.ATTR_RECIPE),
        "chunk_meshes": attrs.get(schema.ATTR_CHUNK_MESHES),
        "shard_meshes": attrs.get(schema.ATTR_SHARD_MESHES),
        "integrity_manifest": has_manifest,
    }


def format_info(info: dict[str, Any]) -> str:
    """Human-readable summary of `store_info`."""
    c = info["counts"]
    lines = [
        f"store        {info['path']}",
        f"state        {info['state']}   schema {info['schema']}   tool {info['tool_version']}",
        f"fingerprint  {info['fingerprint'] or '(not frozen)'}"
        + ("" if not info["fingerprint"] else f"   (SHA-256 of {schema.INTEGRITY_MANIFEST})" if info.get("integrity_manifest")
           else f"   (no {schema.INTEGRITY_MANIFEST}: frozen by an older mpt-data; re-freeze it)"),
        f"meshes       {c.get('meshes')}   cameras {c.get('cameras')}   views {c.get('views')}   "
        f"vertices {c.get('vertices')}   faces {c.get('faces')}",
        f"sequences    {c.get('sequences')} used, {c.get('skipped')} skipped",
        "splits       " + "   ".join(f"{k} {v}" for k, v in (c.get("splits") or {}).items()),
        "joint sets   " + "   ".join(f"{k} ({v})" for k, v in (info["joint_sets"] or {}).items())
        + f"   heatmaps {info.get('heatmap_joint_set')}   model {info.get('body_model')}",
        f"layout       {info['chunk_meshes']} meshes/chunk, {info['shard_meshes']} meshes/shard",
        f"on disk      {info['total_bytes'] / 1e6:.2f} MB; vertices {info['vertex_bytes_per_mesh']:.0f} B/mesh "
        f"vs {info['vertex_raw_float32_bytes_per_mesh']:.0f} B raw float32",
    ]
    for name, size in sorted(info["sizes_bytes"].items()):
        lines.append(f"  {name:<28} {size / 1e6:10.3f} MB")
    recipe = info.get("recipe") or {}
    lines.append("recipe       " + json.dumps(recipe, sort_keys=True))
    return "\n".join(lines)


def remove_store(path: str | Path) -> None:
    """Delete a store that is not frozen (used by `build --overwrite`)."""
    path = Path(path)
    if not path.exists():
        return
    if (path / "zarr.json").exists():
        try:
            open_store(path, "r+")
        except FrozenStoreError:
            raise
        except StoreError:
            pass
    elif any(path.iterdir()):
        raise StoreError(f"{path} exists and is not an MPT store; refusing to delete it")
    shutil.rmtree(path)
