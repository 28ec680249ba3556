"""The benchmark protocols: Human3.6M protocol 2, 3DPW and FreiHAND.

Human3.6M, protocol 2 (P2; subjects S9 and S11, every 5th frame, front camera 60457274 — the
selection is the annotation file's, e.g. SPIN's ``h36m_valid_protocol2.npz``):
- predicted joints: the H36M-17 regressor applied to the predicted mesh; the 14 evaluation
  joints are ``conventions.H36M_TO_EVAL14`` (no pelvis, torso, nose);
- true joints: the 14 first SPIN-24 joints of ``S`` (LSP order; SPIN's "neck" and "head top"
  slots hold Human3.6M's neck and head in its files), with the H36M order of the same names;
- alignment: each side translated so its pelvis is at the origin (prediction: the regressed
  H36M pelvis; truth: the midpoint of its hips), then MPJPE = mean joint distance and
  PA-MPJPE = the same after a similarity Procrustes alignment of the 14 joints.
3DPW (test split): the same 14 joints and alignments for MPJPE and PA-MPJPE, and MPVE = mean
vertex distance with each mesh translated by its own pelvis (regressed with the same H36M
regressor from the predicted and the true mesh).
FreiHAND (its ``eval.py``): the model's 21 ``hand21`` joints (regressed from its mesh) against the 21
annotated joints, and its 778 vertices against the annotated MANO mesh, each similarity-Procrustes-aligned
on its own points (joints on the joints, the mesh on the vertices; a proper rotation here, where
FreiHAND's SciPy ``orthogonal_procrustes`` would also allow a reflection: identical for any
prediction that is not mirrored): PA-MPJPE, PA-MPVPE = mean Euclidean distance; F@5 mm and
F@15 mm = :func:`mpt_train.metrics.f_score` of the aligned mesh against the true one, averaged over
samples (unitless, 0..1).
All inputs in metres; outputs per sample in metres (``MetricAccumulator`` reports mm).
"""

from __future__ import annotations

import torch

from mpt_data.conventions import H36M_JOINTS, H36M_PELVIS, H36M_TO_EVAL14, SPIN_JOINTS

from .metrics import MetricAccumulator, f_score, pa_mpjpe, procrustes_align

PROTOCOLS = ("h36m-p2", "3dpw", "freihand")
FREIHAND_F_THRESHOLDS_M: tuple[float, ...] = (0.005, 0.015)  # FreiHAND's F@5 mm and F@15 mm

# SPIN-24 joint of each of the 14 evaluation joints (in H36M_TO_EVAL14 order).
_EVAL14_NAMES = tuple(H36M_JOINTS[i] for i in H36M_TO_EVAL14)
_SPIN_NAME = {"head": "head_top"}  # SPIN's LSP "head top" slot carries the H36M head joint
SPIN_TO_EVAL14: tuple[int, ...] = tuple(SPIN_JOINTS.index(_SPIN_NAME.get(n, n)) for n in _EVAL14_NAMES)
_SPIN_HIPS = (SPIN_JOINTS.index("left_hip"), SPIN_JOINTS.index("right_hip"))


def eval14_from_mesh(vertices: torch.Tensor, h36m_regressor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V, 3) mesh, (17, V) H36M regressor → (B, 14, 3) eval joints, (B, 1, 3) pelvis."""
    j17 = torch.einsum("jv,bvc->bjc", h36m_regressor.to(vertices.dtype), vertices)
    return j17[:, list(H36M_TO_EVAL14)], j17[:, H36M_PELVIS:H36M_PELVIS + 1]


def eval14_from_spin(spin3d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 24, 3+) SPIN-24 3D joints → (B, 14, 3) eval joints, (B, 1, 3) pelvis = hip midpoint."""
    xyz = spin3d[..., :3]
    return xyz[:, list(SPIN_TO_EVAL14)], xyz[:, list(_SPIN_HIPS)].mean(1, keepdim=True)


