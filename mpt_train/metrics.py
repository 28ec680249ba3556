"""3D pose and mesh metrics: MPJPE, PA-MPJPE, MPVE (reported in millimetres).

Alignment rules (the usual Human3.6M / 3DPW practice):
- MPJPE: predicted and true joints are each translated so their root is at the origin, then
  the mean Euclidean distance over joints. The root is `conventions.root_index`: the pelvis for
  the body sets that have one (SMPL-24, H36M-17), the wrist for hands (HAND-21); the midpoint of
  the two hips for COCO-17 (no root joint).
- PA-MPJPE: the prediction is aligned to the truth by the similarity transform (scale,
  rotation, translation) minimising squared error (Procrustes, via SVD), then MPJPE.
- MPVE: vertices translated by the same root offsets as the joints of the same sample
  (predicted mesh by the predicted root, true mesh by the true root), then the mean
  Euclidean distance over vertices.
- PA-MPVPE: the predicted vertices similarity-aligned to the true ones by their own Procrustes
  (FreiHAND's rule: the mesh is aligned on its vertices, not with the joints' transform), then
  the mean Euclidean distance over vertices (:func:`pa_mpvpe`).
- F-score at a distance d (FreiHAND): precision = share of predicted points with a true point
  closer than d, recall = share of true points with a predicted point closer than d,
  F = 2PR / (P + R), 0 when both are 0; per sample (:func:`f_score`), on the aligned mesh.
Inputs are in metres; functions return per-sample errors in the input unit; the
:class:`MetricAccumulator` converts to millimetres.
"""

from __future__ import annotations

import torch

from mpt_data.conventions import JOINT_SETS, root_index


def root_indices(joint_set: str) -> tuple[int, ...]:
    """Joints whose mean is the root of ``joint_set``: its root joint (pelvis, or a hand's wrist), or both
    hips for COCO-17."""
    p = root_index(joint_set)
    if p is not None:
        return (p,)
    names = JOINT_SETS[joint_set]
    return (names.index("left_hip"), names.index("right_hip"))


def root_of(joints: torch.Tensor, roots: tuple[int, ...]) -> torch.Tensor:
    """(B, J, 3) -> (B, 1, 3) mean of the root joints."""
    return joints[:, list(roots)].mean(dim=1, keepdim=True)


def mpjpe(pred: torch.Tensor, gt: torch.Tensor, roots: tuple[int, ...]) -> torch.Tensor:
    """Root-aligned mean per-joint position error. pred, gt: (B, J, 3) -> (B,)."""
    p = pred - root_of(pred, roots)
    g = gt - root_of(gt, roots)
    return (p - g).norm(dim=-1).mean(dim=-1)


def rotation_onto(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Proper rotations (B, 3, 3) that best map centred ``src`` (B, N, 3) onto centred ``dst``
    (B or 1, N, 3) in the least-squares sense (Kabsch: SVD of the cross-covariance, reflection
    fixed). Also returns the (B,) trace term sum(S D) that gives the similarity scale."""
    u, s, vh = torch.linalg.svd(dst.transpose(1, 2) @ src)  # (B, 3, 3) sum_i d_i s_i^T
    d = torch.ones_like(s)
    d[:, -1] = torch.sign(torch.linalg.det(u @ vh))
    return u @ torch.diag_embed(d) @ vh, (s * d).sum(-1)


def procrustes_align(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Similarity-align ``pred`` onto ``gt`` (both (B, N, 3)): returns s R pred + t, (B, N, 3).

    Closed form (Umeyama): centre both, SVD of the cross-covariance, reflection fixed so R is
    a proper rotation, scale = trace(S D) / var(pred). Computed in float64.
    """
    p = pred.double()
    g = gt.double()
    mp, mg = p.mean(1, keepdim=True), g.mean(1, keepdim=True)
    p0, g0 = p - mp, g - mg
    rot, trace = rotation_onto(p0, g0)  # maps centred pred onto centred gt
    var_p = (p0 ** 2).sum(dim=(1, 2))
    scale = trace / var_p.clamp_min(1e-12)
    aligned = scale[:, None, None] * p0 @ rot.transpose(1, 2) + mg
    return aligned.to(pred.dtype)


def pa_mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Procrustes-aligned MPJPE. pred, gt: (B, J, 3) -> (B,)."""
    return (procrustes_align(pred, gt) - gt).norm(dim=-1).mean(dim=-1)


def pa_mpvpe(pred_v: torch.Tensor, gt_v: torch.Tensor) -> torch.Tensor:
    """Procrustes-aligned mean per-vertex position error. pred_v, gt_v: (B, V, 3) -> (B,), input unit.

    The same similarity alignment as :func:`pa_mpjpe`, estimated on the vertices themselves."""
    return pa_mpjpe(pred_v, gt_v)


def f_score(pred_points: torch.Tensor, gt_points: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-sample F-score of two point clouds at distance ``threshold`` (input unit, e.g. metres).

    pred_points (B, N, 3), gt_points (B, M, 3) -> (B,) in [0, 1]. A point counts as matched when
    its nearest point of the other cloud is strictly closer than ``threshold``. No alignment is
    done here: FreiHAND scores the Procrustes-aligned prediction
    (:func:`mpt_train.protocols.freihand_metrics`). Distances in float64, in chunks of the batch."""
    out = []
    for p, g in zip(pred_points.double().split(16), gt_points.double().split(16)):
        d = torch.cdist(p, g)  # (b, N, M)
        precision = (d.min(dim=2).values < threshold).double().mean(dim=1)
        recall = (d.min(dim=1).values < threshold).double().mean(dim=1)
        total = precision + recall
        out.append(torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-300), torch.zeros_like(total)))
    return torch.cat(out).to(pred_points.dtype) if out else pred_points.new_zeros(0)


