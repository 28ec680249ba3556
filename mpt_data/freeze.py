"""Freeze and verify a built store: re-hash every chunk, seal it with its integrity manifest, check it later.

`freeze_store` re-reads and re-hashes every chunk against the build's completion records and refuses to seal a
store whose data or writer metadata differ; it then writes `integrity.json` (see `mpt_data.integrity`), sets the
fingerprint, consolidates the metadata and makes the files read-only without following links.
`verify_store` checks a frozen store against its manifest (data, consolidated and per-array metadata,
symbolic links), or a complete store against its build records.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mpt_data import schema
from mpt_data.fileio import atomic_write_bytes, atomic_write_text
from mpt_data.integrity import (SEQUENCES_KEY, StoreError, chunk_digest, integrity_manifest, manifest_fingerprint,
                                metadata_differences, parse_manifest, read_integrity_manifest, store_metadata)
from mpt_data.remote import Location
from mpt_data.store import (_mesh_array_paths, collect_checksums, open_store, partition_record_path, read_table_checksum,
                            store_lock, table_checksum)


CHUNKS_IN_FLIGHT = 64  # chunks requested at once when re-hashing (memory: this many decoded chunks)


def _array_chunk_sums(arr, name: str, rows: int) -> tuple[list[str], list[tuple[int, int, str | None]]]:
    """Checksums of every axis-0 slab of `rows` rows, read through zarr; with (start, stop, error) per slab.

    Slabs are requested CHUNKS_IN_FLIGHT at a time through zarr's async API, so on object storage the round trips
    overlap; a slab that fails to read or decode gets an "unreadable (...)" checksum and its error."""
    import asyncio

    from zarr.core.sync import sync

    n = arr.shape[0]
    starts = list(range(0, max(n, 1), max(rows, 1)))
    sums, spans = [], []
    source = arr.async_array
    for at in range(0, len(starts), CHUNKS_IN_FLIGHT):
        group = [(s, min(s + rows, n)) for s in starts[at : at + CHUNKS_IN_FLIGHT]]

        async def gather(group=group):
            return await asyncio.gather(*(source.getitem(slice(s, stop)) for s, stop in group), return_exceptions=True)

        for (s, stop), got in zip(group, sync(gather())):
            if isinstance(got, Exception):  # a corrupt shard fails to decode: reported as this chunk's fault
                err = f"{type(got).__name__}: {got}"
                sums.append(f"unreadable ({err})")
            elif isinstance(got, BaseException):
                raise got
            else:
                err = None
                sums.append(chunk_digest(np.asarray(got)).hex())
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
    the vertex scale (and its CF form), and each per-mesh array's length, chunking, per-mesh shape against the
    counts and dimension names (when it has them)."""
    attrs = group.attrs
    counts = attrs.get(schema.ATTR_COUNTS, {})
    out = []
    try:
        vertices = group[schema.VERTICES]
    except KeyError:
        return [f"{schema.VERTICES}: array missing"]
    scale = vertices.attrs.get(schema.ATTR_SCALE_M)
    if scale != schema.VERTEX_SCALE_M:
        out.append(f"{schema.VERTICES}: attribute {schema.ATTR_SCALE_M!r} is {scale!r}, the builder writes {schema.VERTEX_SCALE_M}")
    # The CF attributes decode the same integers for xarray: one that disagreed with scale_m would give other
    # metres there than in MPT. Stores built before they existed have none and freeze as they are.
    for key, want in schema.VERTEX_CF_ATTRS.items():
        got = vertices.attrs.get(key, want)
        if got != want:
            out.append(f"{schema.VERTICES}: attribute {key!r} is {got!r}, the builder writes {want!r}")
    if attrs.get(schema.ATTR_VERTEX_SCALE_M, schema.VERTEX_SCALE_M) != schema.VERTEX_SCALE_M:
        out.append(f"group: attribute {schema.ATTR_VERTEX_SCALE_M!r} is {attrs.get(schema.ATTR_VERTEX_SCALE_M)!r}, the builder writes {schema.VERTEX_SCALE_M}")
    per_mesh = {schema.VERTICES: (counts.get("vertices"), 3), schema.JOINTS2D: (counts.get("cameras"),),
                schema.VISIBLE: (counts.get("cameras"),), schema.CROP: (counts.get("cameras"),)}
    for s, j in (attrs.get(schema.ATTR_JOINT_SETS) or {}).items():
        per_mesh[f"{schema.JOINTS_GROUP}/{s}"] = (j, 3)
    for name in _mesh_array_paths(group):
        try:
            arr = group[name]
        except KeyError:
            out.append(f"{name}: array missing")
            continue
        dims = arr.metadata.dimension_names
        if dims is not None and tuple(dims) != schema.dimension_names(name):
            out.append(f"{name}: dimension names {list(dims)}, the builder writes {list(schema.dimension_names(name))}")
        if arr.shape[0] != counts.get("meshes") or arr.chunks[0] != attrs.get(schema.ATTR_CHUNK_MESHES):
            out.append(f"{name}: {arr.shape[0]} meshes in chunks of {arr.chunks[0]}, the counts say "
                       f"{counts.get('meshes')} in chunks of {attrs.get(schema.ATTR_CHUNK_MESHES)}")
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
    path = Path(path)
    open_store(path)  # a clear error for a path that is no store, before any lock file is made beside it
    with store_lock(path):  # no build may write while the data is hashed and sealed
        return _freeze_locked(path, manifest, name)


