"""A hand store built from a folder of MANO parameter files (`sources.kind: mano_params`) by the real builder,
with the synthetic MANO hand; then frozen and verified.

Inputs: four good files (a right hand, a left hand, a right and a left MANO fit relative to hands_mean, with
betas of 10, 4, (1, 10) and 12 values and frame rates 30 (the default), 30, 60 and 30) and five bad ones. At
30 fps they give 4 + 3 + 3 + 3 = 13 meshes x 4 cameras on the sphere rig, in 4-mesh chunks and 8-mesh shards.
Every expectation is computed here from the files themselves: the mirror is this file's own negation of the
y and z components, hands_mean is read from the model files we wrote, betas are padded here.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

CAMERAS = 4
NUM_BETAS = 10


class _OpensAFile:
    """An object whose unpickling would create `marker`: proof that no pickle in a parameter file is run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _pose(rng: np.random.Generator, frames: int) -> np.ndarray:
    pose = rng.normal(0.0, 0.3, (frames, 48))
    pose[:, :3] = rng.uniform(-2.0, 2.0, (frames, 3))  # any wrist orientation
    return pose


# name -> (subset/subject, keys). Good files first; the expected reason (a substring) of each bad one below.
def _files(rng: np.random.Generator, marker: str) -> dict[str, tuple[str, dict]]:
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _OpensAFile(marker), 1.0
    return {
        "right.npz": ("Hands/s1", dict(pose=_pose(rng, 4), betas=rng.normal(0, 0.5, 10),
                                       trans=rng.normal(0, 1, (4, 3)))),  # trans is never read
        "left.npz": ("Hands/s1", dict(pose=_pose(rng, 3), betas=rng.normal(0, 0.5, 4), side=np.array("left"))),
        "fit_right.npz": ("Fits/s2", dict(pose=_pose(rng, 5), betas=rng.normal(0, 0.5, (1, 10)),
                                          side=np.array(b"right"), fps=np.array(60.0), flat_hand_mean=np.array(False))),
        "fit_left.npz": ("Fits/s2", dict(pose=_pose(rng, 3).astype(np.float32), betas=rng.normal(0, 0.5, 12),
                                         side=np.array("Left"), flat_hand_mean=np.array(False))),
        "shape.npz": ("Bad/b", dict(pose=np.zeros((3, 45)), betas=np.zeros(10))),
        "nan.npz": ("Bad/b", dict(pose=np.where(np.arange(96).reshape(2, 48) == 50, np.nan, 0.0), betas=np.zeros(10))),
        "side.npz": ("Bad/b", dict(pose=np.zeros((2, 48)), betas=np.zeros(10), side=np.array("middle"))),
        "pickle.npz": ("Bad/b", dict(pose=np.zeros((2, 48)), betas=evil)),
        "poses.npz": ("Bad/b", dict(poses=np.zeros((2, 156)), betas=np.zeros(16))),
    }


BAD_REASONS = {
    "Bad/b/shape.npz": "pose has shape (3, 45), expected (T, 48)",
    "Bad/b/nan.npz": "NaN in pose",
    "Bad/b/side.npz": "side 'middle' is neither 'right' nor 'left'",
    "Bad/b/pickle.npz": "key 'betas' holds pickled Python objects",
    "Bad/b/poses.npz": "missing key 'pose' (this file has 'poses', like an AMASS motion file",
}


class ParamStore(NamedTuple):
    path: Path
    fingerprint: str
    root: Path
    hand_dir: Path
    marker: Path


def params_config(root: Path, hand_dir: Path, out: Path, **overrides):
    from mpt_data.recipe import load_recipe

    options = dict(name="params-test", source_kind="mano_params", amass_root=str(root), body_model_dir=str(hand_dir),
                   body_model_type="mano", num_betas=NUM_BETAS, rig="sphere", cameras=CAMERAS, target_fps=30.0,
                   chunk_meshes=4, shard_meshes=8, batch_size=64, out=str(out), workers=0, progress=False,
                   splits={"Fits": "val"})
    options.update(overrides)
    return load_recipe(None, **options)


@pytest.fixture(scope="module")
def param_store(tmp_path_factory) -> ParamStore:
    from mpt_data.build import build_store
    from mpt_data.freeze import freeze_store
    from mpt_data.synth.hand import write_hand_models

    base = tmp_path_factory.mktemp("hand_params")
    root, marker = base / "params", base / "unpickled.txt"
    for name, (folder, keys) in _files(np.random.default_rng(7), str(marker)).items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        np.savez(root / folder / name, **keys)
    hand_dir = base / "hand_models"
    write_hand_models(hand_dir, seed=0)
    path = Path(build_store(params_config(root, hand_dir, base / "store")))
    return ParamStore(path, freeze_store(path), root, hand_dir, marker)


