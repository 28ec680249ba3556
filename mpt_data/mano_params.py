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

Safety and limits: the reader of AMASS files (`amass.read_npz_fields`, `amass.open_regular`): only regular
files are opened (a folder, FIFO, dangling or looping link gets its reason); only the keys above are read, each
one's declared size checked from its `.npy` header before any data is read (`pose` up to
`amass.MAX_FIELD_BYTES`, other keys `amass.MAX_SMALL_FIELD_BYTES`); a key holding Python objects is refused
unread (nothing is ever unpickled); every member is read to its end, so zip's CRC is checked. Values: finite,
rotation vectors up to `amass.MAX_ROTATION_RAD`, |betas| up to `amass.MAX_ABS_BETA`, frame rate in
`amass.FPS_RANGE`. A file that fails raises `MotionError` whose text is a short reason for the sequences
table (which names the file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data.amass import (MAX_ABS_BETA, MAX_BETAS, MAX_FIELD_BYTES, MAX_ROTATION_RAD, MotionError, check_fps,
                            decode_text, find_files, numeric_field, read_npz_fields, subset_and_subject)
from mpt_data.hand import HAND_POSE_DIM, HAND_SIDES, NUM_FINGER_VALUES, mirror_axis_angle

PARAM_SUFFIX = ".npz"
DEFAULT_FPS = 30.0  # a file without `fps`: hand-pose sets rarely carry one, and 30 is a common capture rate
DEFAULT_SIDE = "right"
KEYS: tuple[str, ...] = ("pose", "betas", "side", "fps", "flat_hand_mean")  # the only keys ever read
_BUDGET = {"pose": MAX_FIELD_BYTES}  # bytes a key may declare; every other key amass.MAX_SMALL_FIELD_BYTES


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
    """Every `*.npz` entry under ``root``, sorted by its path relative to ``root`` (`amass.find_files`:
    links followed, hidden names ignored, non-regular entries kept for `read_params` to reject)."""
    return find_files(root, lambda p: p.name.endswith(PARAM_SUFFIX), "MANO parameter folder")


def _flag(arr: np.ndarray, key: str) -> bool:
    """A single boolean (bool, or an integer 0 / 1)."""
    if arr.size == 1 and arr.dtype.kind == "b":
        return bool(arr.reshape(()))
    if arr.size == 1 and arr.dtype.kind in "iu" and int(arr.reshape(())) in (0, 1):
        return bool(int(arr.reshape(())))
    raise MotionError(f"{key} is not a single boolean (True or False; dtype {arr.dtype}, {arr.size} values)")


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
    data, names = read_npz_fields(path, KEYS, _BUDGET)
    if "pose" not in data and "poses" in names:
        raise MotionError("missing key 'pose' (this file has 'poses', like an AMASS motion file: "
                          "build those with sources.kind amass)")
    for key in ("pose", "betas"):
        if key not in data:
            raise MotionError(f"missing key {key!r} (a MANO parameter file holds pose (T, {HAND_POSE_DIM}) and betas)")

    pose = numeric_field(data["pose"], "pose")
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

    betas = numeric_field(data["betas"], "betas")
    if betas.ndim == 2 and betas.shape[0] == 1:
        betas = betas[0]
    if betas.ndim != 1 or not 1 <= betas.shape[0] <= MAX_BETAS:
        raise MotionError(f"betas has shape {data['betas'].shape}, expected (B,) or (1, B) with 1 <= B <= {MAX_BETAS} "
                          "(one shape per file)")
    k = int(np.argmax(np.abs(betas)))
    if abs(betas[k]) > MAX_ABS_BETA:
        raise MotionError(f"betas[{k}] is {betas[k]:.3g}, beyond ±{MAX_ABS_BETA:g} (shape coefficients are in "
                          f"standard deviations)")

    side = decode_text(data["side"], "side") if "side" in data else DEFAULT_SIDE
    if side not in HAND_SIDES:
        raise MotionError(f"side {side!r} is neither 'right' nor 'left'")
    flat = _flag(data["flat_hand_mean"], "flat_hand_mean") if "flat_hand_mean" in data else True

    if fps_overrides is not None and subset in fps_overrides:
        fps = check_fps(float(fps_overrides[subset]), f"fps override for {subset!r}")
    elif "fps" in data:
        arr = data["fps"]
        if arr.dtype.kind not in "fiu" or arr.size != 1:
            raise MotionError(f"fps is not a single number (dtype {arr.dtype}, {arr.size} values)")
        fps = check_fps(float(arr.reshape(())), "fps")
    else:
        fps = DEFAULT_FPS

    right = mirror_axis_angle(pose) if side == "left" else pose.copy()
    if not flat:
        right[:, 3:] += mean
    return HandParams(path=rel, subset=subset, subject=subject, side=side, flat_hand_mean=flat,
                      poses=np.ascontiguousarray(right, np.float32), betas=np.ascontiguousarray(betas, np.float32),
                      fps=fps)
