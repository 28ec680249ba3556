"""AMASS motion files: find them, read them, validate every field.

AMASS ships two layouts:

* SMPL+H (``<subset>/<subject>/<name>_poses.npz``): ``poses`` (T, 156) axis-angle,
  ``trans`` (T, 3), ``betas`` (16,), ``gender``, ``mocap_framerate``; each subject folder
  also holds a ``shape.npz`` that is not a motion.
* SMPL-X (``<subset>/<subject>/<name>_stageii.npz``): ``poses`` (T, 165) with jaw and eye
  rotations, ``mocap_frame_rate`` (other spelling), ``surface_model_type``; the shape
  files are ``*_stagei.npz``.

Every motion is returned in the SMPL+H pose layout (52 joints, 156 values): SMPL-X poses
drop their jaw and eye columns through ``conventions.SMPLX_TO_SMPLH_POSE_COLUMNS``.

Paths are reported relative to the AMASS root; the first folder below the root is the
*subset* (the AMASS sub-dataset, e.g. ``CMU``), the next one the *subject*.

Files are read with ``allow_pickle=False``: a motion file is data, and a key that holds
pickled Python objects is refused rather than executed.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mpt_data import conventions as cv

GENDERS: tuple[str, ...] = ("male", "female", "neutral")
SMPLH_SUFFIX = "_poses.npz"
SMPLX_SUFFIX = "_stageii.npz"
FPS_KEYS: tuple[str, ...] = ("mocap_framerate", "mocap_frame_rate")

# Plausibility limits. A file outside them is skipped with its reason, so one file can neither exhaust a
# worker's memory nor abort the write phase (e.g. a vertex beyond the int16 store range).
MAX_FIELD_BYTES = 512 * 2**20  # poses/trans, as declared in the .npy header: ~430k frames of float64 poses
MAX_SMALL_FIELD_BYTES = 64 * 2**10  # betas, gender, frame rate, surface_model_type
MAX_ROTATION_RAD = 8 * math.pi  # per joint rotation vector; fits stay within a turn or two
MAX_ABS_TRANS_M = 1000.0  # capture volumes are tens of metres
MAX_ABS_BETA = 10.0  # shape coefficients are in standard deviations of the body-shape space
MAX_BETAS = 1000
FPS_RANGE: tuple[float, float] = (1.0, 2000.0)  # AMASS captures run at 60-250 fps


class MotionError(ValueError):
    """A motion file that cannot be used. ``str(err)`` is a short reason for the table
    (e.g. ``"missing key 'poses'"``, ``"NaN in poses"``, ``"zero frames"``)."""


@dataclass(frozen=True)
class Motion:
    """One validated AMASS sequence, in the SMPL+H pose layout.

    path: file path relative to the AMASS root, with forward slashes.
    subset: first folder below the root (the AMASS sub-dataset name).
    subject: second folder below the root ("" when the file sits directly in the subset).
    layout: ``"smplh"`` or ``"smplx"``: the layout of the source file.
    poses: (T, 156) float32 axis-angle, radians, SMPL+H joint order (conventions.SMPLH_JOINTS).
    trans: (T, 3) float32 root translation, metres, AMASS world (z up). Not used by the
        meshes (they are root-centred) but kept for provenance.
    betas: (B,) float32 shape coefficients as stored in the file (B is often 16).
    gender: ``"male"``, ``"female"`` or ``"neutral"``.
    fps: frames per second (the file's value, or the subset's override).
    """

    path: str
    subset: str
    subject: str
    layout: str
    poses: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    gender: str
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])


def is_motion_file(path: Path) -> bool:
    """True for AMASS motion files (``*_poses.npz``, ``*_stageii.npz``); false for
    ``shape.npz``, ``*_stagei.npz`` and anything else."""
    return path.name.endswith(SMPLH_SUFFIX) or path.name.endswith(SMPLX_SUFFIX)


def find_files(root: str | Path, wanted: Callable[[Path], bool], what: str = "AMASS root") -> list[Path]:
    """Every entry under ``root`` that ``wanted`` accepts by name, sorted by its path relative to ``root``.

    Symlinked folders and files are followed (AMASS subsets are often linked in from where they
    were unpacked), each real folder once, so a link cycle ends. Paths keep the names under
    ``root`` (the link's name, not its target's). Hidden files and folders (names starting with
    ".") are ignored. Entries that are not regular files but carry a wanted name (folders,
    dangling or looping links, FIFOs) are included, for the reader to reject with a reason.
    Raises ``FileNotFoundError`` naming ``what`` if ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {root} is not a directory")
    found = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # Every entry with a wanted name is returned, files or not (a folder, a dangling or looping
        # link, a FIFO): the reader gives each its reason, so none vanishes from the table unexplained.
        for name in list(files) + dirs:
            p = Path(folder) / name
            if not name.startswith(".") and wanted(p):
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def find_motion_files(root: str | Path) -> list[Path]:
    """All AMASS motion files under ``root`` (:func:`is_motion_file`), as :func:`find_files` lists them."""
    return find_files(root, is_motion_file)


