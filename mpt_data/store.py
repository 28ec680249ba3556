"""The MPT store on disk: create, write, checksum, freeze, verify and summarise.

A store is one Zarr v3 group in a local directory (schema 1, paths in `mpt_data.schema`):

| path | shape, dtype | meaning |
| --- | --- | --- |
| `meshes/vertices` | (N, V, 3) int16, attr `scale_m` = 1e-4 | root-centred vertices, body frame, z up; metres = stored * scale_m |
| `meshes/joints/<set>` | (N, J, 3) float32 | 3D joints of each joint set (`smpl24`, `coco17`, `h36m17` if a regressor was given), same frame |
| `meshes/pose` | (N, P) float32 | source axis-angle pose (P = 156, SMPL+H layout) |
| `meshes/betas` | (N, B) float32 | shape parameters given to the body model (B = the recipe's num_betas) |
| `meshes/sequence` | (N,) int32 | row of `sequences.parquet` the mesh came from |
| `meshes/frame` | (N,) int32 | frame index in the source file |
| `meshes/split` | (N,) int8 | `schema.SPLITS` value (train 0, val 1, test 2) |
| `views/joints2d` | (N, C, K, 2) float32 | heatmap joints (COCO-17) in crop pixels, 0..224 |
| `views/visible` | (N, C, K) bool | joint inside the crop and in front of the camera |
| `views/crop` | (N, C, 3) float32 | crop square x0, y0, side in image pixels |
| `cameras/K`, `cameras/R`, `cameras/t` | (C,3,3), (C,3,3), (C,3) float32 | intrinsics (pixels); world->camera rotation and translation (metres). attrs: `names`, `subject_position` (world position of the pelvis, metres) |
| `cameras/image_size` | (C, 2) int32 | width, height in pixels |
| `topology/template` | (V, 3) float32 | rest-pose template, zero betas, pelvis at the origin, the model's own axes (y up for SMPL), metres |
| `topology/faces` | (F, 3) int32 | triangles |
| `topology/level<l>/vertex_ids` | (V_l,) int32 | vertices of level l-1 kept in level l (level 0 = the full mesh; l = 1, 2: about V/4, V/16) |
| `topology/level<l>/faces` | (F_l, 3) int32 | triangles of level l, indices into level l |
| `topology/level<l>/up_index`, `up_weight` | (V_{l-1}, 3) int32, float32 | each vertex of level l-1 as a weighted sum of 3 level-l vertices |
| `topology/regressors/<set>` | (J, V) float32 | joint regressor of each joint set (rows sum to 1) |
| `sequences.parquet` | one row per source file | index, path, subset, subject, gender, fps, frames, sampled, first_mesh, split, size, sha256, status, reason |
| `_build/partitions/p<i>.json` | JSON | completion record of partition i: range, counts, per-chunk checksums, recipe hash, sources |
| `_build/static.json` | JSON | checksums of the arrays written by the driver (cameras, topology) and of sequences.parquet |
| `integrity.json` | canonical JSON | written by freeze: what a reader must see (metadata, attributes, chunk checksums) |

Group attributes: `schema`, `tool_version`, `state` (`building` | `complete` | `frozen`), `recipe` (resolved),
`recipe_hash`, `counts` (meshes, cameras, views, vertices, faces, sequences, skipped, splits), `joint_sets`
({name: J}), `heatmap_joint_set`, `chunk_meshes`, `shard_meshes`, `partitions`, `fingerprint` (set by freeze).

Per-mesh arrays are chunked along axis 0 (`chunk_meshes` meshes per chunk, a loader reads whole chunks) and
sharded (`shard_meshes` per shard file); one build task owns whole shards, so parallel writers never share a
file. Checksums are BLAKE2b-128 of each chunk's decoded little-endian bytes, so they describe content and not
the codec; the sequences table is hashed as canonical JSON of its rows, not as Parquet bytes.

Freeze re-reads and re-hashes every chunk and refuses to seal a store whose data differs from its completion
records. It then writes `integrity.json`: the group attributes that give the data its meaning (all but
state, fingerprint and tool version; the recipe without its local paths and name), every group's attributes,
each array's shape, dtype, axis-0 chunk length and attributes, every chunk checksum and the sequences table's
checksum, as canonical JSON. The fingerprint is the SHA-256 of that file, so it covers data and metadata
(vertex scale, shapes, joint sets, counts, recipe hash) and does not depend on codecs, the number of build
workers, or where the inputs or the store lie. A frozen store has consolidated metadata, read-only files
(changed without following links), and refuses writes; `verify` and the trainer's reader check what they read
against `integrity.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpt_data import __version__, schema
from mpt_data.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

STATE_BUILDING = "building"
STATE_COMPLETE = "complete"
STATE_FROZEN = "frozen"
BUILD_DIR = "_build"
STATIC_RECORD = "_build/static.json"
PARTITIONS_DIR = "_build/partitions"
SEQUENCES_KEY = "sequences.parquet"  # pseudo-array name of the sequences table in checksum maps


class StoreError(RuntimeError):
    """A store is missing, incomplete or inconsistent; the message says what to do."""


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

    # Byte shuffle groups the high bytes of neighbouring values, which zstd then packs well. Level 1: on int16
    # vertices it is 3x faster than level 3 for 3 % more bytes (measured), and the build is CPU-bound.
    shuffle = "noshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return [zc.BloscCodec(cname="zstd", clevel=1, shuffle=shuffle, typesize=np.dtype(dtype).itemsize)]


def chunk_checksums(data: np.ndarray, chunk: int) -> list[str]:
    """BLAKE2b-128 hex digest of each `chunk`-long slab of `data` along axis 0 (little-endian C-order bytes)."""
    a = np.ascontiguousarray(data)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.ndim == 0 or a.shape[0] == 0:
        return [hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()]
    out = []
    for s in range(0, a.shape[0], chunk):
        out.append(hashlib.blake2b(a[s : s + chunk].tobytes(), digest_size=16).hexdigest())
    return out


def table_checksum(rows: list[dict[str, Any]]) -> str:
    """BLAKE2b-128 of a table's rows as canonical JSON: the content, not the Parquet writer's bytes."""
    blob = json.dumps(rows, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def read_table_checksum(path: Path) -> str:
    """`table_checksum` of a Parquet file's rows."""
    import pyarrow.parquet as pq

    return table_checksum(pq.read_table(path).to_pylist())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (indented, sorted keys) atomically: `mpt_data.fileio.atomic_write_json`."""
    atomic_write_json(path, obj)


def open_store(path: str | Path, mode: str = "r"):
    """Open the store's root group. mode 'r' reads; 'r+' writes and refuses a frozen store."""
    import zarr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path} is not an MPT store (no zarr.json); build one with `mpt-data build`")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        group = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
    if group.attrs.get("schema") != schema.SCHEMA_VERSION:
        raise StoreError(f"{path} has schema {group.attrs.get('schema')!r}; this tool reads schema {schema.SCHEMA_VERSION}")
    if mode != "r" and group.attrs.get("state") == STATE_FROZEN:
        raise FrozenStoreError(f"{path} is frozen (fingerprint {group.attrs.get('fingerprint')}); it refuses writes. Build a new store instead.")
    return group


