"""Virtual cameras (mpt_data.cameras): H36M metadata conversion, rigs, projection, crops."""

from __future__ import annotations

import numpy as np
import pytest

from mpt_data import cameras as cm
from mpt_data.schema import CROP_SIZE

H36M_IDS = ("54138969", "55011271", "58860488", "60457274")


def _standing_points(n: int = 400, seed: int = 0) -> np.ndarray:
    """Root-centred points filling a standing person's volume, z up (feet at -0.9, head +0.85)."""
    rng = np.random.default_rng(seed)
    return rng.uniform([-0.35, -0.2, -0.9], [0.35, 0.2, 0.85], (n, 3))


def _pinhole(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """An independent per-point pinhole, written out by hand."""
    out = []
    for X in points:
        xc = [sum(R[i, j] * X[j] for j in range(3)) + t[i] for i in range(3)]
        u = K[0, 0] * xc[0] / xc[2] + K[0, 1] * xc[1] / xc[2] + K[0, 2]
        v = K[1, 1] * xc[1] / xc[2] + K[1, 2]
        out.append((u, v))
    return np.array(out)


def test_h36m_cameras_follow_the_metadata_convention():
    cams = cm.h36m_s1_cameras()
    assert tuple(c.name for c in cams) == H36M_IDS
    for cam, row in zip(cams, cm._H36M_S1):
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.R) == pytest.approx(1.0)
        # the metadata's translation is the camera centre in world millimetres
        np.testing.assert_allclose(cam.center, np.array(row[5]) / 1000, atol=1e-9)
        # the metadata's quaternion rotates camera axes into the world: its matrix is R^T
        w, x, y, z = np.array(row[4]) / np.linalg.norm(row[4])
        first_col = np.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)])
        np.testing.assert_allclose(cam.R[0], first_col, atol=1e-9)
        assert cam.K[0, 0] > 1000 and cam.image_size[0] == 1000
        # cameras hang at about 1.5 m and look slightly down (world z up; image y down)
        assert 1.4 < cam.center[2] < 1.7 and cam.R[2, 2] < 0 and cam.R[1, 2] < 0