def _rows(store: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    from mpt_data import schema

    return {r["path"]: r for r in pq.read_table(store / schema.SEQUENCES_TABLE).to_pylist()}


def _mirror(pose: np.ndarray) -> np.ndarray:
    """This test's own reflection across x = 0: every axis-angle (x, y, z) -> (x, -y, -z)."""
    out = np.array(pose, np.float64).reshape(pose.shape[0], 16, 3)
    out[:, :, 1:] *= -1.0
    return out.reshape(pose.shape[0], 48)


def _hands_mean(hand_dir: Path, side: str) -> np.ndarray:
    with open(hand_dir / f"MANO_{side.upper()}.pkl", "rb") as f:  # our own synthetic file: plain arrays
        return np.asarray(pickle.load(f)["hands_mean"], np.float64)


def test_good_files_build_and_bad_ones_are_skipped_with_their_reason(param_store):
    from mpt_data import schema

    rows = _rows(param_store.path)
    ok = {p: r for p, r in rows.items() if r["status"] == "ok"}
    assert sorted(ok) == ["Fits/s2/fit_left.npz", "Fits/s2/fit_right.npz", "Hands/s1/left.npz", "Hands/s1/right.npz"]
    assert {p: r["fps"] for p, r in ok.items()} == {"Fits/s2/fit_left.npz": 30.0, "Fits/s2/fit_right.npz": 60.0,
                                                     "Hands/s1/left.npz": 30.0, "Hands/s1/right.npz": 30.0}
    assert {p: (r["frames"], r["sampled"]) for p, r in ok.items()} == {
        "Fits/s2/fit_left.npz": (3, 3), "Fits/s2/fit_right.npz": (5, 3), "Hands/s1/left.npz": (3, 3),
        "Hands/s1/right.npz": (4, 4)}
    assert all(r["gender"] == "" for r in ok.values())
    skipped = {p: r["reason"] for p, r in rows.items() if r["status"] != "ok"}
    assert set(skipped) == set(BAD_REASONS)
    for path, reason in BAD_REASONS.items():
        assert reason in skipped[path] and "\n" not in skipped[path], (path, skipped[path])
        assert rows[path]["sampled"] == 0 and rows[path]["first_mesh"] == -1
    assert not param_store.marker.exists(), "a pickle in a parameter file was run"

    g = zarr.open_group(str(param_store.path), mode="r")
    attrs = dict(g.attrs)
    assert attrs["counts"]["meshes"] == 13 and attrs["counts"]["views"] == 13 * CAMERAS
    assert attrs["counts"]["splits"] == {"train": 7, "val": 6, "test": 0} and attrs["counts"]["skipped"] == 5
    assert attrs["recipe"]["source_kind"] == "mano_params" and "hands" not in attrs["recipe"]
    model = attrs["body_model"]
    assert model["type"] == "mano" and model["source"] == "mano_params" and "parameter files" in model["betas"]
    assert g[schema.POSE].shape == (13, 48) and g[schema.BETAS].shape == (13, NUM_BETAS)
    assert g[schema.VERTICES].shape == (13, 778, 3) and g[schema.JOINTS2D].shape == (13, CAMERAS, 21, 2)


def test_each_mesh_is_the_files_pose_as_a_flat_right_hand_posed_independently(param_store):
    """Stored pose = the file's pose, mirrored (this test's own y, z negation) for a left hand, hands_mean added
    for a fit; betas = the file's, zero-padded or truncated to 10; vertices and joints = the right model's
    forward of those; a left hand's vertices are also the left model's own mesh of the raw pose, reflected."""
    from mpt_data import schema
    from mpt_data.hand import HandModel, HandModelConfig

    g = zarr.open_group(str(param_store.path), mode="r")
    right = HandModel.load(HandModelConfig(model_dir=str(param_store.hand_dir)), "right")
    checked = 0
    for path, row in _rows(param_store.path).items():
        if row["status"] != "ok":
            continue
        with np.load(param_store.root / path) as f:
            raw = np.asarray(f["pose"], np.float64)
            side = f["side"].item() if "side" in f.files else "right"
            side = (side.decode() if isinstance(side, bytes) else side).lower()
            flat = bool(f["flat_hand_mean"]) if "flat_hand_mean" in f.files else True
            file_betas = np.asarray(f["betas"], np.float64).reshape(-1)
        first, count = row["first_mesh"], row["sampled"]
        frames = np.asarray(g[schema.FRAME][first:first + count])
        fps = 60.0 if "fit_right" in path else 30.0
        np.testing.assert_array_equal(frames, np.floor(np.arange(count) * fps / 30.0).astype(int))
        full = raw[frames].copy()
        if not flat:  # relative to the file's own model's mean: MANO_LEFT's for a left hand
            full[:, 3:] += _hands_mean(param_store.hand_dir, side)
        want_pose = _mirror(full) if side == "left" else full
        want_betas = np.zeros(NUM_BETAS)
        want_betas[:min(NUM_BETAS, file_betas.size)] = file_betas[:NUM_BETAS]

        pose = np.asarray(g[schema.POSE][first:first + count], np.float64)
        betas = np.asarray(g[schema.BETAS][first:first + count], np.float64)
        np.testing.assert_allclose(pose, want_pose, atol=1e-6)
        np.testing.assert_allclose(betas, np.repeat(want_betas[None], count, 0), atol=1e-7)
        out = right.forward(want_pose, np.repeat(want_betas[None], count, 0))
        verts = np.asarray(g[schema.VERTICES][first:first + count]).astype(np.float64) * 1e-4
        assert np.abs(verts - out["vertices"]).max() < 0.05e-3 + 1e-6
        joints = np.asarray(g[f"{schema.JOINTS_GROUP}/hand21"][first:first + count])
        np.testing.assert_allclose(joints, out["hand21"], atol=1e-5)
        np.testing.assert_allclose(joints[:, 0], 0.0, atol=1e-6)  # the wrist is the root
        if side == "left":
            left = HandModel.load(HandModelConfig(model_dir=str(param_store.hand_dir), flat_hand_mean=flat), "left")
            own = left.forward(raw[frames], np.repeat(want_betas[None], count, 0))["vertices"] * np.array([-1.0, 1, 1])
            assert np.abs(verts - own).max() < 0.05e-3 + 1e-5
        checked += count
    assert checked == 13


def test_the_store_freezes_and_verifies(param_store):
    from mpt_data.cli import main

    assert len(param_store.fingerprint) == 64
    res = CliRunner().invoke(main, ["verify", str(param_store.path)])
    assert res.exit_code == 0 and res.output.rstrip().endswith("OK"), res.output
    assert f"computed {param_store.fingerprint}" in res.output


def test_read_params_refuses_bad_values_in_one_line(tmp_path):
    from mpt_data.amass import MotionError
    from mpt_data.mano_params import read_params

    mean = np.zeros(45)
    good = dict(pose=np.zeros((2, 48)), betas=np.zeros(10))
    cases = {
        "fps0.npz": (dict(good, fps=np.array(0.0)), "fps missing or zero"),
        "betas_t.npz": (dict(good, betas=np.zeros((2, 10))), "betas has shape (2, 10), expected (B,) or (1, B)"),
        "flag.npz": (dict(good, flat_hand_mean=np.array("yes")), "flat_hand_mean is not a single boolean"),
        "spin.npz": (dict(good, pose=np.full((2, 48), 20.0)), "rad rotation (frame 0, joint 0)"),
        "empty_t.npz": (dict(good, pose=np.zeros((0, 48))), "zero frames"),
        "nobetas.npz": (dict(pose=np.zeros((2, 48))), "missing key 'betas'"),
    }
    for name, (keys, reason) in cases.items():
        np.savez(tmp_path / name, **keys)
        with pytest.raises(MotionError) as err:
            read_params(tmp_path / name, tmp_path, hands_mean=mean)
        assert reason in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "zero.npz").write_bytes(b"")
    (tmp_path / "raw.npz").write_bytes(pickle.dumps({"pose": 1}))
    for name, reason in (("folder.npz", "not a regular file (a directory)"), ("zero.npz", "empty file"),
                         ("raw.npz", "not a zip archive (pickled Python data")):
        with pytest.raises(MotionError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            read_params(tmp_path / name, tmp_path, hands_mean=mean)
    # an override by subset replaces the file's rate; the default is 30 fps
    (tmp_path / "S").mkdir()
    np.savez(tmp_path / "S" / "a.npz", **good)
    assert read_params(tmp_path / "S" / "a.npz", tmp_path, hands_mean=mean).fps == 30.0
    assert read_params(tmp_path / "S" / "a.npz", tmp_path, {"S": 12.5}, hands_mean=mean).fps == 12.5


def test_recipe_errors_are_one_line_and_amass_recipes_record_no_source_kind(tmp_path):
    from mpt_data.recipe import RecipeError, load_recipe

    base = dict(amass_root=str(tmp_path), body_model_dir=str(tmp_path), target_fps=5.0, rig="sphere", cameras=4)
    for options, message in (
        (dict(source_kind="mano_params"), "sources.kind mano_params needs body_model.type mano (it is 'smplh')"),
        (dict(source_kind="mano_params", body_model_type="mano", hands=("right",)),
         "hands ['right'] is for sources.kind amass; remove it for sources.kind mano_params"),
        (dict(source_kind="fits", body_model_type="mano"), "sources.kind must be one of ('amass', 'mano_params')"),
    ):
        with pytest.raises(RecipeError) as err:
            load_recipe(None, **base, **options).validate()
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    load_recipe(None, **base, source_kind="mano_params", body_model_type="mano").validate()  # no hands: fine
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sources: {kind: mano_params, amass_root: fits}\nbody_model: {type: mano}\n")
    cfg = load_recipe(recipe)
    assert cfg.source_kind == "mano_params" and cfg.amass_root == "fits" and cfg.hands == ()
    assert cfg.recipe()["source_kind"] == "mano_params"
    # the default kind is not recorded, so AMASS recipes keep the recipe (and hash) they had before
    amass = load_recipe(None, **base)
    assert amass.source_kind == "amass" and "source_kind" not in amass.recipe()
