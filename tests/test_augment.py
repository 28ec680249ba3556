"""Augmentation keeps image, 2D and 3D labels consistent; flips swap left and right."""

from __future__ import annotations

import numpy as np

from mpt_data.conventions import COCO_JOINTS
from mpt_data.topology import symmetric_vertex_map
from mpt_train.augment import AugmentParams, augment_sample, crop_affine, transform_points2d

LW, RW = COCO_JOINTS.index("left_wrist"), COCO_JOINTS.index("right_wrist")


def _sample(crop_px=120):
    rng = np.random.default_rng(0)
    j2 = np.c_[np.round(rng.uniform(30, 90, (17, 2))), np.ones(17)].astype(np.float32)
    image = np.zeros((crop_px, crop_px, 3), np.uint8)
    x, y = j2[LW, :2].astype(int)
    image[y - 1:y + 2, x - 1:x + 2] = (255, 0, 0)  # a red mark on the left wrist
    j3 = rng.normal(0, 0.3, (17, 3)).astype(np.float32)
    return {"image": image, "joints2d": j2, "joints3d": j3, "joints3d_conf": np.ones(17, bool)}


def test_flip_maps_left_wrist_to_right_wrist_in_2d_and_3d():
    s = _sample()
    out = augment_sample(s, context=1.5, p=AugmentParams(flip=True), out_size=224)
    m = crop_affine(120, 1.5, AugmentParams(), 224)
    plain = transform_points2d(s["joints2d"][LW, :2].astype(np.float64), m)
    # the right-wrist label is the mirrored left wrist
    assert np.allclose(out["joints2d"][RW], [223 - plain[0], plain[1]], atol=1e-4)
    assert np.allclose(out["joints3d"][RW], s["joints3d"][LW] * [-1, 1, 1], atol=1e-6)
    assert np.allclose(out["joints3d"][LW], s["joints3d"][RW] * [-1, 1, 1], atol=1e-6)
    # the image moved with the label: the red mark sits at the right-wrist label
    ys, xs = np.nonzero(out["image"][..., 0] > 100)
    assert abs(xs.mean() - out["joints2d"][RW, 0]) < 1.5
    assert abs(ys.mean() - out["joints2d"][RW, 1]) < 1.5


def test_rotation_and_scale_move_image_and_labels_together():
    s = _sample()
    p = AugmentParams(scale=0.8, rotation_deg=25.0, shift=(0.03, -0.02))
    out = augment_sample(s, context=1.5, p=p, out_size=224)
    ys, xs = np.nonzero(out["image"][..., 0] > 100)
    assert abs(xs.mean() - out["joints2d"][LW, 0]) < 2.0
    assert abs(ys.mean() - out["joints2d"][LW, 1]) < 2.0
    # 3D turns about the optical axis by the same angle as the picture: compare directions of
    # a limb in 2D (image) and in 3D (x, y), both y-down
    a = np.radians(25.0)
    r = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    assert np.allclose(out["joints3d"][:, :2], s["joints3d"][:, :2] @ r.T, atol=1e-5)
    assert np.allclose(out["joints3d"][:, 2], s["joints3d"][:, 2])
    d_in = s["joints2d"][RW, :2] - s["joints2d"][LW, :2]
    d_out = out["joints2d"][RW] - out["joints2d"][LW]
    assert np.allclose(d_out, (d_in @ r.T) * 224 / (120 / 1.5 * 0.8), atol=1e-3)


def test_symmetric_vertex_map_pairs_mirror_vertices():
    left = np.array([[0.1, 0.0, 0.0], [0.2, 0.5, 0.1], [0.0, 1.0, 0.0]])
    template = np.vstack([left, left[:2] * [-1, 1, 1]])
    m = symmetric_vertex_map(template)
    assert m.tolist() == [3, 4, 2, 0, 1]
    assert symmetric_vertex_map(template + [0.5, 0, 0]) is None
