"""Synthetic motion capture in the AMASS file formats, made from a seed.

Layout written by `write_motions` under ``root``::

    <subset>/<subject>/<name>_poses.npz   SMPL+H: poses (T,156) float64 axis-angle (root 3, body
                                          63, hands 90), trans (T,3), betas (16,), dmpls (T,8),
                                          gender (0-d str array; one file stores bytes, as some
                                          real AMASS files do), mocap_framerate (float)
    <subset>/<subject>/shape.npz          betas, gender (not a motion: readers skip it)
    <subset>/<subject>/<name>_stageii.npz one SMPL-X file: poses (T,165), mocap_frame_rate,
                                          surface_model_type 'smplx', trans, betas, gender, ...
    <subset>/<subject>/<subject>_stagei.npz  its shape file (skipped by readers)

Subsets carry real AMASS names, so AMASS's split applies: training CMU, KIT, BMLmovi, ACCAD;
validation HumanEva, SFU; test SSM_synced. Motions cycle through walking, running, jumping,
sitting down, arm swings, turning and bending, with finger curls throughout; every joint
angle is a smooth function of time (sinusoids and smoothstep keyframes), clipped to joint
limits. World frame as AMASS: z up, metres; the root orientation stands SMPL's y-up template
upright, and ``trans`` puts the feet of an average-height body on z = 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data import conventions as cv
from mpt_data.synth.body import save_npz_reproducible

MOTIONS: tuple[str, ...] = ("walk", "run", "jump", "sit", "arm_swing", "turn", "bend")
# (subset, split, frame rate): cycled over sequences so every split appears from 7 sequences on.
SUBSETS: tuple[tuple[str, str, float], ...] = (
    ("CMU", "train", 120.0), ("KIT", "train", 100.0), ("HumanEva", "val", 120.0),
    ("BMLmovi", "train", 120.0), ("ACCAD", "train", 60.0), ("SFU", "val", 120.0),
    ("SSM_synced", "test", 120.0),
)
SUBJECTS_PER_SUBSET = 2
NUM_BETAS = 16
PELVIS_HEIGHT_M = 0.985  # template pelvis above its feet (mpt_data.synth.body.FLOOR_Y)
_J = {name: i for i, name in enumerate(cv.SMPLH_JOINTS)}

# Joint limits (rad) on the local rotation vector components (x, y, z) in SMPL's template
# axes; generous human ranges, used to clip every generated pose.
_LIMITS: dict[str, tuple[tuple[float, float], ...]] = {
    "hip": ((-2.2, 0.6), (-0.8, 0.8), (-0.8, 0.8)),
    "knee": ((0.0, 2.4), (-0.2, 0.2), (-0.2, 0.2)),
    "ankle": ((-0.8, 0.8), (-0.4, 0.4), (-0.4, 0.4)),
    "spine": ((-0.5, 0.9), (-0.6, 0.6), (-0.5, 0.5)),
    "neck": ((-0.7, 0.8), (-0.9, 0.9), (-0.6, 0.6)),
    "shoulder": ((-2.0, 2.0), (-1.5, 1.5), (-1.7, 1.7)),
    "elbow": ((-0.2, 0.2), (-2.5, 2.5), (-0.2, 0.2)),
    "wrist": ((-0.9, 0.9), (-0.6, 0.6), (-1.0, 1.0)),
    "finger": ((-0.3, 0.3), (-0.3, 0.3), (-1.7, 1.7)),
}


@dataclass(frozen=True)
class MotionConfig:
    """What `write_motions` makes. ``num_sequences`` SMPL+H files of ``seconds`` each (plus one
    SMPL-X file when ``smplx_file``)."""

    seed: int = 0
    num_sequences: int = 14
    seconds: float = 4.0
    smplx_file: bool = True


@dataclass(frozen=True)
class Subject:
    name: str
    gender: str
    betas: np.ndarray  # (16,) float64


# ---------------------------------------------------------------------------------------
# Rotation helpers (axis-angle <-> matrix), pure numpy


def rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (...,3) rad -> matrices (...,3,3)."""
    r = np.asarray(r, dtype=np.float64)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    k = r / np.maximum(theta, 1e-12)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    Kx = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1),
                   np.stack([-ky, kx, zero], -1)], -2)
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    return np.eye(3) + s * Kx + (1 - c) * (Kx @ Kx)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (...,3,3) -> rotation vectors (...,3) rad (angle in [0, pi])."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    v = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    s = np.sin(theta)
    small = s < 1e-6
    r = np.where(small[..., None], v / 2, v * (theta / np.where(small, 1.0, 2 * s))[..., None])
    near_pi = small & (cos < 0)
    if near_pi.any():  # antisymmetric part vanishes: the axis comes from the symmetric part
        B = (R[near_pi] + np.eye(3)) / 2
        col = np.argmax(np.diagonal(B, axis1=-2, axis2=-1), axis=-1)
        ax = B[np.arange(len(B)), :, col]
        r[near_pi] = np.pi * ax / np.linalg.norm(ax, axis=-1, keepdims=True)
    return r