def subset_and_subject(rel_path: str) -> tuple[str, str]:
    """(subset, subject) of a path relative to the AMASS root (see the module docstring)."""
    parts = Path(rel_path).parts
    subset = parts[0] if len(parts) > 1 else ""
    subject = parts[1] if len(parts) > 2 else ""
    return subset, subject


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def decode_text(value: np.ndarray, key: str) -> str:
    """A string stored as str, bytes, or a 0-d / 1-element array of either, stripped and lower-cased."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise MotionError(f"{key} is not a single string")
    item = arr.reshape(()).item()
    if isinstance(item, bytes):
        try:
            item = item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MotionError(f"{key} is not valid text") from e
    if not isinstance(item, str):
        raise MotionError(f"{key} is not a string")
    return item.strip().lower()


def numeric_field(arr: np.ndarray, key: str) -> np.ndarray:
    """A numeric field as float64 (wide enough that a finite source value stays finite), no NaN or inf;
    MotionError naming ``key`` otherwise."""
    if arr.dtype.kind not in "fiu":
        raise MotionError(f"{key} has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise MotionError(f"NaN in {key}")
    if not np.isfinite(arr).all():
        raise MotionError(f"inf in {key}")
    return arr


def _size_text(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for binary reading; MotionError naming what it is otherwise.

    Opened non-blocking and checked on the open descriptor: opening a FIFO for reading would wait for
    a writer forever, and a check before the open could be raced. O_NONBLOCK changes nothing for
    reads of a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            raise MotionError(f"dangling symbolic link (to {os.readlink(path)}, which does not exist)") from None
        raise MotionError("unreadable file: no such file (gone since the folder was listed)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MotionError("symbolic link loop (the link resolves back to itself)") from None
        raise MotionError(f"unreadable file: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise MotionError(f"not a regular file ({kind})")
    return os.fdopen(fd, "rb")


_NEEDED_KEYS = ("poses", "trans", "betas", "gender", "surface_model_type") + FPS_KEYS
_FIELD_BUDGET = {"poses": MAX_FIELD_BYTES, "trans": MAX_FIELD_BYTES}
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error)


def _read_member(zf: zipfile.ZipFile, member: str, key: str, budget: int) -> np.ndarray:
    """One .npy member, its declared size checked against ``budget`` bytes before any data is read.

    The zip stream decompresses as it is read and exactly the declared bytes are read, so neither a
    header declaring a huge shape nor a small deflate bomb can make this allocate more than the budget.
    """
    with zf.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise MotionError(f"key {key!r} has unsupported .npy format version {version}")
        except ValueError as e:
            raise MotionError(f"key {key!r} is not a valid .npy array ({e})") from e
        if dtype.hasobject:
            raise MotionError(f"key {key!r} holds pickled Python objects (refused: a motion file is data)")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > budget:
            raise MotionError(f"{key} declares shape {tuple(shape)} of {dtype} = {_size_text(nbytes)}, over the "
                              f"{_size_text(budget)} limit per field (a damaged header or a decompression bomb)")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise MotionError(f"truncated or corrupt zip: key {key!r} ends after {len(data)} of {nbytes} bytes")
        f.read(1)  # reach the member's end, where zipfile checks its CRC
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def read_npz_fields(path: str | Path, keys: tuple[str, ...], budgets: Mapping[str, int]
                    ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({key: array} of the ``keys`` present in the .npz at ``path``, the names of all its keys).

    Only ``keys`` are read (others, e.g. marker tables, are never touched); each key's declared size
    is checked against ``budgets.get(key, MAX_SMALL_FIELD_BYTES)`` before its data is read, a key
    holding Python objects is refused unread, and every member is read to its end, where zipfile
    checks the CRC. MotionError with a short reason for anything unreadable or not a regular file.
    """
    with open_regular(path) as f:
        magic = f.read(6)
        f.seek(0)
        if not magic:
            raise MotionError("empty file (0 bytes)")
        if magic.startswith(b"\x93NUMPY"):
            raise MotionError("not a zip/npz file (a single .npy array)")
        if not magic.startswith(b"PK"):
            kind = "pickled Python data" if magic[:1] == b"\x80" else "a text or other file"
            raise MotionError(f"not a zip archive ({kind}, not an npz)")
        try:
            with zipfile.ZipFile(f) as zf:
                names = set(zf.namelist())
                out = {}
                for key in keys:
                    member = f"{key}.npy" if f"{key}.npy" in names else key if key in names else None
                    if member is not None:
                        out[key] = _read_member(zf, member, key, budgets.get(key, MAX_SMALL_FIELD_BYTES))
                return out, {n.removesuffix(".npy") for n in names}
        except _ZIP_ERRORS as e:
            raise MotionError(f"truncated or corrupt zip: {e}") from e
        except (NotImplementedError, RuntimeError) as e:  # compression method unknown to zipfile, encryption
            raise MotionError(f"unsupported zip member: {e}") from e
        except OSError as e:
            raise MotionError(f"unreadable file: {e.strerror or e}") from e


