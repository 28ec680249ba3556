"""MANO parameter files: a folder of `.npz` files, one hand sequence each, read and validated for hand stores.

A recipe with `sources.kind: mano_params` (and `body_model.type: mano`) builds its meshes from these files
instead of AMASS motions. Every `*.npz` under the root is one (`find_param_files`); as for AMASS, the first
folder below the root is the *subset* (for `sources.include` / `exclude`, `fps_overrides` and the split of
subsets) and the next one the *subject*.

Keys (any other key, `trans` included, is never read: the meshes are root-centred at the wrist):

* `pose` (T, 48) float, required: MANO axis-angle, radians: the global (wrist) orientation first, then the 15
  finger joints x 3 in MANO's joint order (`conventions.MANO_JOINTS`); T >= 1.
* `betas` (B,) or (1, B) float, required: MANO shape coefficients, 1 <= B <= `amass.MAX_BETAS` (the builder
  truncates or zero-pads them to the model's count; one shape per file, so (T, B) with T > 1 is refused).
* `side` text, optional: `right` (the default) or `left` (parameters of MANO_LEFT).
* `fps` number, optional: frames per second (default `DEFAULT_FPS`); a subset's `fps_overrides` entry replaces it.
* `flat_hand_mean` bool, optional: True (the default, AMASS's convention) when the finger values are relative
  to the flat hand; False when they are relative to the model's `hands_mean` (MANO's own fits, e.g. FreiHAND's).

The record (`HandParams`) carries what the plan and the builder use of an AMASS `Motion` (`poses`, `betas`,
`fps`, `gender` = "", `num_frames`), with `poses` already the pose the right-hand model is posed with, relative
to the flat hand: a left hand is mirrored into a right one with `hand.mirror_axis_angle` on all 16 rotations
(as the AMASS path mirrors left hands), and a `flat_hand_mean: false` file gets the right model's `hands_mean`
added to its 45 finger values. For a left file that is its own model's mean: MANO_LEFT's `hands_mean` is the
mirror m' of MANO_RIGHT's m, and mirror(p + m') = mirror(p) + m, so mirroring first and adding m is exact.
The global orientation is kept as given: a stored mesh lies in the frame the file's wrist orientation refers
to (a fit's camera frame, say), which the sphere rig of the hand recipes sees from every side anyway.

Safety and limits, as for AMASS files (`mpt_data.amass`): only regular files are opened (a folder, FIFO,
dangling or looping link gets its reason); each key's declared size is checked from its `.npy` header before
any data is read (`pose` up to `amass.MAX_FIELD_BYTES`, other keys `amass.MAX_SMALL_FIELD_BYTES`); arrays are
read by numpy with `allow_pickle=False`, and a key holding Python objects is refused before that; every
member read to its end, so zip's CRC is checked. Values: finite, rotation vectors up to
`amass.MAX_ROTATION_RAD`, |betas| up to `amass.MAX_ABS_BETA`, frame rate in `amass.FPS_RANGE`. A file that
fails raises `MotionError` whose text is a short reason for the sequences table (which names the file).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data.amass import (FPS_RANGE, MAX_ABS_BETA, MAX_BETAS, MAX_FIELD_BYTES, MAX_ROTATION_RAD,
                            MAX_SMALL_FIELD_BYTES, MotionError, open_regular, subset_and_subject)
from mpt_data.hand import HAND_POSE_DIM, HAND_SIDES, NUM_FINGER_VALUES, mirror_axis_angle

PARAM_SUFFIX = ".npz"
DEFAULT_FPS = 30.0  # a file without `fps`: hand-pose sets rarely carry one, and 30 is a common capture rate
DEFAULT_SIDE = "right"
KEYS: tuple[str, ...] = ("pose", "betas", "side", "fps", "flat_hand_mean")  # the only keys ever read
_BUDGET = {"pose": MAX_FIELD_BYTES}  # bytes a key may declare; every other key MAX_SMALL_FIELD_BYTES
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error)


@dataclass(frozen=True)
class HandParams:
    """One validated parameter file, ready to pose with the right-hand MANO model.

    path: file path relative to the root, forward slashes. subset, subject: its first and second folder.
    side: the file's side ("right" or "left"). flat_hand_mean: the file's convention (True: flat-relative).
    poses: (T, 48) float32 axis-angle, radians: the right-hand pose relative to the flat hand (left hands
        mirrored, `hands_mean` added where the file was not flat-relative; see the module docstring).
    betas: (B,) float32 MANO shape coefficients as stored. fps: the file's rate, its default, or the override.
    gender: always "" (MANO has one model per side); kept so the plan treats it like an AMASS `Motion`.
    """

    path: str
    subset: str
    subject: str
    side: str
    flat_hand_mean: bool
    poses: np.ndarray
    betas: np.ndarray
    fps: float
    gender: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])


def find_param_files(root: str | Path) -> list[Path]:
    """Every `*.npz` entry under ``root``, sorted by its path relative to ``root``.

    Like `amass.find_motion_files`: symlinked folders are followed, each real folder once; hidden names
    (starting with ".") are ignored; entries with the suffix that are not regular files (folders, dangling or
    looping links, FIFOs) are included, for `read_params` to reject with a reason. FileNotFoundError if
    ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MANO parameter folder {root} is not a directory")
    found = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in list(files) + dirs:
            if not name.startswith(".") and name.endswith(PARAM_SUFFIX):
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _check_header(zf: zipfile.ZipFile, member: str, key: str) -> None:
    """Refuse a member whose `.npy` header declares Python objects or more bytes than the key's budget,
    before numpy reads it (so neither a pickle nor a decompression bomb is ever touched)."""
    budget = _BUDGET.get(key, MAX_SMALL_FIELD_BYTES)
    with zf.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(f)
        except ValueError as e:  # a bad magic string or header
            raise MotionError(f"key {key!r} is not a valid .npy array ({e})") from e
    if dtype.hasobject:
        raise MotionError(f"key {key!r} holds pickled Python objects (refused: a parameter file is data)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > budget:
        raise MotionError(f"{key} declares shape {tuple(shape)} of {dtype} = {nbytes} bytes, over the {budget} byte "
                          f"limit for this key (a damaged header or a decompression bomb)")


def _read_member(zf: zipfile.ZipFile, member: str, key: str) -> np.ndarray:
    """One checked member, read by numpy without pickles, then to its end (where zipfile checks the CRC)."""
    _check_header(zf, member, key)
    with zf.open(member) as f:
        try:
            arr = np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as e:  # a short read: numpy names the bytes it expected
            raise MotionError(f"truncated or corrupt zip: key {key!r}: {e}") from e
        f.read(1)
    return arr


def _load_fields(path: Path) -> dict[str, np.ndarray]:
    """The keys of `KEYS` present in the file (others are never read); MotionError for anything unreadable."""
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
                for key in KEYS:
                    member = f"{key}.npy" if f"{key}.npy" in names else key if key in names else None
                    if member is not None:
                        out[key] = _read_member(zf, member, key)
                if "pose" not in out and ("poses.npy" in names or "poses" in names):
                    raise MotionError("missing key 'pose' (this file has 'poses', like an AMASS motion file: "
                                      "build those with sources.kind amass)")
                return out
        except _ZIP_ERRORS as e:
            raise MotionError(f"truncated or corrupt zip: {e}") from e
        except (NotImplementedError, RuntimeError) as e:  # compression method unknown to zipfile, encryption
            raise MotionError(f"unsupported zip member: {e}") from e
        except OSError as e:
            raise MotionError(f"unreadable file: {e.strerror or e}") from e


def _finite(arr: np.ndarray, key: str) -> np.ndarray:
    """A numeric key as float64 (wide enough that a finite source value stays finite), without NaN or inf."""
    if arr.dtype.kind not in "fiu":
        raise MotionError(f"{key} has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise MotionError(f"NaN in {key}")
    if not np.isfinite(arr).all():
        raise MotionError(f"inf in {key}")
    return arr


def _text(arr: np.ndarray, key: str) -> str:
    """A single string (str or bytes, 0-d or one element), stripped and lower-cased."""
    if arr.dtype.kind not in "US" or arr.size != 1:
        raise MotionError(f"{key} is not a single string (dtype {arr.dtype}, {arr.size} values)")
    item = arr.reshape(()).item()
    if isinstance(item, bytes):
        try:
            item = item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MotionError(f"{key} is not valid UTF-8 text") from e
    return str(item).strip().lower()


def _flag(arr: np.ndarray, key: str) -> bool:
    """A single boolean (bool, or an integer 0 / 1)."""
    if arr.size == 1 and arr.dtype.kind == "b":
        return bool(arr.reshape(()))
    if arr.size == 1 and arr.dtype.kind in "iu" and int(arr.reshape(())) in (0, 1):
        return bool(int(arr.reshape(())))
    raise MotionError(f"{key} is not a single boolean (True or False; dtype {arr.dtype}, {arr.size} values)")


def _rate(fps: float, what: str) -> float:
    if not math.isfinite(fps):
        raise MotionError(f"{what} is not finite ({fps})")
    if fps <= 0:
        raise MotionError(f"{what} must be > 0, got {fps:g}")
    lo, hi = FPS_RANGE
    if not lo <= fps <= hi:
        raise MotionError(f"{what} is {fps:g} fps, outside the plausible {lo:g}..{hi:g}")
    return fps


def read_params(path: str | Path, root: str | Path, fps_overrides: Mapping[str, float] | None = None, *,
                hands_mean: np.ndarray) -> HandParams:
    """Read and validate one MANO parameter file (keys and checks: the module docstring).

    path: the file; root: the folder it lies under (for the relative path, subset and subject).
    fps_overrides: frames per second by subset, replacing the file's `fps` (which is then not read).
    hands_mean: (45,) the right-hand MANO model's `hands_mean`, added to the finger values of files with
    `flat_hand_mean` False. Raises MotionError with a short reason on the first failure.
    """
    mean = np.asarray(hands_mean, np.float64).reshape(-1)
    if mean.shape != (NUM_FINGER_VALUES,):
        raise ValueError(f"hands_mean must hold {NUM_FINGER_VALUES} values, got {mean.size}")
    path = Path(path)
    try:  # lexical, not resolved: a symlinked file or folder keeps its subset and subject under root
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise MotionError(f"not under the parameter folder {root}") from None
    subset, subject = subset_and_subject(rel)
    data = _load_fields(path)
    for key in ("pose", "betas"):
        if key not in data:
            raise MotionError(f"missing key {key!r} (a MANO parameter file holds pose (T, {HAND_POSE_DIM}) and betas)")

    pose = _finite(data["pose"], "pose")
    if pose.ndim != 2 or pose.shape[1] != HAND_POSE_DIM:
        raise MotionError(f"pose has shape {pose.shape}, expected (T, {HAND_POSE_DIM}): the wrist orientation "
                          f"and 15 finger joints, 3 axis-angle values each")
    num_frames = pose.shape[0]
    if num_frames == 0:
        raise MotionError("zero frames")
    norms = np.linalg.norm(pose.reshape(num_frames, -1, 3), axis=2)
    frame, joint = np.unravel_index(int(np.argmax(norms)), norms.shape)
    if norms[frame, joint] > MAX_ROTATION_RAD:
        raise MotionError(f"pose holds a {norms[frame, joint]:.3g} rad rotation (frame {frame}, joint {joint}), "
                          f"beyond the {MAX_ROTATION_RAD:.3g} rad of a plausible axis-angle pose")

    betas = _finite(data["betas"], "betas")
    if betas.ndim == 2 and betas.shape[0] == 1:
        betas = betas[0]
    if betas.ndim != 1 or not 1 <= betas.shape[0] <= MAX_BETAS:
        raise MotionError(f"betas has shape {data['betas'].shape}, expected (B,) or (1, B) with 1 <= B <= {MAX_BETAS} "
                          "(one shape per file)")
    k = int(np.argmax(np.abs(betas)))
    if abs(betas[k]) > MAX_ABS_BETA:
        raise MotionError(f"betas[{k}] is {betas[k]:.3g}, beyond ±{MAX_ABS_BETA:g} (shape coefficients are in "
                          f"standard deviations)")

    side = _text(data["side"], "side") if "side" in data else DEFAULT_SIDE
    if side not in HAND_SIDES:
        raise MotionError(f"side {side!r} is neither 'right' nor 'left'")
    flat = _flag(data["flat_hand_mean"], "flat_hand_mean") if "flat_hand_mean" in data else True

    if fps_overrides is not None and subset in fps_overrides:
        fps = _rate(float(fps_overrides[subset]), f"fps override for {subset!r}")
    elif "fps" in data:
        arr = data["fps"]
        if arr.dtype.kind not in "fiu" or arr.size != 1:
            raise MotionError(f"fps is not a single number (dtype {arr.dtype}, {arr.size} values)")
        fps = _rate(float(arr.reshape(())), "fps")
    else:
        fps = DEFAULT_FPS

    right = mirror_axis_angle(pose) if side == "left" else pose.copy()
    if not flat:
        right[:, 3:] += mean
    return HandParams(path=rel, subset=subset, subject=subject, side=side, flat_hand_mean=flat,
                      poses=np.ascontiguousarray(right, np.float32), betas=np.ascontiguousarray(betas, np.float32),
                      fps=fps)
