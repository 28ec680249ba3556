"""Copy a frozen store between two fsspec locations (local <-> S3 <-> another bucket), in parallel, resumable,
and verified against the source's fingerprint.

Order of a copy (`copy_store`):
1. The source must be a frozen store whose `integrity.json` hashes to its fingerprint (an unfrozen store is
   refused). The destination must hold nothing, the same store (a finished or interrupted copy of this
   fingerprint), or be refused: another store, or files that are no copy in progress.
2. A marker `.mpt-copy.json` (source fingerprint) is written at the destination first, so a rerun recognises an
   interrupted copy of the same store.
3. Every file but the root `zarr.json` whose size differs from the source's, or that is missing, is copied by a
   pool of threads (one file per task; a local file is written under a temporary name and renamed).
4. The copy is checked without re-reading the source: the small files (metadata, manifest, sequences table,
   build records) byte for byte against the source, every data chunk through zarr against the manifest's chunk
   checksums. A file that fails is copied again (a second failure means the source itself is damaged).
5. The root `zarr.json` goes last: until it is there, nothing can open the destination as a store, so a partial
   copy is never mistaken for a complete one. The marker is removed, and a local copy is made read-only.

A rerun of a killed copy does steps 3-5 again: only what is missing or wrong is transferred.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mpt_data import schema
from mpt_data.fileio import atomic_write
from mpt_data.freeze import _array_chunk_sums, _set_files_writable
from mpt_data.integrity import StoreError, manifest_fingerprint, metadata_differences, parse_manifest, store_metadata
from mpt_data.remote import Location

COPY_MARKER = ".mpt-copy.json"  # at the destination while a copy is unfinished
ROOT_METADATA = "zarr.json"  # the root group's metadata: written last, the copy's commit
BLOCK = 8 << 20  # bytes per read/write while streaming one file


@dataclass(frozen=True)
class CopyConfig:
    """One copy: source and destination names (paths or fsspec URLs) with their storage options, the number of
    threads moving files, and whether to show a progress bar."""

    src: str
    dst: str
    src_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    dst_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    workers: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class CopyReport:
    """What a copy did: the fingerprint, the files copied (relative paths, in the order they finished), the files
    that were already right, bytes moved and seconds taken."""

    fingerprint: str
    copied: list[str] = field(default_factory=list)
    already_there: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    repaired: list[str] = field(default_factory=list)  # copied again after failing the check


def _source_manifest(src: Location) -> tuple[str, bytes, dict]:
    """(fingerprint, manifest bytes, parsed manifest) of a frozen source; StoreError for anything else."""
    attrs = src.root_attributes()
    state = attrs.get(schema.ATTR_STATE)
    if state != schema.STATE_FROZEN:
        raise StoreError(f"{src.url} is in state {state!r}, not {schema.STATE_FROZEN!r}: only a frozen store is "
                         f"copied (its fingerprint is what the copy is checked against); run `mpt-data freeze {src.url}`")
    fp = attrs.get(schema.ATTR_FINGERPRINT)
    blob = src.read_bytes(schema.INTEGRITY_MANIFEST)
    if not fp or blob is None:
        raise StoreError(f"{src.url}: frozen without {schema.INTEGRITY_MANIFEST} (an older mpt-data); re-freeze it "
                         f"with `mpt-data freeze {src.url}` before copying")
    if manifest_fingerprint(blob) != fp:
        raise StoreError(f"{src.url}: {schema.INTEGRITY_MANIFEST} does not hash to the store's fingerprint {fp}: the "
                         f"source changed after freezing; run `mpt-data verify {src.url}`")
    return fp, blob, parse_manifest(blob, src.url)


def _check_destination(dst: Location, fingerprint: str) -> None:
    """Refuse a destination that holds another store or unrelated files (nothing is written before this)."""
    dst.check_bucket()
    marker = dst.read_bytes(COPY_MARKER)
    root = dst.read_bytes(ROOT_METADATA)
    if root is not None:
        try:
            attrs = json.loads(root).get("attributes") or {}
        except (ValueError, AttributeError):
            attrs = {}
        if attrs.get(schema.ATTR_FINGERPRINT) != fingerprint:
            raise StoreError(f"{dst.url} holds another store (fingerprint {attrs.get(schema.ATTR_FINGERPRINT)!r}, "
                             f"state {attrs.get(schema.ATTR_STATE)!r}); the copy would be fingerprint {fingerprint}. "
                             "Choose another destination or delete that store first")
        return
    if marker is not None:
        try:
            theirs = json.loads(marker).get("fingerprint")
        except (ValueError, AttributeError):
            theirs = None
        if theirs != fingerprint:
            raise StoreError(f"{dst.url} holds an unfinished copy of another store (fingerprint {theirs!r}); delete "
                             "it or choose another destination")
        return
    if dst.files():
        raise StoreError(f"{dst.url} exists and holds files that are not an MPT store; choose an empty destination")


def _copy_file(src: Location, dst: Location, rel: str) -> int:
    """Stream one file from src to dst (a local destination is written atomically); returns its size."""
    moved = 0

    def stream(out) -> None:
        nonlocal moved
        with src.fs.open(src.key(rel), "rb") as f:
            while True:
                block = f.read(BLOCK)
                if not block:
                    break
                out.write(block)
                moved += len(block)

    try:
        if dst.local:
            atomic_write(dst.path / rel, stream)
        else:  # an object appears only once its upload completes: no half-written object is ever visible
            with dst.fs.open(dst.key(rel), "wb") as out:
                stream(out)
    except StoreError:
        raise
    except Exception as err:
        raise (src if moved == 0 else dst).error(err, f"copy {rel}") from err
    return moved


def _chunk_files(arr, array_path: str, start: int, stop: int, present: set[str]) -> list[str]:
    """Relative paths of the files holding rows [start, stop) of `arr` (shards when sharded), among `present`."""
    rows = (arr.shards or arr.chunks)[0] if arr.ndim else 1
    first, last = start // rows, max(start, stop - 1) // rows
    prefix = f"{array_path}/c/"
    out = []
    for rel in present:
        if rel.startswith(prefix):
            head = rel[len(prefix):].split("/", 1)[0]
            if head.isdigit() and first <= int(head) <= last:
                out.append(rel)
    return sorted(out)


def _wrong_files(src: Location, dst: Location, manifest: dict, src_files: dict[str, int]) -> list[str]:
    """Files of the destination that differ from the source: small files compared byte for byte, data files
    through every chunk's checksum in the manifest. Reads the destination once and the source's small files only."""
    import zarr

    data_prefixes = tuple(f"{a}/c/" for a in manifest["checksums"])
    wrong: set[str] = set()
    for rel in sorted(src_files):
        if rel.startswith(data_prefixes) or rel == ROOT_METADATA:
            continue
        if dst.read_bytes(rel) != src.read_bytes(rel):
            wrong.add(rel)
    if any(r.endswith("zarr.json") for r in wrong):
        return sorted(wrong)  # array metadata is wrong: fix it before reading chunks through it
    present = {r for r in src_files if r.startswith(data_prefixes)}
    opts = {} if dst.local else {"storage_options": dict(dst.options)}
    for name, sums in manifest["checksums"].items():
        try:
            arr = zarr.open_array(store=str(dst.path / name) if dst.local else dst.url.rstrip("/") + "/" + name,
                                  mode="r", **opts)
        except Exception as err:
            raise dst.error(err, f"open {name}") from err
        got_sums, spans = _array_chunk_sums(arr, name, int(manifest["arrays"][name]["chunk_rows"]))
        for ci, want in enumerate(sums):
            got = got_sums[ci] if ci < len(got_sums) else None  # unreadable chunks carry a non-hex checksum
            s, stop = spans[min(ci, len(spans) - 1)][:2]
            if got != want:
                files = _chunk_files(arr, name, s, stop, present)
                if not files:
                    raise StoreError(f"{dst.url}: {name} chunk {ci} differs from {schema.INTEGRITY_MANIFEST} and the "
                                     f"source has no file holding it: run `mpt-data verify {src.url}`")
                wrong.update(files)
    return sorted(wrong)


def copy_store(cfg: CopyConfig, echo: Callable[[str], None] = lambda line: None) -> CopyReport:
    """Copy the frozen store `cfg.src` to `cfg.dst` (see the module docstring); returns what was done.

    Raises StoreError (one line naming the URL) for an unfrozen or damaged source, a destination holding another
    store, an unreachable endpoint, missing credentials or a missing bucket, before anything is written."""
    t0 = time.perf_counter()
    src, dst = Location(cfg.src, dict(cfg.src_options)), Location(cfg.dst, dict(cfg.dst_options))
    if src.url.rstrip("/") == dst.url.rstrip("/"):
        raise StoreError(f"{src.url}: source and destination are the same")
    fp, blob, manifest = _source_manifest(src)
    src_files = src.files()
    if ROOT_METADATA not in src_files or schema.INTEGRITY_MANIFEST not in src_files:
        raise StoreError(f"{src.url}: listing shows no {ROOT_METADATA} or {schema.INTEGRITY_MANIFEST}")
    _check_destination(dst, fp)
    report = CopyReport(fp)
    lock = None
    if dst.local:
        from mpt_data.store import store_lock

        lock = store_lock(dst.path).acquire()  # one local writer; object storage has no lock files
    try:
        _write_marker(dst, src, fp)
        dst_files = dst.files()
        todo = [r for r in sorted(src_files) if r not in (ROOT_METADATA,) and dst_files.get(r) != src_files[r]]
        report.already_there = len(src_files) - 1 - len(todo)
        _transfer(src, dst, todo, src_files, report, cfg)
        for attempt in range(3):  # metadata first (chunks are read through it), then data, then a clean pass
            wrong = _wrong_files(src, dst, manifest, src_files)
            if not wrong:
                break
            if attempt == 2 or set(wrong) & set(report.repaired):
                raise StoreError(f"{dst.url}: {len(wrong)} file(s) still differ after copying them again "
                                 f"({', '.join(wrong[:3])}): the source is damaged; run `mpt-data verify {src.url}`")
            echo(f"{len(wrong)} file(s) at the destination failed the check; copying them again")
            report.repaired += wrong
            _transfer(src, dst, wrong, src_files, report, cfg)
        if dst.read_bytes(schema.INTEGRITY_MANIFEST) != blob:
            raise StoreError(f"{dst.url}: {schema.INTEGRITY_MANIFEST} differs from the source's after copying")
        if dst.read_bytes(ROOT_METADATA) != src.read_bytes(ROOT_METADATA):
            _transfer(src, dst, [ROOT_METADATA], src_files, report, cfg)
        problems = metadata_differences(manifest, store_metadata(dst.open_group()))
        if problems:
            raise StoreError(f"{dst.url}: metadata of the copy differs from {schema.INTEGRITY_MANIFEST}: {problems[0]}")
        _remove_marker(dst)
        if dst.local:
            _set_files_writable(dst.path, False)
    finally:
        if lock is not None:
            lock.release()
    report.seconds = time.perf_counter() - t0
    return report


def _write_marker(dst: Location, src: Location, fp: str) -> None:
    body = json.dumps({"fingerprint": fp, "source": src.url}).encode()  # the URL only: options may hold secrets
    try:
        if dst.local:
            atomic_write(dst.path / COPY_MARKER, lambda f: f.write(body))
        else:
            dst.fs.pipe_file(dst.key(COPY_MARKER), body)
    except Exception as err:
        raise dst.error(err, "write to the destination") from err


def _remove_marker(dst: Location) -> None:
    try:
        dst.fs.rm_file(dst.key(COPY_MARKER))
    except FileNotFoundError:
        pass
    except Exception as err:
        raise dst.error(err, f"remove {COPY_MARKER}") from err


def _transfer(src: Location, dst: Location, rels: list[str], sizes: dict[str, int], report: CopyReport,
              cfg: CopyConfig) -> None:
    """Copy `rels` with `cfg.workers` threads, largest first (the pool stays busy to the end), with a progress bar."""
    if not rels:
        return
    from tqdm import tqdm

    order = sorted(rels, key=lambda r: -sizes.get(r, 0))
    with tqdm(total=sum(sizes.get(r, 0) for r in order), unit="B", unit_scale=True, desc="copy",
              disable=not cfg.progress, leave=False) as bar, ThreadPoolExecutor(cfg.workers) as pool:
        futures = {pool.submit(_copy_file, src, dst, r): r for r in order}
        for fut in as_completed(futures):
            moved = fut.result()
            report.copied.append(futures[fut])
            report.bytes_copied += moved
            bar.update(moved)
