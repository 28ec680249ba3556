"""The coarse-mesh hierarchy (mpt_data.topology)."""

from __future__ import annotations

import numpy as np
import pytest

from toy_body_model import icosphere
from mpt_data import topology as tp


@pytest.fixture(scope="module")
def body_like():
    v, f = icosphere(4)  # 2562 vertices
    v = v * np.array([0.25, 0.15, 0.9])
    v[:, 0] += 0.05 * np.sin(6 * v[:, 2])  # not symmetric, so ties are rare but possible
    return v, f


@pytest.fixture(scope="module")
def levels(body_like):
    return tp.coarse_hierarchy(*body_like)


def _edge_face_counts(faces: np.ndarray) -> np.ndarray:
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)[1]


def test_sizes_nesting_and_determinism(body_like, levels):
    v, f = body_like
    assert [len(lv.vertex_ids) for lv in levels] == [round(2562 / 4), round(round(2562 / 4) / 4)]
    again = tp.coarse_hierarchy(v.copy(), f.copy())
    for a, b in zip(levels, again):
        for name in ("vertex_ids", "faces", "up_index", "up_weight"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    prev = len(v)
    for lv in levels:
        assert lv.vertex_ids.dtype == np.int32 and lv.faces.dtype == np.int32
        assert lv.up_index.dtype == np.int32 and lv.up_weight.dtype == np.float32
        assert len(np.unique(lv.vertex_ids)) == len(lv.vertex_ids) and lv.vertex_ids.max() < prev
        assert lv.up_index.shape == (prev, 3) and lv.up_index.max() < len(lv.vertex_ids)
        prev = len(lv.vertex_ids)


def test_coarse_faces_form_closed_meshes(levels):
    for lv in levels:
        n = len(lv.vertex_ids)
        assert (_edge_face_counts(lv.faces) == 2).all()  # closed and manifold along edges
        edges = len(_edge_face_counts(lv.faces))
        assert n - edges + len(lv.faces) == 2  # a sphere, like the input
        assert np.unique(lv.faces).shape[0] == n  # every coarse vertex is used


def test_coarse_faces_keep_the_outward_orientation(body_like, levels):
    v, _ = body_like
    pos = v
    for lv in levels:
        pos = tp.downsample(pos, lv)
        a, b, c = (pos[lv.faces[:, k]] for k in range(3))
        normal = np.cross(b - a, c - a)
        outward = ((a + b + c) / 3 * normal).sum(1) > 0
        assert outward.mean() > 0.98


def test_upsampling_reconstructs_the_template(body_like, levels):
    v, _ = body_like
    height = v[:, 2].max() - v[:, 2].min()
    fine = v
    for lv in levels:
        assert (lv.up_weight >= 0).all()
        np.testing.assert_allclose(lv.up_weight.sum(1), 1.0, atol=1e-6)
        coarse = tp.downsample(fine, lv)
        err = np.linalg.norm(tp.upsample(coarse, lv) - fine, axis=1)
        assert err.mean() < 0.005 * height and err.max() < 0.02 * height
        # selected vertices map onto themselves
        back = tp.upsample(coarse, lv)[lv.vertex_ids]
        np.testing.assert_allclose(back, coarse, atol=1e-6)
        fine = coarse
    # batched leading dimensions
    batch = np.stack([v, 2 * v])
    up = tp.upsample(tp.downsample(batch, levels[0]), levels[0])
    np.testing.assert_allclose(up[1], 2 * up[0], atol=1e-9)


def test_closest_point_on_triangle_against_dense_sampling():
    rng = np.random.default_rng(0)
    n, k = 50, 4
    a, b, c = (rng.normal(0, 1, (n, k, 3)) for _ in range(3))
    p = rng.normal(0, 1.5, (n, 3))
    d2, bary = tp.closest_on_triangles(p, a, b, c)
    assert (bary >= -1e-12).all()
    np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-12)
    q = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    np.testing.assert_allclose(((q - p[:, None]) ** 2).sum(-1), d2, atol=1e-9)
    # no point of a dense barycentric grid on each triangle is closer
    s = np.linspace(0, 1, 41)
    uu, vv = np.meshgrid(s, s)
    keep = uu + vv <= 1
    uu, vv = uu[keep], vv[keep]
    grid = a[..., None, :] + uu[:, None] * (b - a)[..., None, :] + vv[:, None] * (c - a)[..., None, :]
    dense = ((grid - p[:, None, None]) ** 2).sum(-1).min(-1)
    assert (d2 <= dense + 1e-9).all()
    assert np.median(dense - d2) < 1e-2


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        tp.coarse_hierarchy(np.zeros((10, 2)), np.zeros((4, 3), int))
