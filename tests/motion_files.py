"""AMASS-format motion files for the build tests: short, smooth SMPL+H motions in train, val and test
subsets (`GOOD`), and one file of every kind the reader must skip, with the reason it must give
(`BAD_REASONS`)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

# AMASS subset names, so the manifest's split applies: CMU train, HumanEva val, SSM_synced test.
GOOD = (
    # subset, subject, name, frames, fps, gender
    ("CMU", "01", "walk", 96, 60.0, "male"),
    ("CMU", "02", "wave", 130, 120.0, "female"),
    ("CMU", "02", "turn", 70, 60.0, "neutral"),
    ("HumanEva", "S1", "jog", 90, 60.0, "male"),
    ("SSM_synced", "s3", "bend", 80, 60.0, "female"),
)
# file name -> a phrase the skip reason must contain
BAD_REASONS = {
    "truncated_poses.npz": "zip",
    "notzip_poses.npz": "zip",
    "nokey_poses.npz": "missing key 'poses'",
    "shape_poses.npz": "poses has shape",
    "nan_poses.npz": "NaN in poses",
    "inf_poses.npz": "inf in trans",
    "empty_poses.npz": "zero frames",
    "gender_poses.npz": "unknown gender",
    "nofps_poses.npz": "mocap_framerate missing",
    "zerofps_poses.npz": "mocap_framerate missing or zero",
}
if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads a mode-000 file anyway
    BAD_REASONS["unreadable_poses.npz"] = "unreadable"


def motion_arrays(frames: int, fps: float, gender: str, seed: int) -> dict[str, np.ndarray]:
    """A smooth, plausible AMASS SMPL+H motion: the body stands upright (z up) and swings its limbs."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    poses = np.zeros((frames, 156))
    poses[:, 0] = np.pi / 2  # root: y-up body -> z-up world, as in AMASS
    poses[:, 2] = 0.3 * np.sin(0.5 * t)  # turn slowly about z
    amp = rng.uniform(0.2, 0.6, size=21 * 3)
    phase = rng.uniform(0, 2 * np.pi, size=21 * 3)
    poses[:, 3:66] = 0.5 * amp * np.sin(2 * np.pi * 0.8 * t[:, None] + phase)
    poses[:, 66:] = 0.1 * np.sin(t[:, None] + rng.uniform(0, 6, size=90))
    return {
        "poses": poses,
        "trans": np.stack([0.5 * t, np.zeros_like(t), np.full_like(t, 0.9)], 1),
        "betas": rng.normal(scale=0.8, size=16),
        "dmpls": np.zeros((frames, 8)),
        "gender": np.array(gender),
        "mocap_framerate": np.array(fps),
    }


def write_motion_files(amass: Path, motions) -> None:
    """AMASS-format files for rows (subset, subject, name, frames, fps, gender) under `amass`."""
    for i, (subset, subject, name, frames, fps, gender) in enumerate(motions):
        d = amass / subset / subject
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / f"{name}_poses.npz", **motion_arrays(frames, fps, gender, seed=i))


def write_bad_files(d: Path) -> None:
    """One file per entry of `BAD_REASONS` in `d`, each broken in the way its name says."""
    d.mkdir(parents=True, exist_ok=True)
    good = motion_arrays(20, 60.0, "male", seed=99)

    def save(name: str, **changes) -> None:
        arrays = {**good, **changes}
        np.savez(d / name, **{k: v for k, v in arrays.items() if v is not None})

    save("truncated_poses.npz")
    blob = (d / "truncated_poses.npz").read_bytes()
    (d / "truncated_poses.npz").write_bytes(blob[: len(blob) // 2])
    (d / "notzip_poses.npz").write_text("this is not a zip archive\n")
    save("nokey_poses.npz", poses=None)
    save("shape_poses.npz", poses=np.zeros((20, 100)))
    nan = good["poses"].copy()
    nan[3, 7] = np.nan
    save("nan_poses.npz", poses=nan)
    inf = good["trans"].copy()
    inf[2, 1] = np.inf
    save("inf_poses.npz", trans=inf)
    save("empty_poses.npz", poses=np.zeros((0, 156)), trans=np.zeros((0, 3)), dmpls=np.zeros((0, 8)))
    save("gender_poses.npz", gender=np.array("robot"))
    save("nofps_poses.npz", mocap_framerate=None)
    save("zerofps_poses.npz", mocap_framerate=np.array(0.0))
    if "unreadable_poses.npz" in BAD_REASONS:
        save("unreadable_poses.npz")
        (d / "unreadable_poses.npz").chmod(0)
    assert zipfile.is_zipfile(d / "nan_poses.npz")
