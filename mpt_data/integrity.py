"""The integrity manifest of a frozen store and its fingerprint: the contract between `mpt-data freeze`,
`mpt-data verify` and the trainer's reader.

`integrity.json` (schema.INTEGRITY_MANIFEST, at the store's root, written by freeze) records what a reader
must see: the group attributes that give the data its meaning, every sub-group's attributes, each array's
shape, dtype, axis-0 chunk length, attributes and dimension names, each chunk's BLAKE2b-128 of decoded
bytes, and the sequences table's content checksum. It is canonical JSON (sorted keys, no spaces), so the same data and
metadata give the same bytes, and the fingerprint is the SHA-256 of those bytes: it covers data and
metadata (vertex scale, shapes, joint sets, counts, recipe hash) but not codecs, shard files or paths.

Pure functions over JSON-able metadata and numpy chunks, plus one read of the manifest through zarr; no
dask, no smplx, so `mpt_train` imports it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import numpy as np

from mpt_data import schema


class StoreError(ValueError):
    """A store is missing, incomplete, inconsistent or corrupted; the message names it and says what to do.

    The one store error of both packages: the builder, freeze/verify and the trainer's reader raise it."""


SEQUENCES_KEY = schema.SEQUENCES_TABLE  # pseudo-array name of the sequences table in checksum maps

INTEGRITY_FORMAT = 1  # version of the manifest's layout; a reader refuses another
# Group attributes outside the manifest: the freeze state and the fingerprint (they change when the data does
# not), and the tool version (the same data written by another release is the same data).
UNFINGERPRINTED_ATTRS = (schema.ATTR_STATE, schema.ATTR_FINGERPRINT, schema.ATTR_TOOL_VERSION)
# Recipe fields that say where the inputs lay or what the recipe was called, not what was built (the recipe
# hash drops the same ones), so two copies of one build fingerprint alike wherever their inputs were.
_RECIPE_LOCAL_FIELDS = (*schema.RECIPE_PATH_FIELDS, "name")


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
    if isinstance(out.get(schema.ATTR_RECIPE), dict):
        out[schema.ATTR_RECIPE] = {k: v for k, v in out[schema.ATTR_RECIPE].items() if k not in _RECIPE_LOCAL_FIELDS}
    return _plain(out)


def store_metadata(group) -> dict[str, Any]:
    """What a reader of `group` sees besides the chunk bytes, in the manifest's layout:

    {"group": meaning_attrs(root attributes), "groups": {path: attributes},
     "arrays": {path: {"shape", "dtype", "chunk_rows" (axis-0 chunk length), "attributes",
                       "dimension_names" (only when the array has them)}}}.
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
            dims = getattr(node.metadata, "dimension_names", None)
            if dims is not None:  # absent in stores built before arrays had names: their manifests stay the same
                arrays[p]["dimension_names"] = list(dims)
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
        for key in ("shape", "dtype", "chunk_rows", "dimension_names"):
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
