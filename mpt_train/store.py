"""Read-only access to a frozen MPT store (Zarr v3, schema 1) without dask or smplx.

The trainer opens a store through `open_store` and reads whole mesh chunks with
`StoreReader.read_chunk`; the model takes its mesh topology and joint regressors from
`StoreReader.topology()`. Paths and attribute names come from `mpt_data.schema`.

Integrity: a frozen store carries `integrity.json` (written by `mpt-data freeze`), whose SHA-256 is the
store's fingerprint. At open the reader checks that the manifest hashes to the fingerprint and that the
metadata it reads (every array's shape, dtype, chunking and attributes, e.g. the vertices' scale_m, and the
group attributes) is what the manifest records. Every chunk it then returns is hashed (BLAKE2b-128 of the
decoded bytes) and compared with the manifest, so a flipped byte or a missing shard file (which zarr would
read as zeros) stops training with a StoreError naming the URL, array and chunk. A frozen store without a
manifest (frozen by an older mpt-data) is refused with a message to re-freeze it. A store opened with
allow_unfrozen has no manifest yet and is read unchecked (`verified` is False).

Remote stores: `open_store(url, storage_options=...)` reads any fsspec URL (s3:// needs the `s3` extra). The
loader reads a window of chunks with `read_chunks`, which requests every array of every chunk at once through
zarr's async API, so on object storage the round trips overlap. `cache_dir` adds a local read-through cache of
decoded chunks (`ChunkCache`), each entry checked against the same manifest digest as a fresh read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from mpt_data import schema
from mpt_data import integrity
from mpt_data.fileio import atomic_write
from mpt_data.integrity import StoreError
from mpt_data.remote import Location, keep_inherited


@dataclass(frozen=True)
class Cameras:
    """The store's virtual camera rig, C cameras.

    K: (C, 3, 3) intrinsics in image pixels; R: (C, 3, 3) world -> camera rotation;
    t: (C, 3) world -> camera translation in metres; size: (C, 2) image width, height.
    A world point X maps to the camera frame as R @ X + t.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    size: np.ndarray


def _open_group(location: Location) -> zarr.Group:
    """Open a Zarr group read-only from a local path or any fsspec URL (s3://, gs://, ...) with its storage
    options; a missing store, bucket or endpoint, or absent credentials, is one StoreError naming the URL."""
    return location.open_group()


