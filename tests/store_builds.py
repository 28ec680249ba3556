"""The test stores' inputs and recipe, the build that makes a frozen store of them, and a Dask worker that
dies once mid-build.

Every store the tests read is made by the real builder (`mpt_data.build.build_store`, in this process, no
cluster) from the synthetic body model at its smallest size and the motions of `motion_files`: with
`small_config`, 135 meshes (78 train, 30 val, 27 test) x 4 cameras in 8-mesh chunks and 32-mesh shards.
The fixtures that build them once per test run are in conftest.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from body_model_files import write_body_models
from motion_files import GOOD, write_bad_files, write_motion_files

REPO = Path(__file__).resolve().parents[1]
NUM_VERTICES = 1500  # the smallest synthetic body model: fewer vertices cannot enclose the finger joints
CHUNK, SHARD, CAMERAS = 8, 32, 4  # meshes per chunk, meshes per shard, cameras of `small_config`


@dataclass(frozen=True)
class Inputs:
    amass_root: Path
    body_dir: Path


class BuiltStore(NamedTuple):
    path: Path
    fingerprint: str


def write_inputs(root: Path) -> Inputs:
    """Under `root`: the synthetic body models (NUM_VERTICES) and AMASS-format motions, good and bad."""
    body_dir = root / "body_models"
    write_body_models(body_dir, seed=0, num_vertices=NUM_VERTICES)
    amass = root / "amass"
    write_motion_files(amass, GOOD)
    for subset, subject, _, _, _, gender in GOOD:  # not motions: no rows
        np.savez(amass / subset / subject / "shape.npz", betas=np.zeros(16), gender=np.array(gender))
    write_bad_files(amass / "Broken" / "b")
    return Inputs(amass, body_dir)


def small_config(inputs: Inputs, out: Path, **overrides):
    """The demo-like recipe on the test inputs: 20 fps sampling, 4 cameras, 8-mesh chunks, 32-mesh shards,
    AMASS's split of subsets from data_manifest.yaml."""
    from mpt_data.build import load_recipe, manifest_splits

    options = dict(name="test", amass_root=str(inputs.amass_root), body_model_dir=str(inputs.body_dir),
                   target_fps=20.0, cameras=CAMERAS, chunk_meshes=CHUNK, shard_meshes=SHARD, batch_size=64,
                   out=str(out), workers=0, progress=False, splits=manifest_splits(REPO / "data_manifest.yaml"))
    options.update(overrides)
    return load_recipe(None, **options)


def build_frozen_store(config) -> BuiltStore:
    """Build `config` in this process and freeze it, as `mpt-data build` then `mpt-data freeze` would."""
    from mpt_data.build import build_store
    from mpt_data.freeze import freeze_store

    path = Path(build_store(config))
    return BuiltStore(path, freeze_store(path))


def integrity_manifest(store: Path) -> dict:
    """The store's integrity.json (written by freeze)."""
    from mpt_data import schema

    return json.loads((Path(store) / schema.INTEGRITY_MANIFEST).read_text())


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
                except FileExistsError:  # another worker already died for this test
                    return
                os.write(fd, str(key).encode())
                os.close(fd)
                os._exit(1)

    return KillOncePlugin(marker)
