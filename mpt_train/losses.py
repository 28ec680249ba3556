"""Pre-training (and fine-tuning) objective: L_V + L_J + L_J^reg + L_J^proj, all L1.

Each term is applied only where its ground truth exists, through per-sample masks, so the
same criterion serves MoCap pre-training (everything present) and fine-tuning on mixed
2D/3D image datasets (some samples have only 2D joints).

Targets (a dict of tensors on the model's device):
  joints3d     (B, J, 3) metres, camera frame, root-centred, in the model's joint set
  vertices     (B, V, 3) metres, same frame
  joints2d     (B, K, 2) normalised crop coordinates in [-1, 1] (`mpt_train.inputs.normalise_2d`)
               of the heatmap joint set (COCO-17 for bodies, HAND-21 for hands)
  visible      (B, K) bool: 2D joint present (projection loss mask)
  has_joints3d (B,) bool, optional (default all True)
  has_vertices (B,) bool, optional (default all True)

Conventions: 3D terms are mean absolute error per coordinate in metres; the projection
term is in normalised crop coordinates. The coarse-vertex term compares
each lower mesh level with the ground truth selected at that level's vertex ids (METRO).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .model import MeshRegressor, weak_perspective


HAND_3D_WEIGHT = 8.0  # see LossConfig.hand


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (the paper sums them with weight 1)."""

    vertices: float = 1.0  # L_V on the full mesh
    vertices_coarse: float = 1.0  # L_V averaged over the lower mesh levels
    joints: float = 1.0  # L_J
    joints_reg: float = 1.0  # L_J^reg: joints regressed from the predicted full mesh
    joints_proj: float = 1.0  # L_J^proj: weak-perspective re-projection vs 2D joints

    @classmethod
    def hand(cls) -> LossConfig:
        """Hands: the 3D terms weighted ``HAND_3D_WEIGHT`` (8). The 3D terms are in metres and the
        projection term in crop units, where a hand fills the crop as a body does; a hand is about
        an eighth of a body's size, so at weight 1 its 3D errors would count 8x less against the 2D
        term than a body's. Measured on the demo's hand store (tiny-hand, 300 steps of 32, seed 0,
        README "Hands"): val MPJPE 76.3 -> 60.5 mm, MPVE 74.9 -> 49.7, PA-MPJPE 21.4 -> 18.7."""
        w = HAND_3D_WEIGHT
        return cls(vertices=w, vertices_coarse=w, joints=w, joints_reg=w, joints_proj=1.0)

    @classmethod
    def for_joint_set(cls, joint_set: str) -> LossConfig:
        """The weights for a model predicting ``joint_set``: :meth:`hand` for ``hand21``, else the paper's."""
        return cls.hand() if joint_set == "hand21" else cls()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over masked entries.

    pred, target: (B, P, C); mask: (B,) per sample or (B, P) per point, bool or 0/1.
    Returns a scalar; 0 (with a gradient path) when nothing is masked in.
    """
    m = mask.to(pred.dtype)
    if m.dim() == 1:
        m = m[:, None].expand(pred.shape[0], pred.shape[1])
    err = (pred - target).abs().sum(-1)  # (B, P)
    denom = (m.sum() * pred.shape[-1]).clamp_min(1.0)
    return (err * m).sum() / denom


class Criterion:
    """Computes the weighted objective and its terms for a model's predictions.

    Holds the model (unwrapped, not DDP) only to read its buffers: the joint regressor G and
    the mesh level vertex ids. ``heatmap_joint_set``: the joint set of the 2D targets (the store's
    `heatmap_joint_set`); when the model predicts another set, the projection term projects this set
    regressed from the predicted mesh.
    """

    def __init__(self, cfg: LossConfig, model: MeshRegressor, heatmap_joint_set: str = "coco17"):
        self.cfg = cfg
        self.model = model
        self.heatmap_joint_set = heatmap_joint_set

    def __call__(self, pred: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (total loss scalar, {term name: scalar}) in fp32."""
        cfg, model = self.cfg, self.model
        gt_v = targets["vertices"].float()
        gt_j = targets["joints3d"].float()
        b = gt_v.shape[0]
        ones = torch.ones(b, dtype=torch.bool, device=gt_v.device)
        has_v = targets.get("has_vertices", ones)
        has_j = targets.get("has_joints3d", ones)
        verts = pred["vertices"].float()
        joints = pred["joints"].float()
        terms: dict[str, torch.Tensor] = {}
        terms["vertices"] = masked_l1(verts, gt_v, has_v)
        levels = pred["levels"][:-1]
        if levels:
            nlev = len(pred["levels"])
            coarse = [masked_l1(lv.float(), gt_v[:, model.level_ids(nlev - 1 - i)], has_v)
                      for i, lv in enumerate(levels)]
            terms["vertices_coarse"] = torch.stack(coarse).mean()
        else:
            terms["vertices_coarse"] = verts.new_zeros(())
        terms["joints"] = masked_l1(joints, gt_j, has_j)
        reg = torch.einsum("jv,bvc->bjc", model.regressor.float(), verts)
        terms["joints_reg"] = masked_l1(reg, gt_j, has_j)
        proj_src = joints
        k = targets["joints2d"].shape[1]
        if proj_src.shape[1] != k:  # model predicts another joint set: project the heatmap set's regression
            proj_src = torch.einsum("jv,bvc->bjc", model.extra_regressor(self.heatmap_joint_set).float(), verts)
        proj = weak_perspective(proj_src, pred["camera"].float())
        terms["joints_proj"] = masked_l1(proj, targets["joints2d"].float(), targets["visible"])
        total = sum(getattr(cfg, name) * value for name, value in terms.items())
        return total, terms