def create_store(path: str | Path, layout: StoreLayout, attrs: dict[str, Any]) -> None:
    """Create an empty store (state 'building') with every per-mesh array allocated from `layout`."""
    import zarr

    path = Path(path)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update(
        {
            **attrs,
            "schema": schema.SCHEMA_VERSION,
            "tool_version": __version__,
            "state": STATE_BUILDING,
            "chunk_meshes": layout.chunk_meshes,
            "shard_meshes": layout.shard_meshes,
            "partitions": layout.num_partitions,
            "joint_sets": dict(sorted(layout.joint_sets.items())),
            "fingerprint": None,
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
            attributes={"scale_m": schema.VERTEX_SCALE_M} if name == schema.VERTICES else {},
        )


def write_static_arrays(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """Write small driver-owned arrays (cameras, topology) whole, one chunk each; returns their checksums."""
    group = open_store(path, "r+")
    sums: dict[str, list[str]] = {}
    for name, value in sorted(arrays.items()):
        value = np.ascontiguousarray(value)
        arr = group.create_array(
            name,
            shape=value.shape,
            dtype=value.dtype,
            chunks=value.shape if value.size else None,
            compressors=_compressors(str(value.dtype)),
            fill_value=0,
            attributes=(attrs or {}).get(name, {}),
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
    recipe_hash = group.attrs["recipe_hash"]
    chunk = group.attrs["chunk_meshes"]
    n = group.attrs["counts"]["meshes"]
    shard = group.attrs["shard_meshes"]
    arrays = sorted(_mesh_array_paths(group))
    missing = []
    for i in range(group.attrs["partitions"]):
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
    names += [f"{schema.JOINTS_GROUP}/{s}" for s in group.attrs["joint_sets"]]
    return names


# ---------------------------------------------------------------------------------------------------
# Integrity manifest and fingerprint.
#
# `integrity.json` (schema.INTEGRITY_MANIFEST, at the store's root, written by freeze) records what a reader
# must see: the group attributes that give the data its meaning, every sub-group's attributes, each array's
# shape, dtype, axis-0 chunk length and attributes, each chunk's BLAKE2b-128 of decoded bytes, and the
# sequences table's content checksum. It is canonical JSON (sorted keys, no spaces), so the same data and
# metadata give the same bytes, and the fingerprint is the SHA-256 of those bytes: it covers data and
# metadata (vertex scale, shapes, joint sets, counts, recipe hash) but not codecs, shard files or paths.

INTEGRITY_FORMAT = 1  # version of the manifest's layout; a reader refuses another
# Group attributes outside the manifest: the freeze state and the fingerprint (they change when the data does
# not), and the tool version (the same data written by another release is the same data).
UNFINGERPRINTED_ATTRS = (schema.ATTR_STATE, schema.ATTR_FINGERPRINT, "tool_version")
# Recipe fields that say where the inputs lay or what the recipe was called, not what was built (the recipe
# hash drops the same ones), so two copies of one build fingerprint alike wherever their inputs were.
_RECIPE_LOCAL_FIELDS = ("amass_root", "body_model_dir", "h36m_regressor", "name")


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _plain(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so read and recorded values compare equal."""
    return json.loads(canonical_json(obj))


def meaning_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The root group attributes the manifest records: all but `UNFINGERPRINTED_ATTRS`, the recipe without
    its local paths and name."""
    out = {k: v for k, v in attrs.items() if k not in UNFINGERPRINTED_ATTRS}
    if isinstance(out.get("recipe"), dict):
        out["recipe"] = {k: v for k, v in out["recipe"].items() if k not in _RECIPE_LOCAL_FIELDS}
    return _plain(out)


def store_metadata(group) -> dict[str, Any]:
    """What a reader of `group` sees besides the chunk bytes, in the manifest's layout:

    {"group": meaning_attrs(root attributes), "groups": {path: attributes},
     "arrays": {path: {"shape", "dtype", "chunk_rows" (axis-0 chunk length), "attributes"}}}.
    A group opened with consolidated metadata answers from it, as a reader's does.
    """
    import zarr

    groups: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    with warnings.catch_warnings():  # sequences.parquet, _build/, integrity.json are ours, not zarr's
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        members = list(group.members(max_depth=None))
    for p, node in members:
        if isinstance(node, zarr.Array):
            arrays[p] = {"shape": list(node.shape), "dtype": str(node.dtype),
                         "chunk_rows": int(node.chunks[0]) if node.ndim else 1, "attributes": dict(node.attrs)}
        else:
            groups[p] = dict(node.attrs)
    return _plain({"group": meaning_attrs(dict(group.attrs)), "groups": groups, "arrays": arrays})


def integrity_manifest(metadata: dict[str, Any], checksums: dict[str, list[str]]) -> bytes:
    """Canonical manifest bytes from `store_metadata` and {array: chunk checksums, SEQUENCES_KEY: [table sum]}
    (a store without a sequences table, e.g. one not made by the builder, omits that key)."""
    arrays = {k: list(v) for k, v in checksums.items() if k != SEQUENCES_KEY}
    if sorted(arrays) != sorted(metadata["arrays"]):
        raise StoreError(f"checksums for arrays {sorted(set(arrays) ^ set(metadata['arrays']))} do not match the "
                         "arrays in the store's metadata; run `mpt-data verify` on the store")
    files = {schema.SEQUENCES_TABLE: checksums[SEQUENCES_KEY][0]} if SEQUENCES_KEY in checksums else {}
    doc = {"format": INTEGRITY_FORMAT, "schema": schema.SCHEMA_VERSION, **metadata, "checksums": arrays, "files": files}
    return canonical_json(doc)


def manifest_fingerprint(blob: bytes) -> str:
    """The store fingerprint: SHA-256 (hex) of the manifest's canonical bytes."""
    return hashlib.sha256(blob).hexdigest()


def parse_manifest(blob: bytes, where: str) -> dict[str, Any]:
    """The manifest as a dict; StoreError naming `where` if it is not a manifest this code reads."""
    try:
        doc = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{where}/{schema.INTEGRITY_MANIFEST} is not JSON ({err}); the store is damaged: "
                         "rebuild it or restore it from its published copy") from err
    if not isinstance(doc, dict) or doc.get("format") != INTEGRITY_FORMAT:
        raise StoreError(f"{where}/{schema.INTEGRITY_MANIFEST} has format {doc.get('format') if isinstance(doc, dict) else None!r}; "
                         f"this tool reads format {INTEGRITY_FORMAT}")
    return doc


def read_integrity_manifest(group) -> bytes | None:
    """The bytes of `integrity.json` beside the group's metadata (any zarr store: path or URL), or None."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync((group.store_path / schema.INTEGRITY_MANIFEST).get(default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _short(value: Any) -> str:
    text = "absent" if value is _ABSENT else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


_ABSENT = object()


def metadata_differences(recorded: dict[str, Any], seen: dict[str, Any], label: str = "") -> list[str]:
    """One line per difference between the manifest's metadata and `store_metadata` of what is read.

    `label` says which view was read (e.g. "consolidated metadata"); lines name the array, group or attribute.
    """
    how = f" ({label})" if label else ""
    out: list[str] = []

    def attrs_diff(where: str, want: dict, got: dict) -> None:
        for k in sorted(set(want) | set(got)):
            w, g = want.get(k, _ABSENT), got.get(k, _ABSENT)
            if w != g:
                out.append(f"{where}: attribute {k!r} reads {_short(g)}{how}, "
                           f"{schema.INTEGRITY_MANIFEST} records {_short(w)}")

    attrs_diff("group", recorded.get("group", {}), seen["group"])
    want_groups, got_groups = recorded.get("groups", {}), seen["groups"]
    for p in sorted(set(want_groups) | set(got_groups)):
        if p not in got_groups:
            out.append(f"{p}: group missing{how}")
        elif p not in want_groups:
            out.append(f"{p}: group not in {schema.INTEGRITY_MANIFEST}{how}")
        else:
            attrs_diff(p, want_groups[p], got_groups[p])
    want_arrays, got_arrays = recorded.get("arrays", {}), seen["arrays"]
    for p in sorted(set(want_arrays) | set(got_arrays)):
        if p not in got_arrays:
            out.append(f"{p}: array missing{how}")
            continue
        if p not in want_arrays:
            out.append(f"{p}: array not in {schema.INTEGRITY_MANIFEST}{how}")
            continue
        w, g = want_arrays[p], got_arrays[p]
        for key in ("shape", "dtype", "chunk_rows"):
            if w.get(key) != g.get(key):
                out.append(f"{p}: {key} reads {_short(g.get(key))}{how}, {schema.INTEGRITY_MANIFEST} records {_short(w.get(key))}")
        attrs_diff(p, w.get("attributes", {}), g.get("attributes", {}))
    return out


def chunk_digest(data: np.ndarray) -> bytes:
    """BLAKE2b-128 digest (16 bytes) of one chunk's little-endian C-order bytes: `chunk_checksums`' unit."""
    a = np.ascontiguousarray(data)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.blake2b(a.data if a.size else b"", digest_size=16).digest()


def _array_chunk_sums(arr, name: str, rows: int) -> tuple[list[str], list[tuple[int, int, str | None]]]:
    """Checksums of every axis-0 slab of `rows` rows, read through zarr; with (start, stop, error) per slab."""
    n = arr.shape[0]
    sums, spans = [], []
    for s in range(0, max(n, 1), max(rows, 1)):
        stop = min(s + rows, n)
        try:
            got = chunk_digest(np.asarray(arr[s:stop])).hex()
            err = None
        except Exception as exc:  # a corrupt shard fails to decode: reported as this chunk's fault by the caller
            got, err = f"unreadable ({type(exc).__name__}: {exc})", f"{type(exc).__name__}: {exc}"
        sums.append(got)
        spans.append((s, stop, err))
    return sums, spans


def _chunk_where(name: str, ci: int, start: int, stop: int, mesh_array: bool) -> str:
    return f"{name}: chunk {ci} ({f'meshes {start}..{stop - 1}' if mesh_array else 'whole array'})"


def symlink_problems(path: str | Path) -> list[str]:
    """One line per symbolic link anywhere under the store folder (links are listed, never followed)."""
    root = Path(path)
    out = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for entry in sorted(dirs + files):
            p = Path(folder) / entry
            if p.is_symlink():
                out.append(f"{p.relative_to(root)}: a symbolic link (to {os.readlink(p)}) inside the store; a store "
                           "must hold its own files: replace the link by the file it names, or remove it")
    return out


def _set_files_writable(path: Path, writable: bool) -> None:
    """Add or remove write permission on every regular file under `path`, never through a link.

    Links are skipped, and each file is opened with O_NOFOLLOW and changed with fchmod, so a link swapped in
    between the listing and the change still cannot make this touch a file outside the store."""
    bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for folder, _, files in os.walk(path, followlinks=False):
        for name in files:
            p = os.path.join(folder, name)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                mode = os.fstat(fd).st_mode
                os.fchmod(fd, (mode | stat.S_IWUSR) if writable else (mode & ~bits))
            finally:
                os.close(fd)


def _writer_metadata_problems(group) -> list[str]:
    """Metadata the builder always writes, checked before freeze records it (a record holds checksums only):
    the vertex scale, and each per-mesh array's length, chunking and per-mesh shape against the counts."""
    attrs = group.attrs
    counts = attrs.get("counts", {})
    out = []
    try:
        vertices = group[schema.VERTICES]
    except KeyError:
        return [f"{schema.VERTICES}: array missing"]
    scale = vertices.attrs.get(schema.ATTR_SCALE_M)
    if scale != schema.VERTEX_SCALE_M:
        out.append(f"{schema.VERTICES}: attribute {schema.ATTR_SCALE_M!r} is {scale!r}, the builder writes {schema.VERTEX_SCALE_M}")
    if attrs.get("vertex_scale_m", schema.VERTEX_SCALE_M) != schema.VERTEX_SCALE_M:
        out.append(f"group: attribute 'vertex_scale_m' is {attrs.get('vertex_scale_m')!r}, the builder writes {schema.VERTEX_SCALE_M}")
    per_mesh = {schema.VERTICES: (counts.get("vertices"), 3), schema.JOINTS2D: (counts.get("cameras"),),
                schema.VISIBLE: (counts.get("cameras"),), schema.CROP: (counts.get("cameras"),)}
    for s, j in (attrs.get("joint_sets") or {}).items():
        per_mesh[f"{schema.JOINTS_GROUP}/{s}"] = (j, 3)
    for name in _mesh_array_paths(group):
        try:
            arr = group[name]
        except KeyError:
            out.append(f"{name}: array missing")
            continue
        if arr.shape[0] != counts.get("meshes") or arr.chunks[0] != attrs.get("chunk_meshes"):
            out.append(f"{name}: {arr.shape[0]} meshes in chunks of {arr.chunks[0]}, the counts say "
                       f"{counts.get('meshes')} in chunks of {attrs.get('chunk_meshes')}")
        lead = per_mesh.get(name)
        if lead and tuple(arr.shape[1 : 1 + len(lead)]) != lead:
            out.append(f"{name}: per-mesh shape {list(arr.shape[1:])} does not start with {list(lead)} from the counts")
    return out


def _open_plain(path: Path):
    """The store's root group read from each array's own zarr.json, ignoring consolidated metadata."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        return zarr.open_group(str(path), mode="r", use_consolidated=False)


def freeze_store(path: str | Path, manifest: str | Path | None = None, name: str | None = None) -> str:
    """Re-hash every chunk, check it against the completion records, write `integrity.json` and the
    fingerprint (its SHA-256), consolidate metadata, make the store's files read-only.

    Returns the fingerprint. Refuses (StoreError naming the array and chunk, or the link) when any chunk differs
    from its record, the builder's metadata was changed, or the store holds a symbolic link. A store already
    frozen with a manifest is left as it is (its fingerprint is returned); one frozen by an older mpt-data
    (no manifest) is re-checked the same way and re-frozen, which gives it a new fingerprint.
    With `manifest`, adds or replaces this store's entry in the manifest's `stores:` list.
    """
    import zarr

    path = Path(path)
    group = open_store(path)
    state = group.attrs.get("state")
    if state == STATE_FROZEN and read_integrity_manifest(group) is not None:
        fp = group.attrs["fingerprint"]
    else:
        if state not in (STATE_COMPLETE, STATE_FROZEN):
            raise StoreError(f"{path} is in state {state!r}, not 'complete': finish it with `mpt-data build ... --resume`")
        links = symlink_problems(path)
        if links:
            raise StoreError(f"{path}: refusing to freeze: {links[0]}" + (f" (and {len(links) - 1} more links)" if len(links) > 1 else ""))
        plain = _open_plain(path)  # what consolidation will copy, not an earlier freeze's consolidated copy
        problems = _writer_metadata_problems(plain)
        if problems:
            raise StoreError(f"{path}: refusing to freeze: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                             + "; rebuild the store")
        blob = _checked_manifest(path, plain)
        for stale in path.rglob("*.partial"):  # leftovers of writers killed mid-write
            stale.unlink()
        if state == STATE_FROZEN:  # re-freezing a store frozen before manifests: its files are read-only
            _set_files_writable(path, True)
        atomic_write_bytes(path / schema.INTEGRITY_MANIFEST, blob)
        fp = manifest_fingerprint(blob)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            root.attrs.update({"fingerprint": fp, "state": STATE_FROZEN})
            zarr.consolidate_metadata(str(path))
        _set_files_writable(path, False)
    if manifest is not None:
        group = open_store(path)
        entry = {
            "name": name or path.name,
            "path": str(path),
            "fingerprint": fp,
            "counts": {k: v for k, v in group.attrs["counts"].items()},
            "recipe": group.attrs["recipe"].get("name"),
        }
        update_manifest(Path(manifest), entry)
    return fp


def _checked_manifest(path: Path, group) -> bytes:
    """Re-read and re-hash every chunk and the sequences table; raise StoreError naming the first chunks that
    differ from the completion records (and how to redo them); return the manifest bytes of what was read."""
    expected = collect_checksums(path)
    metadata = store_metadata(group)
    extra = sorted(set(metadata["arrays"]) - set(expected))
    if extra:
        raise StoreError(f"{path}: refusing to freeze: arrays {extra} were not written by the build (no completion "
                         "record); remove them or rebuild the store")
    mesh_arrays = set(_mesh_array_paths(group))
    shard = group.attrs["shard_meshes"]
    actual: dict[str, list[str]] = {}
    bad: list[str] = []
    redo: set[int] = set()
    for name in sorted(expected):
        if name == SEQUENCES_KEY:
            got = [read_table_checksum(path / schema.SEQUENCES_TABLE)]
            if got != expected[name]:
                bad.append(f"{schema.SEQUENCES_TABLE}: content differs from the build record")
            actual[name] = got
            continue
        if name not in metadata["arrays"]:
            bad.append(f"{name}: array missing")
            continue
        arr = group[name]
        sums, spans = _array_chunk_sums(arr, name, metadata["arrays"][name]["chunk_rows"])
        for ci, (got, (s, stop, _)) in enumerate(zip(sums, spans)):
            want = expected[name][ci] if ci < len(expected[name]) else None
            if got != want:
                bad.append(_chunk_where(name, ci, s, stop, name in mesh_arrays) + " differs from its completion record")
                if name in mesh_arrays:
                    redo.add(s // shard)
        if len(sums) != len(expected[name]):
            bad.append(f"{name}: {len(sums)} chunks on disk, {len(expected[name])} recorded")
        actual[name] = sums
    if bad:
        fix = (f"delete {', '.join(str(partition_record_path(path, i).relative_to(path)) for i in sorted(redo)[:5])} "
               "and run `mpt-data build ... --resume` to rewrite those partitions" if redo and all(": chunk " in b for b in bad)
               else "rebuild the store with `mpt-data build ... --overwrite`")
        raise StoreError(f"{path}: refusing to freeze: {'; '.join(bad[:5])}" + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
                         + f"; {fix}")
    return integrity_manifest(metadata, actual)


def seal_store_as_read(path: str | Path) -> str:
    """Write `integrity.json` for a store exactly as it reads now and mark it frozen; returns the fingerprint.

    For stores written without the builder (test fixtures, imports): there are no completion records to check
    the data against, so this trusts what it reads. Builder stores go through `freeze_store`, which checks.
    """
    import zarr

    path = Path(path)
    plain = _open_plain(path)
    metadata = store_metadata(plain)
    sums = {name: _array_chunk_sums(plain[name], name, spec["chunk_rows"])[0] for name, spec in metadata["arrays"].items()}
    if (path / schema.SEQUENCES_TABLE).exists():
        sums[SEQUENCES_KEY] = [read_table_checksum(path / schema.SEQUENCES_TABLE)]
    blob = integrity_manifest(metadata, sums)
    atomic_write_bytes(path / schema.INTEGRITY_MANIFEST, blob)
    fp = manifest_fingerprint(blob)
    zarr.open_group(str(path), mode="r+", use_consolidated=False).attrs.update({"fingerprint": fp, "state": STATE_FROZEN})
    return fp


def update_manifest(manifest: Path, entry: dict) -> None:
    """Replace the `stores:` list at the end of a manifest, keeping everything above it byte for byte."""
    import yaml

    text = manifest.read_text() if manifest.exists() else ""
    lines = text.splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if line.rstrip() == "stores:" or line.startswith("stores:")), None)
    head = "".join(lines[:cut]) if cut is not None else text
    stores = []
    if cut is not None:
        parsed = yaml.safe_load("".join(lines[cut:])) or {}
        stores = [s for s in (parsed.get("stores") or []) if s.get("path") != entry["path"] and s.get("name") != entry["name"]]
    stores.append(entry)
    if head and not head.endswith("\n"):
        head += "\n"
    body = yaml.safe_dump({"stores": stores}, sort_keys=False, default_flow_style=False)
    atomic_write_text(manifest, head + body)


@dataclass
class VerifyReport:
    """Result of `verify_store`: every difference found, the fingerprints compared, and what was checked."""

    path: str
    stored_fingerprint: str | None
    computed_fingerprint: str | None
    mismatches: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    checked: list[str] = field(default_factory=list)  # one line per kind of check made

    @property
    def ok(self) -> bool:
        """Nothing differs, and a frozen store's fingerprint is reproduced from what was read."""
        fp_ok = self.stored_fingerprint is None or self.stored_fingerprint == self.computed_fingerprint
        return not self.mismatches and fp_ok


def verify_store(path: str | Path) -> VerifyReport:
    """Re-read every chunk and all metadata through zarr and name each difference.

    A frozen store is checked against its `integrity.json`: every chunk's checksum, every array's shape,
    dtype, chunking and attributes and every group's attributes, as read through the consolidated metadata
    (what a reader sees) and through each array's own zarr.json; the manifest must hash to the stored
    fingerprint, and the fingerprint is recomputed from what was read. A complete store not yet frozen is
    checked against its completion records (chunks) and the builder's metadata rules; its computed
    fingerprint is the one freeze would write. Symbolic links inside the store are reported either way.
    """
    path = Path(path)
    group = open_store(path)
    stored = group.attrs.get("fingerprint")
    report = VerifyReport(str(path), stored, None)
    report.mismatches += symlink_problems(path)
    report.checked.append("no symbolic links inside the store folder")
    blob = read_integrity_manifest(group)
    frozen = group.attrs.get("state") == STATE_FROZEN
    recorded = None
    if frozen and blob is not None:
        recorded = parse_manifest(blob, str(path))
        expected = dict(recorded.get("checksums", {}))
        if schema.SEQUENCES_TABLE in recorded.get("files", {}) or (path / schema.SEQUENCES_TABLE).exists():
            expected[SEQUENCES_KEY] = [recorded.get("files", {}).get(schema.SEQUENCES_TABLE)]
        if manifest_fingerprint(blob) != stored:
            report.mismatches.append(f"{schema.INTEGRITY_MANIFEST}: its SHA-256 {manifest_fingerprint(blob)} is not the "
                                     f"stored fingerprint: the manifest changed after freezing")
        against = schema.INTEGRITY_MANIFEST
    else:
        if frozen:
            report.mismatches.append(f"no {schema.INTEGRITY_MANIFEST}: frozen by an older mpt-data, whose fingerprint did "
                                     f"not cover metadata; re-freeze it with `mpt-data freeze {path}`")
        expected = collect_checksums(path)
        against = "the completion records"
    metadata = store_metadata(group)
    mesh_arrays = set(_mesh_array_paths(group))
    actual: dict[str, list[str]] = {}
    for name in sorted(set(expected) | set(metadata["arrays"])):
        if name == SEQUENCES_KEY:
            try:
                got = [read_table_checksum(path / schema.SEQUENCES_TABLE)]
            except Exception as err:  # missing or unreadable: reported, and the arrays are still checked
                got = [f"unreadable ({type(err).__name__})"]
            if got != expected[name]:
                report.mismatches.append(f"{schema.SEQUENCES_TABLE}: content differs from {against}")
            actual[name] = got
            continue
        if name not in metadata["arrays"]:
            report.mismatches.append(f"{name}: array missing")
            continue
        want_sums = expected.get(name)
        if want_sums is None:
            report.mismatches.append(f"{name}: array not in {against}")
            want_sums = []
        sums, spans = _array_chunk_sums(group[name], name, metadata["arrays"][name]["chunk_rows"])
        report.chunks_checked += len(sums)
        for ci, (got, (s, stop, err)) in enumerate(zip(sums, spans)):
            if ci < len(want_sums) and got != want_sums[ci]:
                report.mismatches.append(_chunk_where(name, ci, s, stop, name in mesh_arrays) + " differs"
                                         + (f": unreadable ({err})" if err else ""))
        if want_sums and len(want_sums) != len(sums):
            report.mismatches.append(f"{name}: {len(sums)} chunks on disk, {len(want_sums)} recorded")
        actual[name] = sums
    report.checked.append(f"{report.chunks_checked} chunks of {len(metadata['arrays'])} arrays re-read and re-hashed "
                          f"against {against}, and {schema.SEQUENCES_TABLE}'s rows")
    if recorded is not None:
        consolidated = group.metadata.consolidated_metadata is not None
        report.mismatches += metadata_differences(recorded, metadata, "consolidated metadata" if consolidated else "")
        if consolidated:
            report.mismatches += metadata_differences(recorded, store_metadata(_open_plain(path)), "per-array zarr.json")
        report.checked.append(f"shape, dtype, chunking and attributes of {len(metadata['arrays'])} arrays and "
                              f"attributes of the root and {len(metadata['groups'])} groups against {schema.INTEGRITY_MANIFEST}"
                              + (", read through the consolidated metadata and each array's zarr.json" if consolidated else ""))
    else:
        report.mismatches += _writer_metadata_problems(group)
        report.checked.append("vertex scale and per-mesh array shapes and chunking against the counts")
    try:
        report.computed_fingerprint = manifest_fingerprint(integrity_manifest(metadata, actual))
    except StoreError as err:  # arrays missing: no fingerprint can be computed, the mismatches already say why
        report.mismatches.append(str(err))
    report.checked.append("fingerprint recomputed from the data and metadata read")
    return report


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


def store_info(path: str | Path) -> dict[str, Any]:
    """Counts, sizes on disk per array, recipe, split sizes, state and fingerprint of a store."""
    path = Path(path)
    group = open_store(path)
    attrs = dict(group.attrs)
    sizes = {}
    for name in _mesh_array_paths(group) + ["cameras", "topology", schema.SEQUENCES_TABLE]:
        p = path / name
        if p.exists():
            sizes[name] = _dir_size(p)
    counts = attrs.get("counts", {})
    n = max(counts.get("meshes", 0), 1)
    v = counts.get("vertices", 0)
    raw = n * (v * 3 * 4)
    return {
        "path": str(path),
        "state": attrs.get("state"),
        "fingerprint": attrs.get("fingerprint"),
        "schema": attrs.get("schema"),
        "tool_version": attrs.get("tool_version"),
        "counts": counts,
        "joint_sets": attrs.get("joint_sets"),
        "sizes_bytes": sizes,
        "total_bytes": _dir_size(path),
        "vertex_bytes_per_mesh": sizes.get(schema.VERTICES, 0) / n,
        "vertex_raw_float32_bytes_per_mesh": raw / n,
        "recipe": attrs.get("recipe"),
        "chunk_meshes": attrs.get("chunk_meshes"),
        "shard_meshes": attrs.get("shard_meshes"),
        "integrity_manifest": (path / schema.INTEGRITY_MANIFEST).is_file(),
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
        "joint sets   " + "   ".join(f"{k} ({v})" for k, v in (info["joint_sets"] or {}).items()),
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
