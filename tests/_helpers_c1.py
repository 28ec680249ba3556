"""Small real stores for the loader tests, made by the data side's own builder.

`build_test_stores` writes the synthetic body model and a few AMASS-format motions in
train, val and test subsets, then builds two stores with `mpt_data.build.build_store`
(in this process, no cluster): one frozen, one left unfrozen ("complete").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


NUM_VERTICES = 1500  # the smallest size the synthetic body model is tested at
CHUNK, SHARD, CAMERAS = 8, 32, 4

# subset, subject, name, frames, fps, gender: HumanEva is AMASS's val subset, SSM_synced test.
MOTIONS = (
    ("CMU", "01", "walk", 120, 60.0, "male"),
    ("CMU", "02", "wave", 130, 120.0, "female"),
    ("HumanEva", "S1", "jog", 60, 60.0, "male"),
    ("CMU", "03", "turn", 90, 60.0, "neutral"),
    ("SSM_synced", "s3", "bend", 40, 60.0, "female"),
    ("HumanEva", "S2", "box", 50, 60.0, "female"),
)
SPLITS = (("HumanEva", "val"), ("SSM_synced", "test"))


@dataclass(frozen=True)
class TestStores:
    frozen: Path
    unfrozen: Path


def build_test_stores(root: Path) -> TestStores:
    from _helpers_b2 import write_motion_files
    from mpt_data.build import build_store, load_recipe
    from mpt_data.freeze import freeze_store
    from _synth_cache import write_body_models

    body = root / "body_models"
    write_body_models(body, seed=0, num_vertices=NUM_VERTICES)
    amass = root / "amass"
    write_motion_files(amass, MOTIONS)
    stores = []
    for name in ("frozen", "unfrozen"):
        cfg = load_recipe(
            None, amass_root=str(amass), body_model_dir=str(body), target_fps=30.0, out=str(root / name),
            workers=0, chunk_meshes=CHUNK, shard_meshes=SHARD, cameras=CAMERAS, splits=SPLITS, progress=False,
            # the unfrozen store differs in content, so its fingerprint would differ too
            subsets_exclude=("SSM_synced",) if name == "unfrozen" else (),
        )
        stores.append(build_store(cfg))
    freeze_store(stores[0])
    return TestStores(frozen=Path(stores[0]), unfrozen=Path(stores[1]))