def _freeze_locked(path: Path, manifest: str | Path | None, name: str | None) -> str:
    import zarr

    group = open_store(path)
    state = group.attrs.get(schema.ATTR_STATE)
    if state == schema.STATE_FROZEN and read_integrity_manifest(group) is not None:
        fp = group.attrs[schema.ATTR_FINGERPRINT]
    else:
        if state not in (schema.STATE_COMPLETE, schema.STATE_FROZEN):
            raise StoreError(f"{path} is in state {state!r}, not {schema.STATE_COMPLETE!r}: finish it with `mpt-data build ... --resume`")
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
        if state == schema.STATE_FROZEN:  # re-freezing a store frozen before manifests: its files are read-only
            _set_files_writable(path, True)
        atomic_write_bytes(path / schema.INTEGRITY_MANIFEST, blob)
        fp = manifest_fingerprint(blob)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            root.attrs.update({schema.ATTR_FINGERPRINT: fp, schema.ATTR_STATE: schema.STATE_FROZEN})
            zarr.consolidate_metadata(str(path))
        _set_files_writable(path, False)
    if manifest is not None:
        group = open_store(path)
        entry = {
            "name": name or path.name,
            "path": str(path),
            "fingerprint": fp,
            "counts": {k: v for k, v in group.attrs[schema.ATTR_COUNTS].items()},
            "recipe": group.attrs[schema.ATTR_RECIPE].get("name"),
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
    shard = group.attrs[schema.ATTR_SHARD_MESHES]
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


def _sequences_checksum(loc: Location) -> str:
    """`read_table_checksum` of the store's sequences table, local or remote."""
    if loc.local:
        return read_table_checksum(loc.path / schema.SEQUENCES_TABLE)
    import io

    import pyarrow.parquet as pq

    blob = loc.read_bytes(schema.SEQUENCES_TABLE)
    if blob is None:
        raise FileNotFoundError(f"{loc.url}/{schema.SEQUENCES_TABLE}")
    return table_checksum(pq.read_table(io.BytesIO(blob)).to_pylist())


def verify_store(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> VerifyReport:
    """Re-read every chunk and all metadata through zarr and name each difference.

    A frozen store is checked against its `integrity.json`: every chunk's checksum, every array's shape,
    dtype, chunking and attributes and every group's attributes, as read through the consolidated metadata
    (what a reader sees) and through each array's own zarr.json; the manifest must hash to the stored
    fingerprint, and the fingerprint is recomputed from what was read. A complete store not yet frozen is
    checked against its completion records (chunks) and the builder's metadata rules; its computed
    fingerprint is the one freeze would write. Symbolic links inside the store are reported either way.
    `path` may be an fsspec URL (s3://...) reached with `storage_options`; such a store must be frozen (a store
    on object storage is a `mpt-data copy` of a frozen one).
    """
    loc = Location(str(path), dict(storage_options or {}))
    if loc.local:
        path = loc.path
        group = open_store(path)
    else:
        path = loc.url
        group = loc.open_group()
    stored = group.attrs.get(schema.ATTR_FINGERPRINT)
    report = VerifyReport(str(path), stored, None)
    if loc.local:
        report.mismatches += symlink_problems(path)
        report.checked.append("no symbolic links inside the store folder")
    elif group.attrs.get(schema.ATTR_STATE) != schema.STATE_FROZEN:
        raise StoreError(f"{loc.url} is in state {group.attrs.get(schema.ATTR_STATE)!r}: only a frozen store is "
                         "verified on object storage (build and freeze locally, then `mpt-data copy`)")
    blob = read_integrity_manifest(group)
    frozen = group.attrs.get(schema.ATTR_STATE) == schema.STATE_FROZEN
    recorded = None
    if frozen and blob is not None:
        recorded = parse_manifest(blob, str(path))
        expected = dict(recorded.get("checksums", {}))
        if schema.SEQUENCES_TABLE in recorded.get("files", {}) or (loc.local and (path / schema.SEQUENCES_TABLE).exists()):
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
                got = [_sequences_checksum(loc)]
            except StoreError:
                raise
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
            plain = _open_plain(path) if loc.local else loc.open_group(use_consolidated=False)
            report.mismatches += metadata_differences(recorded, store_metadata(plain), "per-array zarr.json")
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