def mpve(pred_v: torch.Tensor, gt_v: torch.Tensor, pred_root: torch.Tensor, gt_root: torch.Tensor) -> torch.Tensor:
    """Mean per-vertex error after root alignment. pred_v, gt_v: (B, V, 3); roots (B, 1, 3) -> (B,)."""
    return ((pred_v - pred_root) - (gt_v - gt_root)).norm(dim=-1).mean(dim=-1)


class MetricAccumulator:
    """Sums per-sample errors (metres) by name; :meth:`result` gives means in millimetres (means as they
    are for the names added with ``unitless=True``, e.g. F-scores)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.unitless: set[str] = set()

    def add(self, name: str, per_sample: torch.Tensor, unitless: bool = False) -> None:
        if unitless:
            self.unitless.add(name)
        v = per_sample.detach().double()
        self.sums[name] = self.sums.get(name, 0.0) + float(v.sum())
        self.counts[name] = self.counts.get(name, 0) + int(v.numel())

    def merge_counts(self) -> tuple[list[str], torch.Tensor]:
        """Names and a (2, n) float64 tensor of sums and counts, for an all-reduce across ranks."""
        names = sorted(self.sums)
        return names, torch.tensor([[self.sums[n] for n in names], [self.counts[n] for n in names]],
                                   dtype=torch.float64)

    def load_counts(self, names: list[str], t: torch.Tensor) -> None:
        self.sums = {n: float(t[0, i]) for i, n in enumerate(names)}
        self.counts = {n: int(t[1, i]) for i, n in enumerate(names)}

    def result(self) -> dict[str, float]:
        return {n: (1.0 if n in self.unitless else 1000.0) * self.sums[n] / max(self.counts[n], 1)
                for n in sorted(self.sums)}


def evaluate_batch(acc: MetricAccumulator, pred: dict, targets: dict, joint_set: str,
                   extra_regressors: dict[str, torch.Tensor] | None = None, prefix: str = "") -> None:
    """Add MPJPE, PA-MPJPE (model joint set) and MPVE for one batch to ``acc``.

    For each extra joint set (name -> (J', V) regressor), joints are regressed from the
    predicted and the true meshes with the same regressor and scored too (e.g. H36M-17).
    Samples without 3D truth (``has_joints3d`` / ``has_vertices`` False) are left out.
    """
    pj, gj = pred["joints"].float(), targets["joints3d"].float()
    pv, gv = pred["vertices"].float(), targets["vertices"].float()
    b = pj.shape[0]
    ones = torch.ones(b, dtype=torch.bool, device=pj.device)
    hj = targets.get("has_joints3d", ones).bool()
    hv = targets.get("has_vertices", ones).bool()
    roots = root_indices(joint_set)
    if hj.any():
        acc.add(f"{prefix}mpjpe", mpjpe(pj[hj], gj[hj], roots))
        acc.add(f"{prefix}pa_mpjpe", pa_mpjpe(pj[hj], gj[hj]))
    both = hj & hv
    if both.any():
        acc.add(f"{prefix}mpve", mpve(pv[both], gv[both], root_of(pj[both], roots), root_of(gj[both], roots)))
    for name, reg in (extra_regressors or {}).items():
        if not hv.any():
            continue
        r = reg.float()
        pe = torch.einsum("jv,bvc->bjc", r, pv[hv])
        ge = torch.einsum("jv,bvc->bjc", r, gv[hv])
        acc.add(f"{prefix}{name}_mpjpe", mpjpe(pe, ge, root_indices(name)))
        acc.add(f"{prefix}{name}_pa_mpjpe", pa_mpjpe(pe, ge))
