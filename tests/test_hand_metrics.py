"""FreiHAND's metrics: the F-score against brute-force loops and hand-computed cases, PA-MPVPE against
a numpy Procrustes, and the protocol's keys and units."""

from __future__ import annotations

import math

import numpy as np
import torch

from mpt_train.metrics import MetricAccumulator, f_score, pa_mpvpe
from mpt_train.protocols import f_score_name, freihand_metrics

from numpy_reference import np_procrustes


def brute_force_f(pred: np.ndarray, gt: np.ndarray, d: float) -> float:
    """F-score by explicit loops: a point is matched when some point of the other cloud is closer than d."""
    def share_matched(a, b):
        hits = 0
        for p in a:
            best = math.inf
            for q in b:
                best = min(best, math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(p, q))))
            hits += best < d
        return hits / len(a)

    precision, recall = share_matched(pred, gt), share_matched(gt, pred)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_f_score_hand_computed_case():
    # truth: 4 points on the x axis, 1 cm apart; prediction: 2 of them exactly, 1 at 3 mm off, 3 far away.
    gt = np.array([[0, 0, 0], [0.01, 0, 0], [0.02, 0, 0], [0.03, 0, 0]], np.float64)
    pred = np.array([[0, 0, 0], [0.01, 0, 0], [0.02, 0.003, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], np.float64)
    # at 5 mm: 3 of 6 predicted points are matched (P = 1/2), 3 of 4 true ones (R = 3/4): F = 2·(3/8)/(5/4) = 0.6
    f5 = f_score(torch.tensor(pred)[None], torch.tensor(gt)[None], 0.005)
    assert abs(float(f5[0]) - 0.6) < 1e-12
    # at 2 mm the shifted point is out: P = 2/6, R = 2/4 -> F = 2·(1/6)/(5/6) = 0.4
    assert abs(float(f_score(torch.tensor(pred)[None], torch.tensor(gt)[None], 0.002)[0]) - 0.4) < 1e-12
    # nothing matched at all when the prediction is 5 m away
    assert float(f_score(torch.tensor(pred + 5.0)[None], torch.tensor(gt)[None], 0.005)[0]) == 0.0


def test_f_score_matches_brute_force_on_random_clouds():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(5, 30, 3)) * 0.01
    gt = pred[:, :25] + rng.normal(size=(5, 25, 3)) * 0.004
    for d in (0.002, 0.005, 0.015):
        ours = f_score(torch.tensor(pred), torch.tensor(gt), d).numpy()
        ref = np.array([brute_force_f(pred[b], gt[b], d) for b in range(5)])
        assert np.allclose(ours, ref, atol=1e-12), (d, ours, ref)
    assert len({round(x, 6) for x in ours}) > 1  # the samples differ: a per-sample score, not a batch score


def test_pa_mpvpe_matches_numpy_procrustes_and_ignores_similarity():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(3, 40, 3)) * 0.05
    pred = gt + rng.normal(size=gt.shape) * 0.003
    ref = np.array([np.linalg.norm(np_procrustes(pred[b], gt[b]) - gt[b], axis=-1).mean() for b in range(3)])
    ours = pa_mpvpe(torch.tensor(pred), torch.tensor(gt)).numpy()
    assert np.allclose(ours, ref, atol=1e-10)
    # a rotated, scaled and moved prediction scores the same
    a = 0.7
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    moved = 1.8 * pred @ rot.T + np.array([0.3, -0.2, 1.5])
    assert np.allclose(pa_mpvpe(torch.tensor(moved), torch.tensor(gt)).numpy(), ref, atol=1e-9)


def test_freihand_metrics_align_before_the_f_score():
    rng = np.random.default_rng(5)
    gt_v = rng.normal(size=(2, 60, 3)) * 0.04
    gt_j = gt_v[:, :21]
    # the prediction is the truth, half the size, turned and 20 cm away: unaligned it matches nothing
    a = 1.1
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    pv = 0.5 * gt_v @ rot.T + np.array([0.2, 0.0, 0.0])
    res = freihand_metrics(torch.tensor(pv[:, :21]), torch.tensor(pv), torch.tensor(gt_j), torch.tensor(gt_v))
    assert set(res) == {"pa_mpjpe", "pa_mpvpe", "f_score_5mm", "f_score_15mm"}
    assert float(res["pa_mpjpe"].max()) < 1e-9 and float(res["pa_mpvpe"].max()) < 1e-9
    assert np.allclose(res["f_score_5mm"].numpy(), 1.0) and np.allclose(res["f_score_15mm"].numpy(), 1.0)
    assert float(f_score(torch.tensor(pv), torch.tensor(gt_v), 0.005).max()) < 0.5
    # with noise: the F-scores are brute-force F-scores of the numpy-aligned mesh
    noisy = pv + rng.normal(size=pv.shape) * 0.004
    res = freihand_metrics(torch.tensor(noisy[:, :21]), torch.tensor(noisy), torch.tensor(gt_j), torch.tensor(gt_v))
    for b in range(2):
        aligned = np_procrustes(noisy[b], gt_v[b])
        for d in (0.005, 0.015):
            assert abs(float(res[f_score_name(d)][b]) - brute_force_f(aligned, gt_v[b], d)) < 1e-9


def test_accumulator_keeps_f_scores_unitless():
    acc = MetricAccumulator()
    acc.add("pa_mpvpe", torch.tensor([0.004, 0.006], dtype=torch.float64))
    acc.add("f_score_5mm", torch.tensor([0.5, 0.7], dtype=torch.float64), unitless=True)
    res = acc.result()
    assert abs(res["pa_mpvpe"] - 5.0) < 1e-9 and abs(res["f_score_5mm"] - 0.6) < 1e-12
