"""A hand store made by the real builder from synthetic inputs: the test motions (SMPL+H, with finger motion)
and the synthetic MANO-format hand model, built with `body_model.type: mano`, `hands: [right, left]` and cameras on
a sphere; then frozen, verified, summarised and previewed through the same commands as a body store.

Sizes: the 5 good test motions sampled at 20 fps give 135 frames, so 270 meshes (156 train, 60 val, 54 test)
x 4 cameras, in 8-mesh chunks and 32-mesh shards (a shard may end between the two hands of a frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from motion_files import GOOD, write_motion_files
from store_builds import REPO

HAND_CAMERAS = 4
FRAMES = 135  # sampled frames of GOOD at 20 fps (see store_builds.small_config: 135 body meshes)


class HandStore(NamedTuple):
    path: Path
    fingerprint: str
    amass_root: Path
    hand_dir: Path


def hand_config(amass_root: Path, hand_dir: Path, out: Path, **overrides):
    """The hand recipe on the test inputs: 20 fps, right + mirrored left hand, 4 cameras on a sphere."""
    from mpt_data.build import load_recipe, manifest_splits

    options = dict(name="hands-test", amass_root=str(amass_root), body_model_dir=str(hand_dir),
                   body_model_type="mano", num_betas=10, hands=("right", "left"), rig="sphere",
                   target_fps=20.0, cameras=HAND_CAMERAS, chunk_meshes=8, shard_meshes=32, batch_size=64,
                   out=str(out), workers=0, progress=False, splits=manifest_splits(REPO / "data_manifest.yaml"))
    options.update(overrides)
    return load_recipe(None, **options)


def build_hand_store(root: Path, motions: str = "test") -> HandStore:
    """Write the inputs under `root`, build the hand store in this process and freeze it. motions "test": the 5
    good test motions at 20 fps (small finger motion); "synth": 7 motions of 2 s from `mpt-data synth`'s
    generator (fingers curl and open) at 10 fps."""
    from mpt_data.build import build_store
    from mpt_data.freeze import freeze_store
    from mpt_data.synth.hand import write_hand_models
    from mpt_data.synth.motion import write_motions

    amass = root / "amass"
    if motions == "test":
        write_motion_files(amass, GOOD)
    else:
        write_motions(amass, seed=0, num_sequences=7, seconds=2.0, smplx_file=False)
    hand_dir = root / "hand_models"
    write_hand_models(hand_dir, seed=0)
    path = Path(build_store(hand_config(amass, hand_dir, root / "store",
                                        **({} if motions == "test" else {"target_fps": 10.0}))))
    return HandStore(path, freeze_store(path), amass, hand_dir)


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory) -> HandStore:
    return build_hand_store(tmp_path_factory.mktemp("hand_store"))


def test_hand_store_has_21_heatmaps_778_vertices_and_two_meshes_per_frame(hand_store):
    from mpt_data import schema

    g = zarr.open_group(str(hand_store.path), mode="r")
    attrs = dict(g.attrs)
    n = FRAMES * 2
    assert attrs["heatmap_joint_set"] == "hand21" and attrs["joint_sets"] == {"hand21": 21}
    assert attrs["counts"]["meshes"] == n and attrs["counts"]["views"] == n * HAND_CAMERAS
    assert attrs["counts"]["vertices"] == 778 and attrs["counts"]["splits"] == {"train": 156, "val": 60, "test": 54}
    model = attrs["body_model"]
    assert model["type"] == "mano" and model["num_vertices"] == 778 and model["num_joints"] == 16
    assert model["sides"] == ["right", "left"] and any(k.startswith("right:MANO_RIGHT") for k in model["files"])
    assert g[schema.VERTICES].shape == (n, 778, 3) and g[f"{schema.JOINTS_GROUP}/hand21"].shape == (n, 21, 3)
    assert g[schema.JOINTS2D].shape == (n, HAND_CAMERAS, 21, 2) and g[schema.VISIBLE].shape == (n, HAND_CAMERAS, 21)
    assert g[schema.POSE].shape == (n, 48) and not np.asarray(g[schema.BETAS][:]).any()  # zero betas
    frame = np.asarray(g[schema.FRAME][:])
    seq = np.asarray(g[schema.SEQUENCE][:])
    np.testing.assert_array_equal(frame[0::2], frame[1::2])  # right and left hand of the same frame
    np.testing.assert_array_equal(seq[0::2], seq[1::2])
    # coarse levels from topology.coarse_hierarchy: 778 -> ~195 -> ~49
    l1, l2 = (g[f"topology/level{i}/vertex_ids"].shape[0] for i in (1, 2))
    assert abs(l1 - 778 / 4) < 20 and abs(l2 - 778 / 16) < 10, (l1, l2)


def test_each_mesh_is_its_hand_from_the_smplh_pose_wrist_at_the_origin(hand_store):
    """Mesh 2i is the right hand of its frame, mesh 2i+1 the left hand mirrored into a right one: the stored
    pose is hand_pose_from_smplh of the file's pose, the vertices the MANO forward of it (within the 0.1 mm
    quantisation), root-centred at the wrist."""
    import pyarrow.parquet as pq

    from mpt_data import schema
    from mpt_data.amass import read_motion
    from mpt_data.hand import HandModel, HandModelConfig, hand_pose_from_smplh

    g = zarr.open_group(str(hand_store.path), mode="r")
    rows = pq.read_table(hand_store.path / schema.SEQUENCES_TABLE).to_pylist()
    model = HandModel.load(HandModelConfig(model_dir=str(hand_store.hand_dir)), "right")
    checked = 0
    for row in rows:
        if row["status"] != "ok":
            continue
        motion = read_motion(hand_store.amass_root / row["path"], hand_store.amass_root)
        first, count = row["first_mesh"], row["sampled"]
        assert count % 2 == 0
        idx = np.arange(first, first + count)
        frames = np.asarray(g[schema.FRAME][first:first + count])
        pose = np.asarray(g[schema.POSE][first:first + count])
        for k, side in enumerate(("right", "left")):
            want = hand_pose_from_smplh(motion.poses[frames[k::2]], side)
            np.testing.assert_allclose(pose[k::2], want, atol=1e-6)
        out = model.forward(pose, np.zeros((count, model.num_betas), np.float32))
        verts = np.asarray(g[schema.VERTICES][first:first + count]).astype(np.float64) * 1e-4
        assert np.abs(verts - out["vertices"]).max() < 0.06e-3 + 1e-6
        joints = np.asarray(g[f"{schema.JOINTS_GROUP}/hand21"][first:first + count])
        np.testing.assert_allclose(joints, out["hand21"], atol=1e-6)
        np.testing.assert_allclose(joints[:, 0], 0.0, atol=1e-6)  # the wrist is the root
        checked += len(idx)
    assert checked == FRAMES * 2
    # the two hands of a frame are different meshes (the test motions move both hands' fingers differently)
    v = np.asarray(g[schema.VERTICES][:2]).astype(np.float64) * 1e-4
    assert np.abs(v[0] - v[1]).max() > 1e-3


def test_views_lie_inside_the_crop_computed_independently(hand_store):
    """Every vertex, projected through the stored camera and crop (placed at the rig's subject position), lies
    inside the 224 px crop with the 1.2 margin; the stored 2D joints are that projection of the 3D joints."""
    from mpt_data import schema

    g = zarr.open_group(str(hand_store.path), mode="r")
    K, R, t = (np.asarray(g[a][:], np.float64) for a in (schema.CAMERA_K, schema.CAMERA_R, schema.CAMERA_T))
    pos = np.asarray(g[schema.CAMERAS].attrs[schema.ATTR_SUBJECT_POSITION], np.float64)
    for m in (0, 1, 77, 200, 269):
        verts = np.asarray(g[schema.VERTICES][m]).astype(np.float64) * 1e-4 + pos
        joints = np.asarray(g[f"{schema.JOINTS_GROUP}/hand21"][m], np.float64) + pos
        crop = np.asarray(g[schema.CROP][m], np.float64)
        j2d = np.asarray(g[schema.JOINTS2D][m], np.float64)
        vis = np.asarray(g[schema.VISIBLE][m])
        for c in range(HAND_CAMERAS):
            def to_crop(x):
                cam = x @ R[c].T + t[c]
                uv = cam[:, :2] / cam[:, 2:3] @ K[c][:2, :2].T + K[c][:2, 2]
                return (uv - crop[c, :2]) * 224.0 / crop[c, 2], cam[:, 2]
            uv, depth = to_crop(verts)
            assert (depth > 0).all()
            lo, hi = 224 * (1 - 1 / 1.2) / 2, 224 * (1 + 1 / 1.2) / 2
            assert uv.min() > lo - 0.5 and uv.max() < hi + 0.5, (m, c, uv.min(), uv.max())
            ju, _ = to_crop(joints)
            np.testing.assert_allclose(j2d[c], ju, atol=2e-2)
            inside = ((ju >= 0) & (ju < 224)).all(-1)
            np.testing.assert_array_equal(vis[c], inside)
    assert np.asarray(g[schema.VISIBLE][:]).mean() > 0.95  # the whole hand is in its crop


def test_freeze_verify_info_and_preview_commands_work_on_a_hand_store(hand_store, tmp_path):
    import cv2

    from mpt_data.cli import main
    from mpt_data.preview import LEGEND_PX, PANEL_SCALE, TITLE_PX, joint_heatmaps, read_mesh_views

    runner = CliRunner()
    res = runner.invoke(main, ["verify", str(hand_store.path)])
    assert res.exit_code == 0 and res.output.rstrip().endswith("OK"), res.output
    assert f"computed {hand_store.fingerprint}" in res.output
    res = runner.invoke(main, ["info", str(hand_store.path)])
    assert res.exit_code == 0, res.output
    assert "vertices 778" in res.output and "hand21 (21)" in res.output and "heatmaps hand21" in res.output
    assert "model mano" in res.output
    png = tmp_path / "hand.png"
    res = runner.invoke(main, ["preview", str(hand_store.path), "--mesh", "1", "--out", str(png)])
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(png))
    side = 224 * PANEL_SCALE
    assert img.shape[1] == HAND_CAMERAS * side and img.shape[0] > 2 * side
    views = read_mesh_views(hand_store.path, 1)
    assert views.joint_set == "hand21" and views.joints2d.shape == (HAND_CAMERAS, 21, 2)
    for c in range(HAND_CAMERAS):  # each visible joint's heatmap peak is hot in the heatmap panel, at its joint
        heat = img[TITLE_PX + side:TITLE_PX + 2 * side, c * side:(c + 1) * side].astype(int)
        maps = joint_heatmaps(views.joints2d[c], views.visible[c])
        assert int((maps.reshape(21, -1).max(1) > 0.9).sum()) == int(views.visible[c].sum()) >= 18
        for x, y in views.joints2d[c][views.visible[c]]:
            px, py = int(x * PANEL_SCALE), int(y * PANEL_SCALE)
            b, gr, r = heat[py, px]
            assert r > 100 and r > b + 60 and r > gr + 60, (c, x, y, heat[py, px])  # JET's hot end (red)
    # the skeleton is coloured by finger, and the key names the fingers, not a body's sides
    from mpt_data.conventions import HAND21_FINGERS, HAND21_JOINTS
    from mpt_data.raster import FINGER_COLOURS, SIDE_COLOURS, joint_sides

    assert joint_sides(HAND21_JOINTS) == ("centre",) + tuple(f for f in HAND21_FINGERS for _ in range(4))
    assert len(set(FINGER_COLOURS.values()) | {SIDE_COLOURS["centre"]}) == 6
    key, joints = img[-LEGEND_PX:].astype(int), img[TITLE_PX:TITLE_PX + side].astype(int)
    for colour in list(FINGER_COLOURS.values()) + [SIDE_COLOURS["centre"]]:
        assert (np.abs(key - colour).max(-1) <= 2).sum() >= 100, colour  # its swatch
        assert (np.abs(joints - colour).max(-1) <= 2).sum() >= 20, colour  # drawn over the mesh
    for colour in (SIDE_COLOURS["left"], SIDE_COLOURS["right"]):
        assert (np.abs(key - colour).max(-1) <= 2).sum() < 100  # no swatch (the heatmap bar may pass near it)


def test_a_hand_recipe_needs_its_sides_and_a_body_recipe_refuses_them(tmp_path):
    from mpt_data.recipe import RecipeError, load_recipe

    base = dict(amass_root=str(tmp_path), body_model_dir=str(tmp_path), target_fps=5.0)
    with pytest.raises(RecipeError, match="hands must list distinct sides"):
        load_recipe(None, body_model_type="mano", **base).validate()
    with pytest.raises(RecipeError, match="hands must list distinct sides"):
        load_recipe(None, body_model_type="mano", hands=("right", "right"), **base).validate()
    with pytest.raises(RecipeError, match="needs body_model.type mano"):
        load_recipe(None, hands=("right",), **base).validate()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("body_model: {type: mano}\nhands: [left]\n")
    assert load_recipe(recipe).hands == ("left",)
    assert load_recipe(REPO / "pipelines" / "amass-hands.yaml").hands == ("right", "left")


def test_the_plan_makes_one_mesh_per_side_and_keeps_indices_a_function_of_files_and_recipe():
    from mpt_data.plan import plan_build
    from mpt_data.recipe import load_recipe

    rows = [{"path": f"CMU/0{i}/m_poses.npz", "subset": "CMU", "subject": f"0{i}", "gender": "male", "fps": 60.0,
             "frames": 60 * (i + 1), "size": 1, "sha256": "", "status": "ok", "reason": ""} for i in range(3)]
    cfg = load_recipe(None, amass_root="/x", body_model_type="mano", hands=("right", "left"), target_fps=10.0,
                      chunk_meshes=4, shard_meshes=8)
    out, parts, n = plan_build(cfg, [dict(r) for r in rows])
    assert n == 2 * (10 + 20 + 30) and [r["sampled"] for r in out] == [20, 40, 60]
    meshes = [(seg.row, f, s) for p in parts for seg in p.segments for f, s in zip(seg.frames, seg.sides)]
    assert len(meshes) == n
    assert meshes[:4] == [(0, 0, 0), (0, 0, 1), (0, 6, 0), (0, 6, 1)]  # frame 0 right, left; frame 6 right, left
    again = plan_build(cfg, [dict(r) for r in reversed(rows)])
    assert again[1] == parts and again[2] == n