def test_projection_matches_an_independent_pinhole():
    pts = cm.SUBJECT_POSITION + _standing_points(50)
    for cam in cm.camera_rig(8):
        uv, depth = cm.project(pts, cam)
        np.testing.assert_allclose(uv, _pinhole(pts, cam.K, cam.R, cam.t), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(depth, pts @ cam.R[2] + cam.t[2], rtol=1e-5)
    # batched shapes
    uv, depth = cm.project(np.broadcast_to(pts, (3, 2) + pts.shape), cam)
    assert uv.shape == (3, 2, 50, 2) and depth.shape == (3, 2, 50)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_every_camera_sees_the_placed_body(n):
    rig = cm.camera_rig(n)
    assert len(rig) == n
    pts = cm.SUBJECT_POSITION + _standing_points()
    for cam in rig:
        uv, depth = cm.project(pts, cam)
        w, h = cam.image_size
        assert (depth > 2.0).all()
        assert (uv >= 0).all() and (uv[:, 0] < w).all() and (uv[:, 1] < h).all(), cam.name
        # the head is above the feet in the picture
        head = cm.project(cm.SUBJECT_POSITION + [0, 0, 0.8], cam)[0]
        feet = cm.project(cm.SUBJECT_POSITION + [0, 0, -0.9], cam)[0]
        assert head[1] < feet[1]


def test_rig_of_eight_interpolates_neighbours():
    four, eight = cm.camera_rig(4), cm.camera_rig(8)
    assert sorted(c.name for c in four) == sorted(H36M_IDS)
    assert [c.name for c in eight[::2]] == [c.name for c in four]
    centre = cm.SUBJECT_POSITION
    for i in range(4):
        a, mid, b = eight[2 * i], eight[2 * i + 1], four[(i + 1) % 4]
        assert mid.name == f"{a.name}+{b.name}"
        q = cm.matrix_to_quat(mid.R)
        assert np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(cm.quat_to_matrix(q), mid.R, atol=1e-12)
        # rotation halfway: equal geodesic angles to both neighbours, summing to theirs
        ang = lambda r1, r2: np.arccos(np.clip((np.trace(r1 @ r2.T) - 1) / 2, -1, 1))  # noqa: E731
        assert ang(a.R, mid.R) == pytest.approx(ang(mid.R, b.R), abs=1e-9)
        assert ang(a.R, mid.R) + ang(mid.R, b.R) == pytest.approx(ang(a.R, b.R), abs=1e-9)
        # position on the ring between them: azimuth in the shorter arc, distance and height between
        az = lambda c: np.arctan2(*(c.center - centre)[[1, 0]])  # noqa: E731
        gap = (az(b) - az(a)) % (2 * np.pi)
        gap = gap - 2 * np.pi if gap > np.pi else gap
        assert (az(mid) - az(a)) % (2 * np.pi) == pytest.approx(gap / 2 % (2 * np.pi), abs=1e-9)
        r = lambda c: np.hypot(*(c.center - centre)[:2])  # noqa: E731
        assert min(r(a), r(b)) <= r(mid) <= max(r(a), r(b))
        assert min(a.center[2], b.center[2]) <= mid.center[2] <= max(a.center[2], b.center[2])
        np.testing.assert_allclose(mid.K, (a.K + b.K) / 2)
    with pytest.raises(ValueError, match="cameras"):
        cm.camera_rig(3)


def test_crop_rule_round_trip_and_visibility():
    rng = np.random.default_rng(1)
    uv = rng.uniform(100, 600, (5, 200, 2)).astype(np.float32)
    crop = cm.person_crop(uv)
    assert crop.shape == (5, 3)
    lo, hi = uv.min(1), uv.max(1)
    np.testing.assert_allclose(crop[:, 2], 1.2 * (hi - lo).max(1), rtol=1e-6)
    np.testing.assert_allclose(crop[:, :2] + crop[:, 2:] / 2, (lo + hi) / 2, rtol=1e-6)
    inside = cm.to_crop(uv, crop)
    assert (inside >= 0).all() and (inside < CROP_SIZE).all()
    # the longer side spans 224 / 1.2 pixels, centred
    span = inside.max(1) - inside.min(1)
    np.testing.assert_allclose(span.max(1), CROP_SIZE / 1.2, rtol=1e-5)
    np.testing.assert_allclose(cm.from_crop(inside, crop), uv, rtol=1e-5, atol=1e-3)
    vis = cm.visibility(np.array([[10.0, 10.0], [-1.0, 5.0], [5.0, 224.0], [5.0, 5.0]]), np.array([1.0, 1.0, 1.0, -1.0]))
    np.testing.assert_array_equal(vis, [True, False, False, False])


def test_project_views_batches_meshes_and_cameras():
    rng = np.random.default_rng(2)
    verts = np.stack([_standing_points(300, seed=s) for s in range(4)]).astype(np.float32)
    joints = verts[:, :17] + rng.normal(0, 0.01, (4, 17, 3)).astype(np.float32)
    rig = cm.camera_rig(8)
    views = cm.project_views(joints, verts, rig)
    assert views.joints2d.shape == (4, 8, 17, 2) and views.visible.shape == (4, 8, 17) and views.crop.shape == (4, 8, 3)
    cam = rig[3]
    uv = _pinhole(cm.SUBJECT_POSITION + joints[2], cam.K, cam.R, cam.t)
    crop = cm.person_crop(cm.project(cm.SUBJECT_POSITION + verts[2], cam)[0])
    np.testing.assert_allclose(views.joints2d[2, 3], (uv - crop[:2]) * CROP_SIZE / crop[2], atol=1e-2)
    np.testing.assert_array_equal(views.visible, (views.joints2d >= 0).all(-1) & (views.joints2d < CROP_SIZE).all(-1))
    assert views.visible[:, :, 0].all()


# --------------------------------------------------------------------------------------------
# The face rule and look-at cameras

# A head facing +y, z up, centred at the origin (so the person's right is +x): nose, left eye, right eye,
# left ear, right ear (COCO order), roughly an adult's proportions in metres.
HEAD = np.array([[0.0, 0.10, -0.01], [-0.032, 0.085, 0.03], [0.032, 0.085, 0.03], [-0.075, 0.0, 0.0],
                 [0.075, 0.0, 0.0]])


def test_face_rule_hides_the_far_side_of_the_head():
    at = np.array([0.4, -1.0, 1.6])  # anywhere: the rule depends only on relative positions
    head = HEAD + at
    behind, front = at + [0.0, -3.0, 0.2], at + [0.0, 3.0, 0.2]
    left, right = at + [-3.0, 0.0, 0.0], at + [3.0, 0.0, 0.0]
    np.testing.assert_array_equal(cm.face_facing(head, behind), [False, False, False, True, True])
    np.testing.assert_array_equal(cm.face_facing(head, front), [True] * 5)
    np.testing.assert_array_equal(cm.face_facing(head, left), [True, True, False, True, False])
    np.testing.assert_array_equal(cm.face_facing(head, right), [True, False, True, False, True])
    # Broadcasting: (2 heads, 4 cameras) at once gives the same answers.
    both = cm.face_facing(np.stack([head, head])[:, None], np.stack([behind, front, left, right])[None])
    assert both.shape == (2, 4, 5)
    np.testing.assert_array_equal(both[1, 2], [True, True, False, True, False])
    # The threshold, written out: the right ear seen 100 degrees from its outward direction is facing
    # (cos -0.17 >= -0.2), at 105 degrees it is not (cos -0.26).
    for deg, facing in ((100.0, True), (105.0, False)):
        a = np.deg2rad(deg)
        cam = HEAD[4] + 1e3 * np.array([np.cos(a), np.sin(a), 0.0])  # far away: the ray's angle is deg
        assert bool(cm.face_facing(HEAD, cam)[4]) is facing
    assert cm.FACE_FACING_MIN_COS == -0.2


def test_face_rows_of_joint_sets():
    from mpt_data import conventions as cv

    assert cm.face_rows(cv.JOINT_SETS["coco17"]) == (0, 1, 2, 3, 4)
    assert cm.face_rows(cv.JOINT_SETS["smpl24"]) is None


def test_look_at_rotation_points_the_camera_at_its_target():
    centre, target = np.array([3.0, -2.0, 2.5]), np.array([0.2, 0.1, 0.9])
    K = np.array([[800.0, 0.0, 320.0], [0.0, 810.0, 240.0], [0.0, 0.0, 1.0]])
    for roll in (0.0, 7.0, -30.0):
        R = cm.look_at_rotation(centre, target, roll_deg=roll)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        cam = cm.Camera("c", K, R, -R @ centre, (640, 480))
        np.testing.assert_allclose(cam.center, centre, atol=1e-12)
        uv, depth = cm.project(target[None], cam)
        np.testing.assert_allclose(uv[0], [320.0, 240.0], atol=1e-3)  # the target lands on the principal point
        assert depth[0] == pytest.approx(np.linalg.norm(target - centre), rel=1e-6)
        above = cm.project((target + [0.0, 0.0, 0.5])[None], cam)[0][0] - [320.0, 240.0]
        # world up is up in the image (smaller v); a positive roll turns the camera clockwise seen from behind
        # it, so the scene (world up) turns counter-clockwise in the image
        assert np.rad2deg(np.arctan2(above[0], -above[1])) == pytest.approx(-roll, abs=0.5)
    with pytest.raises(ValueError, match="coincide"):
        cm.look_at_rotation(centre, centre)
    with pytest.raises(ValueError, match="parallel"):
        cm.look_at_rotation([0.0, 0.0, 5.0], [0.0, 0.0, 0.0])


def test_project_views_hides_face_keypoints_turned_away():
    rng = np.random.default_rng(3)
    body = _standing_points(300).astype(np.float32)
    joints = np.concatenate([HEAD + [0.0, 0.0, 0.7], rng.uniform(-0.3, 0.3, (12, 3))]).astype(np.float32)[None]
    pos = np.array([1.0, 2.0, 0.9])
    K = np.array([[1000.0, 0.0, 500.0], [0.0, 1000.0, 500.0], [0.0, 0.0, 1.0]])
    cams = []
    for name, offset in (("front", [0.0, 4.0, 0.5]), ("back", [0.0, -4.0, 0.5]), ("left", [-4.0, 0.0, 0.5])):
        R = cm.look_at_rotation(pos + offset, pos)
        cams.append(cm.Camera(name, K, R, -R @ (pos + offset), (1000, 1000)))
    plain = cm.project_views(joints, body[None], cams, pos)
    assert plain.visible[0, :, :5].all()  # all in the crop and in front: only the face rule can hide them
    views = cm.project_views(joints, body[None], cams, pos, face_rows=(0, 1, 2, 3, 4))
    np.testing.assert_array_equal(views.visible[0, :, :5], [[True] * 5, [False, False, False, True, True],
                                                            [True, True, False, True, False]])
    np.testing.assert_array_equal(views.visible[..., 5:], plain.visible[..., 5:])
    np.testing.assert_array_equal(views.joints2d, plain.joints2d)  # the rule changes visibility only
    # face rows elsewhere in the joint array: the same decisions for the moved rows
    order = np.r_[5:17, 0:5]
    moved = cm.project_views(joints[:, order], body[None], cams, pos, face_rows=(12, 13, 14, 15, 16))
    np.testing.assert_array_equal(moved.visible[0, :, 12:], views.visible[0, :, :5])