def angular_speed(poses: np.ndarray, fps: float) -> np.ndarray:
    """Per-frame-step angular speed (T-1, J) rad/s of every joint's local rotation, from
    axis-angle poses (T, 3J)."""
    R = rotvec_to_matrix(poses.reshape(len(poses), -1, 3))
    rel = np.swapaxes(R[:-1], -1, -2) @ R[1:]
    return np.linalg.norm(matrix_to_rotvec(rel), axis=-1) * fps


def _rx(a):
    return rotvec_to_matrix(np.stack([a, 0 * a, 0 * a], -1))


def _rz(a):
    return rotvec_to_matrix(np.stack([0 * a, 0 * a, a], -1))


def _ry(a):
    return rotvec_to_matrix(np.stack([0 * a, a, 0 * a], -1))


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6 * x - 15) + 10)


def _vm(u: np.ndarray, mu: float, kappa: float) -> np.ndarray:
    """Smooth periodic bump of phase ``u`` (cycles), peak 1 at ``mu``."""
    return np.exp(kappa * (np.cos(2 * np.pi * (u - mu)) - 1.0))


# ---------------------------------------------------------------------------------------
# Motion synthesis


@dataclass
class _Pose:
    """Per-frame local rotations being assembled: (T,52,3,3) and root pitch/heading."""

    R: np.ndarray
    pitch: np.ndarray
    heading: np.ndarray
    lift: np.ndarray  # pelvis height change (m)
    speed: np.ndarray  # forward speed (m/s)
    back: np.ndarray  # pelvis shift backwards (m)

    def set(self, name: str, M: np.ndarray) -> None:
        self.R[:, _J[name]] = M @ self.R[:, _J[name]]


def _limb(p: _Pose, side: str, *, hip=0.0, hip_out=0.0, knee=0.0, ankle=0.0, arm_down=1.25, arm_fwd=0.0,
          elbow=0.0) -> None:
    """Set one side's limbs from anatomical angles (rad, arrays or scalars): hip flexion
    forward, abduction, knee flexion, ankle dorsiflexion, arm lowered from horizontal, arm
    swung forward, elbow flexion."""
    s = 1.0 if side == "left" else -1.0
    T = len(p.pitch)
    one = np.ones(T)
    p.set(f"{side}_hip", _rx(-hip * one) @ _rz(s * hip_out * one))
    p.set(f"{side}_knee", _rx(knee * one))
    p.set(f"{side}_ankle", _rx(-ankle * one))
    p.set(f"{side}_shoulder", _rx(-arm_fwd * one) @ _rz(-s * arm_down * one))
    p.set(f"{side}_elbow", _ry(-s * elbow * one))


def _spine(p: _Pose, bend=0.0, twist=0.0, nod=0.0) -> None:
    one = np.ones(len(p.pitch))
    for name in ("spine1", "spine2", "spine3"):
        p.set(name, _rx(bend / 3 * one) @ _ry(twist / 3 * one))
    p.set("neck", _rx(nod * one))


def _gait(p: _Pose, t, freq, hip_amp, knee_amp, arm_amp, elbow, speed, bounce, lean, rng) -> None:
    phase = 2 * np.pi * freq * t
    for side, off in (("left", 0.0), ("right", np.pi)):
        ph = phase + off
        knee = 0.1 + knee_amp * (0.5 - 0.5 * np.cos(ph - 0.9)) ** 2
        _limb(p, side, hip=0.08 + hip_amp * np.sin(ph), knee=knee, ankle=0.12 * np.sin(ph + 0.6),
              arm_down=1.25 - 0.1 * elbow, arm_fwd=arm_amp * np.sin(ph + np.pi), elbow=elbow + 0.1 * np.sin(ph))
    _spine(p, bend=lean, twist=0.1 * np.sin(phase))
    p.speed += speed
    p.lift += bounce * (0.5 - 0.5 * np.cos(2 * phase))