def aligned_errors(pred14: torch.Tensor, pred_pelvis: torch.Tensor, gt14: torch.Tensor,
                   gt_pelvis: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pelvis-aligned MPJPE and PA-MPJPE, each (B,), metres."""
    p, g = pred14 - pred_pelvis, gt14 - gt_pelvis
    return {"mpjpe": (p - g).norm(dim=-1).mean(-1), "pa_mpjpe": pa_mpjpe(p, g)}


def h36m_protocol2(pred_vertices: torch.Tensor, spin3d: torch.Tensor, h36m_regressor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Human3.6M P2 per sample: {"mpjpe", "pa_mpjpe"} (B,), metres. See the module docstring."""
    p14, pp = eval14_from_mesh(pred_vertices.float(), h36m_regressor.float())
    g14, gp = eval14_from_spin(spin3d.float())
    return aligned_errors(p14, pp, g14, gp)


def pw3d_metrics(pred_vertices: torch.Tensor, gt_vertices: torch.Tensor, h36m_regressor: torch.Tensor) -> dict[str, torch.Tensor]:
    """3DPW per sample: {"mpve", "mpjpe", "pa_mpjpe"} (B,), metres; truth from the true mesh."""
    pv, gv = pred_vertices.float(), gt_vertices.float()
    p14, pp = eval14_from_mesh(pv, h36m_regressor.float())
    g14, gp = eval14_from_mesh(gv, h36m_regressor.float())
    out = aligned_errors(p14, pp, g14, gp)
    out["mpve"] = ((pv - pp) - (gv - gp)).norm(dim=-1).mean(-1)
    return out


def f_score_name(threshold_m: float) -> str:
    """Metric name of the F-score at ``threshold_m`` metres: ``f_score_5mm``."""
    return f"f_score_{threshold_m * 1000:g}mm"


def freihand_metrics(pred_joints: torch.Tensor, pred_vertices: torch.Tensor, gt_joints: torch.Tensor,
                     gt_vertices: torch.Tensor,
                     thresholds_m: tuple[float, ...] = FREIHAND_F_THRESHOLDS_M) -> dict[str, torch.Tensor]:
    """FreiHAND per sample: {"pa_mpjpe", "pa_mpvpe"} (B,) metres and {"f_score_5mm", ...} (B,) in [0, 1].

    pred/gt joints (B, 21, 3), vertices (B, 778, 3), metres, any common frame (alignment removes it)."""
    pj, gj = pred_joints.double(), gt_joints.double()
    pv, gv = pred_vertices.double(), gt_vertices.double()
    aligned_v = procrustes_align(pv, gv)
    out = {"pa_mpjpe": pa_mpjpe(pj, gj), "pa_mpvpe": (aligned_v - gv).norm(dim=-1).mean(-1)}
    for t in thresholds_m:
        out[f_score_name(t)] = f_score(aligned_v, gv, t)
    return out


@torch.no_grad()
def evaluate_protocol(model: torch.nn.Module, batches, prepare, protocol: str, h36m_regressor: torch.Tensor | None,
                      device: torch.device, max_batches: int = 0) -> dict[str, float]:
    """Run ``model`` over ``batches`` and score them by ``protocol`` ("h36m-p2", "3dpw" or "freihand"),
    in mm (F-scores unitless).

    h36m_regressor: (17, V); defaults to the model's own ``h36m17`` regressor when it has one (not used
    by FreiHAND). Samples without the needed truth (3D joints for H36M, a mesh for 3DPW, both for
    FreiHAND) are left out.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    inner = model.module if hasattr(model, "module") else model
    if protocol == "freihand":
        if inner.cfg.joint_set != "hand21":
            raise ValueError(f"protocol freihand scores hand21 joints; the model predicts {inner.cfg.joint_set!r}: "
                             "fine-tune a hand model (pre-trained with --preset tiny-hand or hand)")
        return _evaluate_freihand(inner, batches, prepare, max_batches)
    if h36m_regressor is None:
        if "h36m17" not in inner.cfg.eval_joint_sets:
            raise ValueError("the model carries no H36M-17 regressor: pass --h36m-regressor J_regressor_h36m.npy")
        h36m_regressor = inner.extra_regressor("h36m17")
    reg = h36m_regressor.to(device).float()
    inner.eval()
    acc = MetricAccumulator()
    n = 0
    for inputs, targets in _prepared(batches, prepare, max_batches):
        pred = inner(inputs)
        if protocol == "h36m-p2":
            s = targets["spin3d"]
            ok = (s[:, list(SPIN_TO_EVAL14), 3] > 0).all(1) & (s[:, list(_SPIN_HIPS), 3] > 0).all(1)
            if ok.any():
                res = h36m_protocol2(pred["vertices"][ok], s[ok], reg)
        else:
            ok = targets["has_vertices"].bool()
            if ok.any():
                res = pw3d_metrics(pred["vertices"][ok], targets["vertices"][ok], reg)
        if ok.any():
            for k, v in res.items():
                acc.add(k, v)
            n += int(ok.sum())
    out = acc.result()
    out["samples"] = float(n)
    return out


def _prepared(batches, prepare, max_batches: int):
    """(inputs, targets) of each batch, the first ``max_batches`` of them (0: all)."""
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        yield prepare(batch)


def _evaluate_freihand(model: torch.nn.Module, batches, prepare, max_batches: int) -> dict[str, float]:
    model.eval()
    acc = MetricAccumulator()
    n = 0
    for inputs, targets in _prepared(batches, prepare, max_batches):
        ok = targets["has_joints3d"].bool() & targets["has_vertices"].bool()
        if not ok.any():
            continue
        pred = model(inputs)
        res = freihand_metrics(pred["joints"][ok], pred["vertices"][ok], targets["joints3d"][ok],
                               targets["vertices"][ok])
        for k, v in res.items():
            acc.add(k, v, unitless=k.startswith("f_score"))
        n += int(ok.sum())
    out = acc.result()
    out["samples"] = float(n)
    return out
