"""The opencv rasteriser: coverage, depth order, culling, overlays."""

import numpy as np

from mpt_data import raster

K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])


def _square(z, half=0.2, cx=0.0):
    v = np.array([[cx - half, -half, z], [cx + half, -half, z], [cx + half, half, z], [cx - half, half, z]])
    # counter-clockwise seen from the camera at the origin (normal towards -z)
    f = np.array([[0, 2, 1], [0, 3, 2]])
    return v, f


def test_triangle_covers_its_pixels():
    v = np.array([[-0.2, -0.2, 1.0], [0.2, -0.2, 1.0], [-0.2, 0.2, 1.0]])  # pixels (30,30),(70,30),(30,70)
    f = np.array([[0, 2, 1]])
    img = raster.render_mesh(np.zeros((100, 100, 3), np.uint8), v, f, K, color=(255, 255, 255), ambient=1.0)
    drawn = img[..., 0] > 0
    assert drawn[35, 35] and drawn[40, 45]  # inside (row y, column x)
    assert not drawn[65, 65] and not drawn[10, 10]  # beyond the hypotenuse, outside
    # area of the right triangle with legs of 40 px, within the rasterisation edge
    assert abs(drawn.sum() - 0.5 * 40 * 40) < 2 * 40 + 10


def test_nearer_face_occludes_farther_whatever_the_order():
    vn, fn = _square(1.0)
    vf, ff = _square(2.0, half=0.5)
    for near_first in (True, False):
        parts = [(vn, fn, (0, 0, 255)), (vf, ff, (255, 0, 0))]
        if not near_first:
            parts = parts[::-1]
        verts = np.concatenate([parts[0][0], parts[1][0]])
        faces = np.concatenate([parts[0][1], parts[1][1] + 4])
        cols = np.array([parts[0][2]] * 2 + [parts[1][2]] * 2, dtype=float)
        img = raster.render_mesh(np.zeros((100, 100, 3), np.uint8), verts, faces, K, face_colors=cols, ambient=1.0)
        assert tuple(img[50, 50]) == (0, 0, 255)  # near square in the centre
        assert tuple(img[50, 27]) == (255, 0, 0)  # far square around it


def test_back_faces_are_culled_and_lambert_darkens_oblique_faces():
    v, f = _square(1.0)
    back = raster.render_mesh(np.zeros((100, 100, 3), np.uint8), v, f[:, ::-1], K)
    assert back.sum() == 0
    lit = raster.render_mesh(np.zeros((100, 100, 3), np.uint8), v, f, K, color=(200, 200, 200),
                             light_dir=(0, 0, 1), ambient=0.0)
    oblique = raster.render_mesh(np.zeros((100, 100, 3), np.uint8), v, f, K, color=(200, 200, 200),
                                 light_dir=(1, 0, 1), ambient=0.0)
    assert lit[50, 50, 0] == 200
    assert abs(int(oblique[50, 50, 0]) - 200 / np.sqrt(2)) <= 1


def test_look_at_and_project_agree_with_a_pinhole():
    R, t = raster.look_at((0, -3, 1), (0, 0, 1), (0, 0, 1))
    assert np.allclose(R @ R.T, np.eye(3))
    target = R @ np.array([0, 0, 1.0]) + t
    assert np.allclose(target, [0, 0, 3])  # straight ahead, 3 m
    above = R @ np.array([0, 0, 1.5]) + t
    uv = raster.project(above[None], K)[0]
    assert uv[1] < 50 and abs(uv[0] - 50) < 1e-9  # world up is image up
    assert np.allclose(uv, [50, 50 - 100 * 0.5 / 3])


def test_skeleton_keypoints_and_heatmaps_draw_where_asked():
    pts = np.array([[10.0, 10.0], [90.0, 10.0], [50.0, 90.0]])
    img = raster.draw_skeleton(np.zeros((100, 100, 3), np.uint8), pts, np.array([True, True, False]),
                               [(0, 1), (1, 2)], color=(0, 255, 0))
    assert img[10, 50, 1] > 0 and img[50, 70].sum() == 0  # hidden joint: its edge is not drawn
    img = raster.draw_keypoints(np.zeros((100, 100, 3), np.uint8), pts, None, color=(0, 0, 255), radius=3)
    assert img[90, 50, 2] > 0 and img[50, 50].sum() == 0
    hm = np.zeros((2, 50, 50), np.float32)
    hm[1, 10, 40] = 1.0
    out = raster.heatmap_overlay(np.full((100, 100, 3), 128, np.uint8), hm)
    assert np.abs(out[20, 80].astype(int) - 128).sum() > 50 and (out[80, 20] == 128).all()
