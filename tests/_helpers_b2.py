"""Inputs for the store/build/preview tests: a small synthetic body model, short AMASS-format motions
(good ones in train/val/test subsets, plus one of every kind of bad file), and a Dask worker plugin
that kills its worker process once."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_VERTICES = 1500
REPO = Path(__file__).resolve().parents[1]

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


@dataclass(frozen=True)
class Inputs:
    amass_root: Path
    body_dir: Path


def write_motion_files(amass: Path, motions) -> None:
    """AMASS-format files for rows (subset, subject, name, frames, fps, gender) under `amass`."""
    for i, (subset, subject, name, frames, fps, gender) in enumerate(motions):
        d = amass / subset / subject
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / f"{name}_poses.npz", **motion_arrays(frames, fps, gender, seed=i))


def write_inputs(root: Path) -> Inputs:
    """Body models (helper A's synthetic model, NUM_VERTICES) and motions under `root`."""
    from _synth_cache import write_body_models

    body_dir = root / "body_models"
    write_body_models(body_dir, seed=0, num_vertices=NUM_VERTICES)
    amass = root / "amass"
    write_motion_files(amass, GOOD)
    for subset, subject, _, _, _, gender in GOOD:  # not motions: no rows
        np.savez(amass / subset / subject / "shape.npz", betas=np.zeros(16), gender=np.array(gender))
    write_bad_files(amass / "Broken" / "b")
    return Inputs(amass, body_dir)


def write_bad_files(d: Path) -> None:
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


def kill_once_plugin(marker: str):
    """A Dask WorkerPlugin whose worker dies (os._exit) when it starts the first build partition task.

    The marker file makes it happen once per test, whichever worker gets there first."""
    from distributed import WorkerPlugin

    class KillOncePlugin(WorkerPlugin):
        name = "mpt-kill-once"

        def __init__(self, marker: str):
            self.marker = marker

        def transition(self, key, start, finish, **kwargs) -> None:
            if finish == "executing" and "mpt-partition" in str(key):
                try:
                    fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.write(fd, str(key).encode())
                os.close(fd)
                os._exit(1)

    return KillOncePlugin(marker)


def shared_inputs(tmp_path_factory) -> Inputs:
    """`write_inputs` once per test session (the directory is reused by every module that asks)."""
    root = tmp_path_factory.getbasetemp() / "b2_inputs"
    done = root / ".done"
    if not done.exists():
        write_inputs(root)
        done.write_text("ok")
    return Inputs(root / "amass", root / "body_models")


def small_config(inputs: Inputs, out: Path, **overrides):
    """The demo-like recipe on the test inputs: 20 fps sampling, 4 cameras, 8-mesh chunks, 32-mesh shards."""
    from mpt_data.build import load_recipe, manifest_splits

    options = dict(name="test", amass_root=str(inputs.amass_root), body_model_dir=str(inputs.body_dir),
                   target_fps=20.0, cameras=4, chunk_meshes=8, shard_meshes=32, batch_size=64, out=str(out),
                   workers=0, progress=False, splits=manifest_splits(REPO / "data_manifest.yaml"))
    options.update(overrides)
    return load_recipe(None, **options)


def shared_frozen_store(tmp_path_factory) -> tuple[Path, str]:
    """A frozen in-process build of `small_config`, made once per session: (path, fingerprint)."""
    from mpt_data.build import build_store
    from mpt_data.freeze import freeze_store

    inputs = shared_inputs(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "b2_ref_store"
    if not (out / "zarr.json").exists() or "frozen" not in (out / "zarr.json").read_text():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        build_store(small_config(inputs, out))
        freeze_store(out)
    import zarr

    return out, zarr.open_group(str(out), mode="r").attrs["fingerprint"]