class ChunkCache:
    """A local read-through cache of decoded chunks: `root/<fingerprint>/<array path>/<chunk>.npy`.

    Keyed by the store's fingerprint, so two stores never share entries and a changed store never reads stale
    ones. Entries are written atomically (temporary file + rename), so loader workers and ranks sharing the folder
    never see half a file; the reader checks every entry against the manifest's chunk digest before using it and
    replaces one that fails (counted in `evictions`). Counters are per process: hits, misses, evictions.
    """

    def __init__(self, root: str | Path, fingerprint: str | None) -> None:
        self.root = Path(root) / str(fingerprint)
        self.hits = self.misses = self.evictions = 0

    def _file(self, path: str, chunk: int) -> Path:
        return self.root / path / f"{chunk}.npy"

    def get(self, path: str, chunk: int) -> np.ndarray | None:
        """The cached chunk, or None when absent or unreadable (it is then read from the store again)."""
        try:
            values = np.load(self._file(path, chunk), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return values

    def put(self, path: str, chunk: int, values: np.ndarray) -> None:
        atomic_write(self._file(path, chunk), lambda f: np.save(f, np.ascontiguousarray(values), allow_pickle=False))


class StoreReader:
    """A read-only view of one store. Picklable: it re-opens the store by URL in each process.

    Attributes read once at open: fingerprint, num_meshes N, num_cameras C, chunk_size
    (meshes per chunk along axis 0, taken from the vertices array), split (N,) int8,
    joint_sets (names of meshes/joints/<set>), num_vertices V, num_heatmap_joints K.
    """

    def __init__(self, url_or_path: str, allow_unfrozen: bool = False,
                 storage_options: Mapping[str, Any] | None = None, cache_dir: str | None = None) -> None:
        self.url = str(url_or_path)
        self.allow_unfrozen = allow_unfrozen
        self.location = Location(self.url, dict(storage_options or {}))
        group = _open_group(self.location)
        attrs = dict(group.attrs)
        schema_number = attrs.get(schema.ATTR_SCHEMA)
        if schema_number != schema.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url}: store schema {schema_number!r} (attribute {schema.ATTR_SCHEMA!r}), "
                f"this trainer reads schema {schema.SCHEMA_VERSION}"
            )
        state = attrs.get(schema.ATTR_STATE)
        if state != schema.STATE_FROZEN and not allow_unfrozen:
            raise StoreError(
                f"{self.url}: store state is {state!r}, not {schema.STATE_FROZEN!r}. Run "
                f"`mpt-data freeze {self.url}` first, or pass allow_unfrozen (--allow-unfrozen) to "
                "train on a store whose content may still change"
            )
        self.state: str | None = state
        self.fingerprint: str | None = attrs.get(schema.ATTR_FINGERPRINT)
        if state == schema.STATE_FROZEN and not self.fingerprint:
            raise StoreError(f"{self.url}: store is frozen but has no {schema.ATTR_FINGERPRINT!r} attribute")
        self.attrs: dict[str, Any] = attrs
        self._group = group
        # Per array, the concatenated 16-byte chunk digests from integrity.json (compact, cheap to pickle).
        self._digests: dict[str, bytes] = {}
        self.verified = state == schema.STATE_FROZEN
        if self.verified:
            self._load_manifest(group)
        if cache_dir is not None and not self.verified:
            raise StoreError(f"{self.url}: a read cache (--cache-dir) needs a frozen store: its chunk checksums "
                             "are what a cached chunk is checked against")
        self.cache = ChunkCache(cache_dir, self.fingerprint) if cache_dir is not None else None

        vertices = self._array(schema.VERTICES)
        if vertices.ndim != 3 or vertices.shape[2] != 3:
            raise StoreError(f"{self.url}: {schema.VERTICES} has shape {vertices.shape}, expected (N, V, 3)")
        self.num_meshes = int(vertices.shape[0])
        self.num_vertices = int(vertices.shape[1])
        self.chunk_size = int(vertices.chunks[0])
        scale = vertices.attrs.get(schema.ATTR_SCALE_M)
        if np.issubdtype(vertices.dtype, np.integer):
            if scale is None:
                raise StoreError(f"{self.url}: integer {schema.VERTICES} without a {schema.ATTR_SCALE_M!r} attribute")
            self.vertex_scale_m = float(scale)
        else:
            self.vertex_scale_m = 1.0 if scale is None else float(scale)

        joints2d = self._array(schema.JOINTS2D)
        if joints2d.ndim != 4 or joints2d.shape[0] != self.num_meshes or joints2d.shape[3] != 2:
            raise StoreError(
                f"{self.url}: {schema.JOINTS2D} has shape {joints2d.shape}, expected ({self.num_meshes}, C, K, 2)"
            )
        self.num_cameras = int(joints2d.shape[1])
        self.num_heatmap_joints = int(joints2d.shape[2])
        visible = self._array(schema.VISIBLE)
        if tuple(visible.shape) != tuple(joints2d.shape[:3]):
            raise StoreError(f"{self.url}: {schema.VISIBLE} has shape {visible.shape}, expected {joints2d.shape[:3]}")

        split = self._array(schema.SPLIT)[:]
        if split.shape != (self.num_meshes,):
            raise StoreError(f"{self.url}: {schema.SPLIT} has shape {split.shape}, expected ({self.num_meshes},)")
        for i in range(self.num_chunks):
            start, stop = self.chunk_range(i)
            self._check(schema.SPLIT, split[start:stop], i, f"meshes {start}..{stop - 1}")
        self.split = np.asarray(split, dtype=np.int8)
        joints_group = self.group[schema.JOINTS_GROUP]
        self.joint_sets: tuple[str, ...] = tuple(sorted(joints_group.array_keys()))
        for name in self.joint_sets:
            shape = joints_group[name].shape
            if len(shape) != 3 or shape[0] != self.num_meshes or shape[2] != 3:
                raise StoreError(f"{self.url}: {schema.JOINTS_GROUP}/{name} has shape {shape}, expected (N, J, 3)")

    def _load_manifest(self, group: zarr.Group) -> None:
        """Check integrity.json against the fingerprint and the metadata as read; keep its chunk digests."""
        name = schema.INTEGRITY_MANIFEST
        try:
            blob = integrity.read_integrity_manifest(group)
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot read {name}: {type(exc).__name__}: {exc}") from exc
        if blob is None:
            raise StoreError(
                f"{self.url}: frozen store without {name}: it was frozen by an older mpt-data, whose fingerprint "
                f"covered neither the metadata nor the data as read. Re-freeze it with `mpt-data freeze {self.url}` "
                "(re-hashes every chunk against the build records and writes the manifest; the fingerprint "
                "changes) or rebuild it"
            )
        if integrity.manifest_fingerprint(blob) != self.fingerprint:
            raise StoreError(
                f"{self.url}: {name} does not hash to the store's fingerprint {self.fingerprint}: the store changed "
                f"after it was frozen; run `mpt-data verify {self.url}` and rebuild or restore it"
            )
        manifest = integrity.parse_manifest(blob, self.url)
        problems = integrity.metadata_differences(manifest, integrity.store_metadata(group))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreError(
                f"{self.url}: metadata differs from {name}, which the fingerprint covers: {problems[0]}{more}; "
                f"run `mpt-data verify {self.url}` and rebuild or restore the store"
            )
        self._digests = {a: bytes.fromhex("".join(sums)) for a, sums in manifest["checksums"].items()}

    def _check(self, path: str, values: np.ndarray, chunk: int, what: str) -> None:
        """Raise StoreError unless `values` (decoded, as stored) hash to the manifest's digest of the chunk."""
        if not self.verified:
            return
        want = self._digests.get(path)
        if want is None:
            raise StoreError(f"{self.url}: {path} has no checksums in {schema.INTEGRITY_MANIFEST}")
        if integrity.chunk_digest(values) != want[16 * chunk : 16 * chunk + 16]:
            raise StoreError(
                f"{self.url}: {path} chunk {chunk} ({what}) does not match its checksum in "
                f"{schema.INTEGRITY_MANIFEST}: the store is corrupted or a shard file is missing; run "
                f"`mpt-data verify {self.url}` and rebuild or restore the store"
            )

    def _read(self, path: str, region: slice, chunk: int, what: str) -> np.ndarray:
        """`path`[region] as stored, checked against chunk `chunk`'s digest; read errors name the chunk too."""
        return self._fetch([(path, region, chunk, what)])[0]

    def _fetch(self, requests: list[tuple[str, slice, int, str]]) -> list[np.ndarray]:
        """Each (path, region, chunk, what) as stored, checked against its chunk's digest.

        Chunks found in the read cache (and matching their digest) come from it; all others are requested at once
        (zarr's async reads over one event loop: on object storage the requests overlap instead of paying one
        round trip each), checked, and written to the cache. A cached chunk that fails its check is read again
        from the store and replaced."""
        from zarr.core.sync import sync

        out: list[np.ndarray | None] = [None] * len(requests)
        if self.cache is not None:
            for n, (path, _, chunk, _) in enumerate(requests):
                values = self.cache.get(path, chunk)
                if values is not None and (not self.verified or self._matches(path, values, chunk)):
                    out[n] = values
                elif values is not None:
                    self.cache.evictions += 1
        missing = [n for n, v in enumerate(out) if v is None]
        if missing:
            arrays = {requests[n][0]: self._array(requests[n][0]).async_array for n in missing}

            async def gather():
                import asyncio

                return await asyncio.gather(*(arrays[requests[n][0]].getitem(requests[n][1]) for n in missing),
                                            return_exceptions=True)

            try:
                got = sync(gather())
            except StoreError:
                raise
            except Exception as exc:
                raise self.location.error(exc, "read chunks") from exc
            for n, values in zip(missing, got):
                path, _, chunk, what = requests[n]
                if isinstance(values, BaseException):  # a damaged shard can fail to decode: name where
                    raise StoreError(f"{self.url}: {path} chunk {chunk} ({what}) cannot be read: "
                                     f"{type(values).__name__}: {values}; run `mpt-data verify {self.url}`") from values
                values = np.asarray(values)
                self._check(path, values, chunk, what)
                if self.cache is not None:
                    self.cache.put(path, chunk, values)
                out[n] = values
        return out  # type: ignore[return-value]

    def _matches(self, path: str, values: np.ndarray, chunk: int) -> bool:
        want = self._digests.get(path)
        return want is not None and integrity.chunk_digest(values) == want[16 * chunk : 16 * chunk + 16]

    # -- pickling: zarr handles (and fsspec sessions) are re-opened in each worker process.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zarr_group"] = None
        state.pop("cameras", None)
        return state

    @property
    def _group(self) -> zarr.Group | None:
        """The open zarr group of this process (None: open it on next use)."""
        return self.__dict__.get("_zarr_group") if self.__dict__.get("_group_pid") == os.getpid() else None

    @_group.setter
    def _group(self, value: zarr.Group | None) -> None:
        old = self.__dict__.get("_zarr_group")
        if old is not None and self.__dict__.get("_group_pid") != os.getpid():
            keep_inherited(old)  # a forked worker's copy of the parent's client: see keep_inherited
        self.__dict__["_zarr_group"], self.__dict__["_group_pid"] = value, os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = _open_group(self.location)
        return self._group

    def _array(self, path: str) -> zarr.Array:
        try:
            node = self.group[path]
        except KeyError as exc:
            raise StoreError(f"{self.url}: missing array {path!r}") from exc
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.url}: {path!r} is a group, expected an array")
        return node

    # -- layout
    @property
    def num_chunks(self) -> int:
        """Number of mesh chunks along axis 0; the last one may hold fewer than chunk_size meshes."""
        return -(-self.num_meshes // self.chunk_size)

    def chunk_range(self, i: int) -> tuple[int, int]:
        """[start, stop) mesh indices of chunk i."""
        if not 0 <= i < self.num_chunks:
            raise IndexError(f"{self.url}: chunk {i} out of range 0..{self.num_chunks - 1}")
        return i * self.chunk_size, min(self.num_meshes, (i + 1) * self.chunk_size)

    def split_counts(self, split_value: int) -> np.ndarray:
        """(num_chunks,) int64: meshes of the given split value in each chunk."""
        hits = (self.split == split_value).astype(np.int64)
        padded = np.zeros(self.num_chunks * self.chunk_size, dtype=np.int64)
        padded[: self.num_meshes] = hits
        return padded.reshape(self.num_chunks, self.chunk_size).sum(axis=1)

    def split_sizes(self) -> dict[str, int]:
        """{split name: number of meshes}."""
        return {name: int(np.sum(self.split == value)) for name, value in schema.SPLITS.items()}

    # -- content
    @cached_property
    def cameras(self) -> Cameras:
        """The camera rig (small; read once)."""
        whole = slice(None)
        return Cameras(
            K=np.asarray(self._read(schema.CAMERA_K, whole, 0, "whole array"), dtype=np.float32),
            R=np.asarray(self._read(schema.CAMERA_R, whole, 0, "whole array"), dtype=np.float32),
            t=np.asarray(self._read(schema.CAMERA_T, whole, 0, "whole array"), dtype=np.float32),
            size=np.asarray(self._read(schema.CAMERA_SIZE, whole, 0, "whole array"), dtype=np.int32),
        )

    def topology(self) -> dict[str, np.ndarray]:
        """Every array under `topology/`, keyed by its path relative to `topology/`.

        Expected keys (see `mpt_data.schema`): "template" (V, 3) float32 metres, "faces"
        (F, 3), for each coarse level l >= 1 "level<l>/vertex_ids", "level<l>/faces",
        "level<l>/up_index", "level<l>/up_weight", and "regressors/<set>" (J, V) per joint set.
        """
        try:
            root = self.group[schema.TOPOLOGY]
        except KeyError as exc:
            raise StoreError(f"{self.url}: missing group {schema.TOPOLOGY!r}") from exc
        out: dict[str, np.ndarray] = {}
        for path, node in root.members(max_depth=None):
            if isinstance(node, zarr.Array):
                out[path] = self._read(f"{schema.TOPOLOGY}/{path}", slice(None), 0, "whole array")
        for key in ("template", "faces"):
            if key not in out:
                raise StoreError(f"{self.url}: missing array {schema.TOPOLOGY}/{key}")
        return out

    def regressors(self) -> dict[str, np.ndarray]:
        """{joint set: (J, V) float32 regressor} from `topology/regressors/`."""
        prefix = "regressors/"
        return {
            k[len(prefix):]: v.astype(np.float32) for k, v in self.topology().items() if k.startswith(prefix)
        }

    def read_chunk(
        self,
        i: int,
        joint_sets: tuple[str, ...] | None = None,
        vertices: bool = True,
    ) -> dict[str, np.ndarray]:
        """Read mesh chunk i (n <= chunk_size meshes) as numpy arrays, each checked against its checksum.
        The same as `read_chunks([i], ...)[0]`; see there for the arrays returned."""
        return self.read_chunks([i], joint_sets=joint_sets, vertices=vertices)[0]

    def read_chunks(
        self,
        chunks: list[int] | tuple[int, ...],
        joint_sets: tuple[str, ...] | None = None,
        vertices: bool = True,
    ) -> list[dict[str, np.ndarray]]:
        """Read several mesh chunks with all their arrays requested at once, each checked against its checksum.

        Returns "mesh" (n,) int64 mesh indices; "vertices" (n, V, 3) float32 metres,
        root-centred body frame (dequantised with the array's scale_m; omitted when
        vertices=False); "joints/<set>" (n, J, 3) float32 metres, same frame, for each
        requested set (default: all); "joints2d" (n, C, K, 2) float32 crop pixels;
        "visible" (n, C, K) bool; "split" (n,) int8.
        """
        sets = self.joint_sets if joint_sets is None else joint_sets
        for name in sets:
            if name not in self.joint_sets:
                raise StoreError(f"{self.url}: no joint set {name!r}; the store has {list(self.joint_sets)}")
        paths = ([schema.VERTICES] if vertices else []) + [f"{schema.JOINTS_GROUP}/{name}" for name in sets] \
            + [schema.JOINTS2D, schema.VISIBLE]
        requests = []
        for i in chunks:
            start, stop = self.chunk_range(i)
            requests += [(p, slice(start, stop), i, f"meshes {start}..{stop - 1}") for p in paths]
        values = iter(self._fetch(requests))
        result = []
        for i in chunks:
            start, stop = self.chunk_range(i)
            got = dict(zip(paths, (next(values) for _ in paths)))
            out: dict[str, np.ndarray] = {"mesh": np.arange(start, stop, dtype=np.int64)}
            if vertices:
                out["vertices"] = np.multiply(got[schema.VERTICES], np.float32(self.vertex_scale_m), dtype=np.float32)
            for name in sets:
                out[f"joints/{name}"] = np.asarray(got[f"{schema.JOINTS_GROUP}/{name}"], dtype=np.float32)
            out["joints2d"] = np.asarray(got[schema.JOINTS2D], dtype=np.float32)
            out["visible"] = np.asarray(got[schema.VISIBLE], dtype=bool)
            out["split"] = self.split[start:stop].copy()
            result.append(out)
        return result

    def describe(self) -> str:
        """One line: URL, counts, chunking and fingerprint (for logs)."""
        return (
            f"{self.url}: {self.num_meshes} meshes x {self.num_cameras} cameras, V={self.num_vertices}, "
            f"K={self.num_heatmap_joints}, chunk={self.chunk_size}, sets={list(self.joint_sets)}, "
            f"state={self.state}, fingerprint={self.fingerprint}, "
            f"{'reads checked against ' + schema.INTEGRITY_MANIFEST if self.verified else 'reads unchecked'}"
        )


def open_store(url_or_path: str, allow_unfrozen: bool = False, storage_options: Mapping[str, Any] | None = None,
               cache_dir: str | None = None) -> StoreReader:
    """Open a store read-only from a local path or an fsspec URL (with its fsspec `storage_options`), optionally
    reading through a local chunk cache in `cache_dir` (see `ChunkCache`).

    Refuses (StoreError) a store of another schema number, and a store whose state is
    not "frozen" unless allow_unfrozen: training on a store that may still change would
    make runs irreproducible and its fingerprint meaningless.
    """
    return StoreReader(url_or_path, allow_unfrozen=allow_unfrozen, storage_options=storage_options,
                       cache_dir=cache_dir)
