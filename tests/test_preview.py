"""mpt-data preview: heatmaps peak at the stored joints, and those joints land on the drawn mesh."""

from __future__ import annotations

import numpy as np
import pytest

from mpt_data import preview as pv
from mpt_data import schema


def test_heatmaps_are_gaussians_peaking_at_the_joint():
    joints = np.array([[10.3, 20.8], [100.0, 50.0], [5.0, 5.0]], np.float32)
    hm = pv.joint_heatmaps(joints, np.array([True, True, False]))
    assert hm.shape == (3, 224, 224)
    r, c = np.unravel_index(hm[0].argmax(), hm[0].shape)
    assert (c, r) == (10, 20)  # the pixel [10, 11) x [20, 21) holds the joint
    y, x = 30, 12
    want = np.exp(-((x + 0.5 - 10.3) ** 2 + (y + 0.5 - 20.8) ** 2) / 9.0)
    assert hm[0, y, x] == pytest.approx(want, rel=1e-5)
    assert hm[2].max() == 0.0


def test_crop_intrinsics_equal_projection_then_crop():
    from mpt_data.cameras import h36m_s1_cameras, project, to_crop

    cam = h36m_s1_cameras()[0]
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 0.4 + np.array([0.0, 0.0, 0.9])
    uv, _ = project(pts, cam)
    crop = np.array([300.0, 200.0, 450.0], np.float32)
    kc = pv.crop_intrinsics(cam.K, crop)
    pc = pts @ cam.R.T + cam.t
    direct = (pc @ kc.T)[:, :2] / pc[:, 2:]
    np.testing.assert_allclose(direct, to_crop(uv, crop), atol=1e-3)


def test_stored_joints_land_on_the_drawn_mesh(reference_store):
    from mpt_data import raster

    path, _ = reference_store
    for index in (3, 71):
        views = pv.read_mesh_views(path, index)
        hits = total = 0
        for c in range(views.K.shape[0]):
            cam, kc = pv.mesh_in_crop(views, c)
            kc[:2, 2] -= schema.PIXEL_CENTRE
            blank = np.zeros((224, 224, 3), np.uint8)
            mask = raster.render_mesh(blank, cam, views.faces, kc, cull_back=False).any(-1)
            for (x, y), v in zip(views.joints2d[c], views.visible[c]):
                if v:
                    total += 1
                    hits += bool(mask[int(y), int(x)])
        assert total > 0 and hits >= 0.95 * total, (index, hits, total)


def test_preview_writes_one_panel_per_camera(reference_store, tmp_path):
    import cv2
    from click.testing import CliRunner

    from mpt_data.cli import main

    path, _ = reference_store
    out = tmp_path / "p.png"
    r = CliRunner().invoke(main, ["preview", str(path), "--mesh", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(out))
    side = 224 * pv.PANEL_SCALE
    # per camera a column of two panels (mesh and joints, heatmaps), the title above and the colour key below
    assert img.shape == (pv.TITLE_PX + 2 * side + pv.LEGEND_PX, 4 * side, 3)
    panel = img[pv.TITLE_PX : pv.TITLE_PX + side, :side]
    assert (np.abs(panel.astype(int) - 40).sum(-1) > 30).mean() > 0.05  # something drawn over the background
    key = img[-pv.LEGEND_PX :]
    from mpt_data.raster import SIDE_COLOURS

    for colour in SIDE_COLOURS.values():  # each side's swatch is in the key
        assert (np.abs(key.astype(int) - colour).max(-1) <= 2).sum() >= 100
    r = CliRunner().invoke(main, ["preview", str(path), "--mesh", "100000", "--out", str(out)])
    assert r.exit_code == 1 and "outside" in r.output


def test_sides_follow_the_joint_names_and_flip_pairs():
    from mpt_data import conventions
    from mpt_data.raster import edge_side, joint_sides

    for joint_set, names in conventions.JOINT_SETS.items():
        sides = joint_sides(names)
        paired = set()
        for a, b in conventions.FLIP_PAIRS[joint_set]:
            assert {sides[a], sides[b]} == {"left", "right"}, (joint_set, names[a], names[b])
            paired |= {a, b}
        unpaired = {sides[i] for i in range(len(names)) if i not in paired}  # the midline, or a hand's fingers
        assert unpaired <= {"centre"} | (set(conventions.HAND21_FINGERS) if joint_set == "hand21" else set()), joint_set
    coco = joint_sides(conventions.COCO_JOINTS)
    assert coco[:3] == ("centre", "left", "right")
    assert [edge_side(coco, a, b) for a, b in ((15, 13), (14, 12), (5, 6), (0, 1), (0, 2))] == \
        ["left", "right", "centre", "left", "right"]
    hand = joint_sides(conventions.HAND21_JOINTS)  # the wrist to a finger's base is drawn in that finger
    assert [edge_side(hand, a, b) for a, b in ((0, 1), (0, 17), (3, 4))] == ["thumb", "pinky", "thumb"]


def test_limbs_are_drawn_in_their_side_colour_and_heatmaps_peak_hot_at_the_joints(reference_store):
    from mpt_data.raster import SIDE_COLOURS

    path, _ = reference_store
    views = pv.read_mesh_views(path, 5)
    scale = pv.PANEL_SCALE
    for c in range(views.K.shape[0]):
        joints, heat = pv.render_panels(views, c)
        pts = views.joints2d[c] * scale - schema.PIXEL_CENTRE
        vis = views.visible[c]
        # COCO left knee 13 -> left ankle 15, right knee 14 -> right ankle 16: the middle of each shin line
        for (a, b), side in (((13, 15), "left"), ((14, 16), "right")):
            if not (vis[a] and vis[b]):
                continue
            x, y = np.round((pts[a] + pts[b]) / 2).astype(int)
            patch = joints[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)
            assert np.abs(patch - SIDE_COLOURS[side]).max(-1).min() <= 10, (c, side, patch)
        # the heatmap panel is red (the top of the JET colour map) on each visible joint ...
        for (x, y), v in zip(np.round(pts).astype(int), vis):
            if v and 20 <= y < heat.shape[0] and 0 <= x < heat.shape[1]:
                b_, g_, r_ = heat[y, x].astype(int)
                assert r_ > 100 and r_ > 3 * max(b_, g_), (c, x, y, heat[y, x])
        # ... and far from every joint the dimmed background, 40 x HEATMAP_BACKGROUND
        far = heat[-3, 3]
        assert np.linalg.norm(pts - [3, heat.shape[0] - 3], axis=1).min() > 10 * pv.SIGMA * scale
        np.testing.assert_array_equal(far, int(40 * pv.HEATMAP_BACKGROUND))