def check_fps(fps: float, what: str) -> float:
    """``fps`` if it is a plausible frame rate (finite, > 0, within FPS_RANGE); MotionError naming ``what``."""
    if not np.isfinite(fps):
        raise MotionError(f"{what} is not finite ({fps})")
    if fps == 0:
        raise MotionError(f"{what} missing or zero (the file says 0)")
    if fps < 0:
        raise MotionError(f"{what} is negative ({fps:g} fps)")
    lo, hi = FPS_RANGE
    if not lo <= fps <= hi:
        raise MotionError(f"{what} is {fps:g} fps, outside the plausible {lo:g}..{hi:g}")
    return fps


def _worst(values: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """(largest value, its index) of a non-empty array."""
    at = np.unravel_index(int(np.argmax(values)), values.shape)
    return float(values[at]), tuple(int(i) for i in at)


def read_motion(
    path: str | Path,
    root: str | Path,
    fps_overrides: Mapping[str, float] | None = None,
) -> Motion:
    """Read and validate one AMASS motion file.

    path: the file; root: the AMASS root it lies under (for the relative path, subset and
    subject). fps_overrides: frames per second by subset name, replacing the file's value
    (some subsets carry wrong rates in their files); with an override the file's rate key
    may be absent.

    Checks: a regular file (not a folder, FIFO, dangling or looping link) that is a readable
    zip/npz; every field's declared size within its budget before it is read
    (``MAX_FIELD_BYTES``); keys ``poses``, ``trans``, ``betas``, ``gender`` and a frame-rate key
    present; poses (T, 156) or (T, 165) consistent with ``surface_model_type`` when given;
    trans (T, 3); betas (B,) or (1, B) with 1 <= B <= ``MAX_BETAS``; T > 0; no NaN or inf;
    rotation vectors up to ``MAX_ROTATION_RAD``, translations up to ``MAX_ABS_TRANS_M``, betas
    up to ``MAX_ABS_BETA``; gender one of male/female/neutral; frame rate in ``FPS_RANGE``.
    Raises ``MotionError`` with a short reason on the first failure.
    """
    path = Path(path)
    # Lexical, not resolved: a symlinked file or folder keeps the subset and subject it has under root.
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise MotionError(f"not under the AMASS root {root}") from None
    subset, subject = subset_and_subject(rel)
    data, _ = read_npz_fields(path, _NEEDED_KEYS, _FIELD_BUDGET)

    for key in ("poses", "trans", "betas", "gender"):
        if key not in data:
            raise MotionError(f"missing key {key!r}")

    poses = numeric_field(data["poses"], "poses")
    if poses.ndim != 2 or poses.shape[1] not in (cv.AMASS_SMPLH_POSE_DIM, cv.AMASS_SMPLX_POSE_DIM):
        raise MotionError(
            f"poses has shape {poses.shape}, expected (T, {cv.AMASS_SMPLH_POSE_DIM}) "
            f"or (T, {cv.AMASS_SMPLX_POSE_DIM})"
        )
    layout = "smplx" if poses.shape[1] == cv.AMASS_SMPLX_POSE_DIM else "smplh"
    if "surface_model_type" in data:
        declared = decode_text(data["surface_model_type"], "surface_model_type")
        if declared not in ("smplh", "smplx"):
            raise MotionError(f"unsupported surface_model_type {declared!r}")
        if declared != layout:
            raise MotionError(f"surface_model_type {declared!r} but poses has {poses.shape[1]} columns")
    num_frames = poses.shape[0]
    if num_frames == 0:
        raise MotionError("zero frames")
    angle, (frame, joint) = _worst(np.linalg.norm(poses.reshape(num_frames, -1, 3), axis=2))
    if angle > MAX_ROTATION_RAD:
        raise MotionError(f"poses hold a {angle:.3g} rad rotation (frame {frame}, joint {joint}), beyond the "
                          f"{MAX_ROTATION_RAD:.3g} rad of a plausible axis-angle pose")

    trans = numeric_field(data["trans"], "trans")
    if trans.shape != (num_frames, 3):
        raise MotionError(f"trans has shape {trans.shape}, expected ({num_frames}, 3)")
    far, (frame, _) = _worst(np.abs(trans))
    if far > MAX_ABS_TRANS_M:
        raise MotionError(f"trans reaches {far:.3g} m (frame {frame}), beyond ±{MAX_ABS_TRANS_M:g} m")

    betas = numeric_field(data["betas"], "betas")
    if betas.ndim == 2 and betas.shape[0] == 1:
        betas = betas[0]
    if betas.ndim != 1 or not 1 <= betas.shape[0] <= MAX_BETAS:
        raise MotionError(f"betas has shape {data['betas'].shape}, expected (B,) with 1 <= B <= {MAX_BETAS}")
    big, (k,) = _worst(np.abs(betas))
    if big > MAX_ABS_BETA:
        raise MotionError(f"betas[{k}] is {betas[k]:.3g}, beyond ±{MAX_ABS_BETA:g} (shape coefficients are in "
                          f"standard deviations)")

    gender = decode_text(data["gender"], "gender")
    if gender not in GENDERS:
        raise MotionError(f"unknown gender {gender!r}")

    if fps_overrides is not None and subset in fps_overrides:
        fps = check_fps(float(fps_overrides[subset]), f"fps override for {subset!r}")
    else:
        key = next((k for k in FPS_KEYS if k in data), None)
        if key is None:
            raise MotionError("mocap_framerate missing (no mocap_framerate or mocap_frame_rate key)")
        fps_arr = data[key]
        if fps_arr.dtype.kind not in "fiu" or fps_arr.size != 1:
            raise MotionError(f"{key} is not a number")
        fps = check_fps(float(fps_arr.reshape(())), key)

    if layout == "smplx":
        poses = poses[:, list(cv.SMPLX_TO_SMPLH_POSE_COLUMNS)]
    return Motion(
        path=rel,
        subset=subset,
        subject=subject,
        layout=layout,
        poses=np.ascontiguousarray(poses, dtype=np.float32),
        trans=np.ascontiguousarray(trans, dtype=np.float32),
        betas=np.ascontiguousarray(betas, dtype=np.float32),
        gender=gender,
        fps=fps,
    )