def _motion(kind: str, t: np.ndarray, rng: np.random.Generator) -> _Pose:
    T = len(t)
    p = _Pose(R=np.tile(np.eye(3), (T, 52, 1, 1)), pitch=np.zeros(T), heading=np.zeros(T), lift=np.zeros(T),
              speed=np.zeros(T), back=np.zeros(T))
    a = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    duration = float(t[-1] - t[0]) if T > 1 else 1.0
    if kind == "walk":
        _gait(p, t, a(0.8, 1.0), a(0.35, 0.45), a(0.5, 0.65), a(0.25, 0.4), a(0.2, 0.4), a(1.1, 1.5),
              0.02, a(0.0, 0.08), rng)
        p.heading += a(-0.15, 0.15) * t
    elif kind == "run":
        _gait(p, t, a(1.3, 1.5), a(0.5, 0.65), a(1.1, 1.4), a(0.45, 0.6), a(1.2, 1.5), a(2.6, 3.4),
              0.05, a(0.15, 0.25), rng)
    elif kind == "jump":
        u = t / a(1.3, 1.6)
        crouch = _vm(u, 0.2, 8.0) + 0.8 * _vm(u, 0.9, 12.0)
        flight = _vm(u, 0.55, 6.0)
        for side in ("left", "right"):
            _limb(p, side, hip=1.0 * crouch, knee=1.5 * crouch, ankle=0.45 * crouch,
                  arm_down=1.3 - 1.6 * flight + 0.3 * crouch, arm_fwd=0.6 * flight - 0.4 * crouch, elbow=0.3)
        p.pitch += 0.45 * crouch
        _spine(p, bend=0.25 * crouch, nod=-0.1 * crouch)
        p.lift += -0.28 * crouch + a(0.25, 0.4) * flight
        p.speed += a(0.0, 0.6) * flight
    elif kind == "sit":
        s = _smooth((t - 0.15 * duration) / (0.3 * duration)) - _smooth((t - 0.65 * duration) / (0.25 * duration))
        transit = 4 * s * (1 - s)
        for side in ("left", "right"):
            _limb(p, side, hip=1.5 * s, hip_out=0.12 * s, knee=1.6 * s, ankle=0.15 * s,
                  arm_down=1.3 - 0.2 * s, arm_fwd=0.35 * s, elbow=0.5 * s)
        p.pitch += 0.35 * transit
        _spine(p, bend=0.15 * s + 0.2 * transit)
        p.lift += -0.45 * s
        p.back += 0.3 * s
    elif kind == "arm_swing":
        f = a(0.5, 0.8)
        for side, off in (("left", 0.0), ("right", a(0.0, np.pi))):
            ph = 2 * np.pi * f * t + off
            _limb(p, side, knee=0.06, hip=0.04, arm_down=0.45 + 0.85 * np.sin(ph), arm_fwd=0.8 * np.cos(ph),
                  elbow=0.25 + 0.25 * np.sin(ph + 1.0))
        _spine(p, twist=0.15 * np.sin(2 * np.pi * f * t))
    elif kind == "turn":
        ph = 2 * np.pi * a(1.0, 1.3) * t
        for side, off in (("left", 0.0), ("right", np.pi)):
            _limb(p, side, hip=0.3 * (0.5 - 0.5 * np.cos(ph + off)) ** 2, knee=0.5 * (0.5 - 0.5 * np.cos(ph + off)) ** 2,
                  arm_down=1.2, arm_fwd=0.1 * np.sin(ph + off + np.pi), elbow=0.3)
        p.heading += rng.choice([-1.0, 1.0]) * a(0.9, 1.5) * t
        _spine(p, twist=0.1 * np.sin(ph))
    elif kind == "bend":
        b = 0.5 - 0.5 * np.cos(2 * np.pi * t / a(2.5, 3.5))
        depth = a(0.8, 1.2)
        p.pitch += 0.6 * depth * b
        _spine(p, bend=1.0 * depth * b, nod=-0.2 * b)
        for side in ("left", "right"):
            _limb(p, side, hip=0.6 * depth * b, knee=0.08 * b, arm_down=1.3, arm_fwd=1.5 * depth * b, elbow=0.15)
    else:
        raise ValueError(f"unknown motion {kind!r}; choose from {MOTIONS}")
    # Fingers curl and open all the time; a little sway on every body joint.
    fh = a(0.2, 0.6)
    for side, s in (("left", 1.0), ("right", -1.0)):
        for k, finger in enumerate(("index", "middle", "pinky", "ring", "thumb")):
            c = 0.1 + 0.55 * (0.5 - 0.5 * np.cos(2 * np.pi * fh * t + 0.4 * k + (0 if s > 0 else 1.0)))
            for seg, gain in ((1, 0.9), (2, 1.1), (3, 0.8)):
                M = _ry(s * 0.4 * gain * c) if finger == "thumb" else _rz(-s * gain * c)
                p.set(f"{side}_{finger}{seg}", M)
    for j in range(1, 22):
        amp = rng.uniform(0.0, 0.04, 3)
        fr = rng.uniform(0.15, 0.6, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        sway = amp * np.sin(2 * np.pi * fr * t[:, None] + ph)
        p.R[:, j] = rotvec_to_matrix(sway) @ p.R[:, j]
    return p


def _limit_class(name: str) -> str | None:
    for key, cls in (("hip", "hip"), ("knee", "knee"), ("ankle", "ankle"), ("spine", "spine"), ("neck", "neck"),
                     ("head", "neck"), ("shoulder", "shoulder"), ("elbow", "elbow"), ("wrist", "wrist"),
                     ("collar", "wrist"), ("foot", "ankle")):
        if key in name:
            return cls
    if any(f in name for f in ("index", "middle", "ring", "pinky", "thumb")):
        return "finger"
    return None


def clip_to_limits(rotvecs: np.ndarray) -> np.ndarray:
    """Clip local rotation vectors (T,52,3) of joints 1..51 to the joint limits; the right
    side's y and z limits are the left's mirrored."""
    out = rotvecs.copy()
    for j, name in enumerate(cv.SMPLH_JOINTS):
        cls = _limit_class(name)
        if j == 0 or cls is None:
            continue
        lim = np.array(_LIMITS[cls], dtype=np.float64)
        if name.startswith("right_"):
            lim[1:] = -lim[1:, ::-1]
        out[:, j] = np.clip(out[:, j], lim[:, 0], lim[:, 1])
    return out


def synthesize_sequence(kind: str, seconds: float, fps: float, subject: Subject, rng: np.random.Generator
                        ) -> dict[str, np.ndarray]:
    """One motion of ``kind`` as AMASS SMPL+H arrays: poses (T,156), trans (T,3) (z-up world,
    m), betas, gender, mocap_framerate, dmpls."""
    T = max(int(round(seconds * fps)), 2)
    t = np.arange(T) / fps
    p = _motion(kind, t, rng)
    heading0 = rng.uniform(-np.pi, np.pi)
    heading = heading0 + p.heading
    up = rotvec_to_matrix(np.array([np.pi / 2, 0.0, 0.0]))  # template y-up -> world z-up
    p.R[:, 0] = _rz(heading) @ up @ _rx(p.pitch) @ p.R[:, 0]
    rot = matrix_to_rotvec(p.R)
    rot[:, 1:] = clip_to_limits(rot)[:, 1:]
    facing = np.stack([np.sin(heading), -np.cos(heading), np.zeros(T)], 1)  # template +z in the world
    step = np.concatenate([[0.0], np.diff(t)])
    trans = np.cumsum((p.speed * step)[:, None] * facing, axis=0) - p.back[:, None] * facing
    start = rng.uniform(-1.0, 1.0, 2)
    height = PELVIS_HEIGHT_M * (1 + 0.055 * subject.betas[0] + _GENDER_HEIGHT[subject.gender])
    trans[:, :2] += start
    trans[:, 2] = height + p.lift
    return {
        "trans": trans.astype(np.float64),
        "gender": np.array(subject.gender),
        "mocap_framerate": np.array(float(fps)),
        "betas": subject.betas.astype(np.float64),
        "dmpls": np.zeros((T, 8), dtype=np.float64),
        "poses": rot.reshape(T, -1).astype(np.float64),
    }


# Height offsets of the synthetic genders (their height coefficients, times the 5.5 % per unit
# of shape direction 0, see mpt_data.synth.body).
_GENDER_HEIGHT = {"neutral": 0.0, "male": 0.6 * 0.055, "female": -0.9 * 0.055}


def _subjects(rng: np.random.Generator) -> dict[str, list[Subject]]:
    out: dict[str, list[Subject]] = {}
    genders = ("male", "female", "neutral", "female", "male")
    n = 0
    for subset, _, _ in SUBSETS:
        out[subset] = []
        for k in range(SUBJECTS_PER_SUBSET):
            betas = np.clip(rng.normal(0.0, 0.8, NUM_BETAS), -2.5, 2.5)
            out[subset].append(Subject(f"s{k + 1:02d}", genders[n % len(genders)], betas))
            n += 1
    return out


def write_motions(root: str | os.PathLike, seed: int = 0, num_sequences: int = 14, seconds: float = 4.0,
                  smplx_file: bool = True) -> list[Path]:
    """Write ``num_sequences`` AMASS-format SMPL+H motions of ``seconds`` each (and one SMPL-X
    ``_stageii`` file when ``smplx_file``) under ``root``; layout in the module docstring.
    Sequence i uses subset ``SUBSETS[i % 7]`` and motion ``MOTIONS[i % 7]`` shifted per round,
    so 7 sequences already cover every motion and split. Same arguments, same bytes.
    Returns the motion files written (shape files not included)."""
    if num_sequences < 1 or seconds <= 0:
        raise ValueError("write_motions needs num_sequences >= 1 and seconds > 0")
    cfg = MotionConfig(seed=seed, num_sequences=num_sequences, seconds=seconds, smplx_file=smplx_file)
    root = Path(root)
    rng = np.random.default_rng(cfg.seed)
    subjects = _subjects(rng)
    written: list[Path] = []
    used: set[tuple[str, str]] = set()
    for i in range(cfg.num_sequences):
        subset, _, fps = SUBSETS[i % len(SUBSETS)]
        rnd = i // len(SUBSETS)
        kind = MOTIONS[(i + 3 * rnd) % len(MOTIONS)]
        subject = subjects[subset][rnd % SUBJECTS_PER_SUBSET]
        seq_rng = np.random.default_rng([cfg.seed, i])
        arrays = synthesize_sequence(kind, cfg.seconds, fps, subject, seq_rng)
        if i == 1:  # some real AMASS files store the gender as bytes
            arrays["gender"] = np.array(subject.gender.encode())
        folder = root / subset / subject.name
        path = folder / f"{kind}_{i:03d}_poses.npz"
        save_npz_reproducible(path, arrays)
        written.append(path)
        if (subset, subject.name) not in used:
            used.add((subset, subject.name))
            save_npz_reproducible(folder / "shape.npz", {"betas": subject.betas, "gender": np.array(subject.gender)})
    if cfg.smplx_file:
        subject = Subject("s_smplx", "female", np.clip(rng.normal(0.0, 0.8, NUM_BETAS), -2.5, 2.5))
        arrays = synthesize_sequence("walk", cfg.seconds, 120.0, subject, np.random.default_rng([cfg.seed, 10_000]))
        T = len(arrays["poses"])
        p = arrays["poses"]
        poses165 = np.concatenate([p[:, :66], np.zeros((T, 9)), p[:, 66:]], axis=1)
        folder = root / "ACCAD" / subject.name
        path = folder / "walk_smplx_stageii.npz"
        save_npz_reproducible(path, {
            "gender": np.array(subject.gender), "surface_model_type": np.array("smplx"),
            "mocap_frame_rate": np.array(120.0), "mocap_time_length": np.array(T / 120.0),
            "trans": arrays["trans"], "poses": poses165, "betas": subject.betas, "num_betas": np.array(NUM_BETAS),
            "root_orient": poses165[:, :3], "pose_body": poses165[:, 3:66], "pose_jaw": poses165[:, 66:69],
            "pose_eye": poses165[:, 69:75], "pose_hand": poses165[:, 75:],
        })
        written.append(path)
        save_npz_reproducible(folder / f"{subject.name}_stagei.npz", {
            "betas": subject.betas, "gender": np.array(subject.gender), "surface_model_type": np.array("smplx"),
        })
    return written
