"""Losses with availability masks, and metrics against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numpy_reference import np_procrustes as _np_procrustes
from tiny_models import synthetic_targets, tiny_model
from mpt_train.losses import Criterion, LossConfig, masked_l1
from mpt_train.metrics import (MetricAccumulator, evaluate_batch, mpjpe, mpve, pa_mpjpe, procrustes_align,
                               root_indices)


def test_masked_l1_against_manual():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(4, 5, 3)), rng.normal(size=(4, 5, 3))
    m = np.array([[1, 0, 1, 1, 0]] * 2 + [[0] * 5] + [[1] * 5], bool)
    got = masked_l1(torch.tensor(p), torch.tensor(t), torch.tensor(m))
    want = np.abs(p - t)[m].mean()
    assert float(got) == pytest.approx(want)
    per_sample = masked_l1(torch.tensor(p), torch.tensor(t), torch.tensor([True, False, False, True]))
    assert float(per_sample) == pytest.approx(np.abs(p - t)[[0, 3]].mean())
    assert float(masked_l1(torch.tensor(p), torch.tensor(t), torch.zeros(4, dtype=torch.bool))) == 0.0


def test_criterion_zero_at_truth_and_respects_masks():
    model = tiny_model()
    crit = Criterion(LossConfig(), model)
    t = synthetic_targets(model, 4)
    nlev = 3
    cam = torch.tensor([[0.9, 0.0, 0.0]]).expand(4, 3)
    pred = {"vertices": t["vertices"].clone(), "joints": t["joints3d"].clone(), "camera": cam,
            "levels": [t["vertices"][:, model.level_ids(nlev - 1 - i)] for i in range(nlev)]}
    loss, terms = crit(pred, t)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # a wrong sample without 3D truth costs nothing in the 3D terms
    bad = {k: (v.clone() if torch.is_tensor(v) else [x.clone() for x in v]) for k, v in pred.items()}
    bad["vertices"][1] += 1.0
    bad["joints"][1] += 1.0
    masked = dict(t, has_vertices=torch.tensor([True, False, True, True]),
                  has_joints3d=torch.tensor([True, False, True, True]))
    loss_m, terms_m = crit(bad, masked)
    assert float(terms_m["vertices"]) == 0 and float(terms_m["joints"]) == 0 and float(terms_m["joints_reg"]) == 0
    # ... but it counts where truth exists: L_J^reg = G V vs joints, one sample of four off by 1 m
    _, terms_u = crit(bad, t)
    assert float(terms_u["vertices"]) == pytest.approx(0.25, rel=1e-5)
    assert float(terms_u["joints_reg"]) == pytest.approx(0.25, rel=1e-4)
    # projection: joints moved by 1 m in x and y shift both projected coordinates by s = 0.9,
    # counted over visible joints only
    vis = t["visible"].float()
    expect = 0.9 * vis[1].sum() / vis.sum()
    assert float(terms_u["joints_proj"]) == pytest.approx(float(expect), rel=1e-4)


def test_metrics_against_numpy():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(5, 17, 3))
    p = g + 0.05 * rng.normal(size=g.shape) + rng.normal(size=(5, 1, 3))
    roots = root_indices("coco17")
    assert roots == (11, 12)
    got = mpjpe(torch.tensor(p), torch.tensor(g), roots).numpy()
    pr = p - p[:, [11, 12]].mean(1, keepdims=True)
    gr = g - g[:, [11, 12]].mean(1, keepdims=True)
    np.testing.assert_allclose(got, np.linalg.norm(pr - gr, axis=-1).mean(-1), rtol=1e-10)
    pa = pa_mpjpe(torch.tensor(p), torch.tensor(g)).numpy()
    want = [np.linalg.norm(_np_procrustes(p[i], g[i]) - g[i], axis=-1).mean() for i in range(5)]
    np.testing.assert_allclose(pa, want, rtol=1e-8)
    assert (pa <= got + 1e-12).all()
    assert root_indices("h36m17") == (0,) and root_indices("smpl24") == (0,)


def test_procrustes_recovers_similarity_including_reflection_case():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(1, 30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    p = 0.3 * g @ q.T + np.array([1.0, -2.0, 0.5])
    aligned = procrustes_align(torch.tensor(p), torch.tensor(g)).numpy()
    np.testing.assert_allclose(aligned, g, atol=1e-9)
    mirrored = g * np.array([-1.0, 1.0, 1.0])  # no proper rotation maps a mirror image exactly
    err = pa_mpjpe(torch.tensor(mirrored), torch.tensor(g)).numpy()
    want = np.linalg.norm(_np_procrustes(mirrored[0], g[0]) - g[0], axis=-1).mean()
    np.testing.assert_allclose(err, [want], rtol=1e-8)
    assert err[0] > 0.1


def test_mpve_and_accumulator_in_mm():
    g = torch.zeros(2, 10, 3)
    p = g + torch.tensor([0.0, 0.0, 0.01])  # 10 mm everywhere
    root_p, root_g = torch.zeros(2, 1, 3), torch.zeros(2, 1, 3)
    torch.testing.assert_close(mpve(p, g, root_p, root_g), torch.full((2,), 0.01))
    torch.testing.assert_close(mpve(p, g, p[:, :1], root_g), torch.zeros(2))  # root-aligned away
    acc = MetricAccumulator()
    model = tiny_model()
    t = synthetic_targets(model, 3)
    pred = {"joints": t["joints3d"] + torch.tensor([0.02, 0.0, 0.0]), "vertices": t["vertices"] + 0.01}
    evaluate_batch(acc, pred, t, "coco17", {"h36m17": model.extra_regressor("h36m17")})
    res = acc.result()
    assert res["mpjpe"] == pytest.approx(0.0, abs=1e-4)  # a pure translation is root-aligned away
    assert res["pa_mpjpe"] == pytest.approx(0.0, abs=1e-3)
    # vertices moved by (1, 1, 1) cm, the root by (2, 0, 0) cm: (-1, 1, 1) cm after root alignment
    assert res["mpve"] == pytest.approx(np.sqrt(3) * 10, rel=1e-4)
    assert res["h36m17_mpjpe"] == pytest.approx(0.0, abs=1e-3)


def test_procrustes_mean_recovers_a_pose_seen_from_many_sides():
    from mpt_train.evaluate import procrustes_mean

    g = torch.Generator().manual_seed(0)
    pose = torch.randn(17, 3, generator=g, dtype=torch.float64)
    pose -= pose.mean(0)
    # the same pose turned about the vertical axis, plus small noise: the plain mean shrinks it
    angles = torch.linspace(0, 2 * torch.pi, 65)[:-1].double()
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.zeros(64, 3, 3, dtype=torch.float64)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1.0, -s, c
    joints = pose @ rot.transpose(1, 2) + 0.001 * torch.randn(64, 17, 3, generator=g, dtype=torch.float64)
    mean_j, mean_v = procrustes_mean(joints.float(), joints.float())
    plain = joints.mean(0)
    assert pa_mpjpe(mean_j[None].double(), pose[None]).item() < 0.005  # the pose itself, up to rotation
    assert pa_mpjpe(plain[None], pose[None]).item() > 0.1  # what a plain average gives
    assert torch.allclose(mean_j, mean_v, atol=1e-5)  # vertices follow the same rotations
