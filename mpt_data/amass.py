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

import hashlib
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data import conventions as cv

GENDERS: tuple[str, ...] = ("male", "female", "neutral")
SMPLH_SUFFIX = "_poses.npz"
SMPLX_SUFFIX = "_stageii.npz"
FPS_KEYS: tuple[str, ...] = ("mocap_framerate", "mocap_frame_rate")


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


def find_motion_files(root: str | Path) -> list[Path]:
    """All motion files under ``root``, sorted by their path relative to ``root``.

    Symlinked folders and files are followed (AMASS subsets are often linked in from where they
    were unpacked), each real folder once, so a link cycle ends. Paths keep the names under
    ``root`` (the link's name, not its target's). Hidden files and folders (names starting with
    ".") are ignored. Raises ``FileNotFoundError`` if ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AMASS root {root} is not a directory")
    found = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            p = Path(folder) / name
            if not name.startswith(".") and is_motion_file(p) and p.is_file():
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def subset_and_subject(rel_path: str) -> tuple[str, str]:
    """(subset, subject) of a path relative to the AMASS root (see the module docstring)."""
    parts = Path(rel_path).parts
    subset = parts[0] if len(parts) > 1 else ""
    subject = parts[1] if len(parts) > 2 else ""
    return subset, subject


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _decode_text(value: np.ndarray, key: str) -> str:
    """A string stored as str, bytes, or a 0-d / 1-element array of either."""
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


def _numeric(data: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    arr = data[key]
    if arr.dtype.kind not in "fiu":
        raise MotionError(f"{key} has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if np.isnan(arr).any():
        raise MotionError(f"NaN in {key}")
    if not np.isfinite(arr).all():
        raise MotionError(f"inf in {key}")
    return arr


_NEEDED_KEYS = ("poses", "trans", "betas", "gender", "surface_model_type") + FPS_KEYS


def _load_fields(path: Path) -> dict[str, np.ndarray]:
    """The keys read_motion uses (others, e.g. marker tables, are never touched), as
    arrays; MotionError for anything unreadable."""
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise MotionError("not a zip/npz file (pickled data)") from e
        raise MotionError(f"unreadable npz: {e}") from e
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise MotionError(f"truncated or corrupt zip: {e}") from e
    except OSError as e:
        raise MotionError(f"unreadable file: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise MotionError("not a zip/npz file (a single .npy array)")
    with npz:
        out = {}
        for key in _NEEDED_KEYS:
            if key not in npz.files:
                continue
            try:
                out[key] = npz[key]
            except ValueError as e:
                if "pickle" in str(e).lower():
                    raise MotionError(f"key {key!r} holds pickled objects") from e
                raise MotionError(f"key {key!r} unreadable: {e}") from e
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
                raise MotionError(f"truncated or corrupt zip: {e}") from e
        return out


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

    Checks: a readable zip/npz; keys ``poses``, ``trans``, ``betas``, ``gender`` and a
    frame-rate key present; poses (T, 156) or (T, 165) consistent with
    ``surface_model_type`` when given; trans (T, 3); betas (B,) or (1, B) with B >= 1;
    T > 0; no NaN or inf; gender one of male/female/neutral; frame rate finite and > 0.
    Raises ``MotionError`` with a short reason on the first failure.
    """
    path = Path(path)
    # Lexical, not resolved: a symlinked file or folder keeps the subset and subject it has under root.
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise MotionError(f"not under the AMASS root {root}") from None
    subset, subject = subset_and_subject(rel)
    data = _load_fields(path)

    for key in ("poses", "trans", "betas", "gender"):
        if key not in data:
            raise MotionError(f"missing key {key!r}")

    poses = _numeric(data, "poses")
    if poses.ndim != 2 or poses.shape[1] not in (cv.AMASS_SMPLH_POSE_DIM, cv.AMASS_SMPLX_POSE_DIM):
        raise MotionError(
            f"poses has shape {poses.shape}, expected (T, {cv.AMASS_SMPLH_POSE_DIM}) "
            f"or (T, {cv.AMASS_SMPLX_POSE_DIM})"
        )
    layout = "smplx" if poses.shape[1] == cv.AMASS_SMPLX_POSE_DIM else "smplh"
    if "surface_model_type" in data:
        declared = _decode_text(data["surface_model_type"], "surface_model_type")
        if declared not in ("smplh", "smplx"):
            raise MotionError(f"unsupported surface_model_type {declared!r}")
        if declared != layout:
            raise MotionError(f"surface_model_type {declared!r} but poses has {poses.shape[1]} columns")
    num_frames = poses.shape[0]
    if num_frames == 0:
        raise MotionError("zero frames")

    trans = _numeric(data, "trans")
    if trans.shape != (num_frames, 3):
        raise MotionError(f"trans has shape {trans.shape}, expected ({num_frames}, 3)")

    betas = _numeric(data, "betas")
    if betas.ndim == 2 and betas.shape[0] == 1:
        betas = betas[0]
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise MotionError(f"betas has shape {data['betas'].shape}, expected (B,)")

    gender = _decode_text(data["gender"], "gender")
    if gender not in GENDERS:
        raise MotionError(f"unknown gender {gender!r}")

    if fps_overrides is not None and subset in fps_overrides:
        fps = float(fps_overrides[subset])
        if not (np.isfinite(fps) and fps > 0):
            raise MotionError(f"fps override for {subset!r} is {fps}")
    else:
        key = next((k for k in FPS_KEYS if k in data), None)
        if key is None:
            raise MotionError("mocap_framerate missing or zero")
        fps_arr = data[key]
        if fps_arr.dtype.kind not in "fiu" or fps_arr.size != 1:
            raise MotionError(f"{key} is not a number")
        fps = float(fps_arr.reshape(()))
        if not np.isfinite(fps) or fps <= 0:
            raise MotionError("mocap_framerate missing or zero")

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
