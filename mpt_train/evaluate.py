"""Evaluation: MPJPE, PA-MPJPE, MPVE (mm) of a model over a split, and the mean-pose baseline.

The loop is generic: batches from any loader, a `prepare(batch) -> (inputs, targets)`
function (pre-training: heatmap synthesis with or without MHM-style missing joints;
fine-tuning: images), and a model returning the prediction dict of `MeshRegressor`.
Metric definitions and alignment rules: `mpt_train.metrics`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from .metrics import MetricAccumulator, evaluate_batch, rotation_onto
from .runtime import autocast_context, choose_device

Prepare = Callable[[dict], tuple[torch.Tensor, dict]]


def extra_regressors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Evaluation joint sets the model carries regressors for (e.g. H36M-17)."""
    cfg = model.cfg
    return {s: model.extra_regressor(s) for s in cfg.eval_joint_sets if model.extra_regressor(s).numel()}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, batches: Iterable[dict], prepare: Prepare, *,
                   device: torch.device, precision: str = "fp32", max_batches: int = 0,
                   prefix: str = "") -> dict[str, float]:
    """Mean errors in mm over ``batches`` (all of them, or the first ``max_batches``).

    Under torch.distributed, sums and counts are all-reduced so every rank returns the same
    figures over the union of the ranks' batches. Keys: mpjpe, pa_mpjpe, mpve, and
    <set>_mpjpe / <set>_pa_mpjpe for each extra regressor set, each with ``prefix``; plus
    ``{prefix}samples``.
    """
    inner = model.module if hasattr(model, "module") else model
    was_training = inner.training
    inner.eval()
    acc = MetricAccumulator()
    extra = extra_regressors(inner)
    n = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            inputs, targets = prepare(batch)
            with autocast_context(device, precision):
                pred = inner(inputs)
            evaluate_batch(acc, pred, targets, inner.cfg.joint_set, extra, prefix=prefix)
            n += int(targets["vertices"].shape[0])
    finally:
        inner.train(was_training)
    names, t = acc.merge_counts()
    if dist.is_available() and dist.is_initialized():
        # every rank must hold the same metric names: gather them first
        all_names: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(all_names, (names, n))
        union = sorted({x for ns, _ in all_names for x in ns})
        full = torch.zeros(2, len(union), dtype=torch.float64)
        for j, name in enumerate(names):
            full[:, union.index(name)] = t[:, j]
        dist.all_reduce(full)
        acc.load_counts(union, full)
        n = sum(c for _, c in all_names)
    out = acc.result()
    out[f"{prefix}samples"] = float(n)
    return out


class MeanPoseModel(torch.nn.Module):
    """Baseline: predicts the same mean joints and mesh (camera frame) for every input (see `mean_pose`)."""

    def __init__(self, reference: torch.nn.Module, joints: torch.Tensor, vertices: torch.Tensor):
        super().__init__()
        self.cfg = reference.cfg
        self.reference = reference  # for its regressors
        self.register_buffer("mean_joints", joints.float())
        self.register_buffer("mean_vertices", vertices.float())

    def extra_regressor(self, joint_set: str) -> torch.Tensor:
        return self.reference.extra_regressor(joint_set)

    def forward(self, inputs: torch.Tensor) -> dict[str, Any]:
        b = inputs.shape[0]
        v = self.mean_vertices.expand(b, -1, -1)
        return {"joints": self.mean_joints.expand(b, -1, -1), "vertices": v, "levels": [v],
                "camera": v.new_zeros(b, 3)}


def procrustes_mean(joints: torch.Tensor, vertices: torch.Tensor, iters: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean body pose with each sample's orientation factored out (generalised Procrustes).

    joints (N, J, 3), vertices (N, V, 3), root-centred, in each view's camera frame. Every
    sample is rotated about the root onto the running mean of the joints, and the means are
    recomputed, ``iters`` times. The result is turned to the best rotation onto the plain
    camera-frame mean, so it stands in the typical view orientation. Returns (J, 3), (V, 3).

    The plain average of camera-frame poses seen from all sides is a shrunken blob rather than
    a body; this is the pose a model that ignores its input should predict.
    """
    def centred(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(1, keepdim=True)

    j, v = joints.double(), vertices.double()
    ref = j[0:1]
    for _ in range(iters):
        rot, _ = rotation_onto(centred(j), centred(ref))  # (N, 3, 3)
        ref = (j @ rot.transpose(1, 2)).mean(0, keepdim=True)
    mean_v = (v @ rot.transpose(1, 2)).mean(0)
    turn = rotation_onto(centred(ref), centred(j.mean(0, keepdim=True)))[0][0]
    return (ref[0] @ turn.T).float(), (mean_v @ turn.T).float()


@torch.no_grad()
def mean_pose(batches: Iterable[dict], prepare: Prepare, max_batches: int = 0
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The baselines' (J, 3) joints and (V, 3) vertices from prepared targets (e.g. the train split).

    "mean_pose": the Procrustes mean (:func:`procrustes_mean`), the body pose a model that ignores
    its input should predict. "mean_camera_frame": the plain average of the camera-frame targets,
    views from all sides averaged into one shrunken shape (a weaker baseline, kept for comparison).
    """
    js, vs = [], []
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        _, t = prepare(batch)
        js.append(t["joints3d"].float().cpu())
        vs.append(t["vertices"].float().cpu())
    if not js:
        raise ValueError("mean pose: no training samples")
    j, v = torch.cat(js), torch.cat(vs)
    return {"mean_pose": procrustes_mean(j, v), "mean_camera_frame": (j.mean(0), v.mean(0))}


def evaluate_checkpoint(checkpoint: str, shards: str, split: str = "val", *, batch_size: int = 64,
                        mask_ratio: float = 0.3, max_batches: int = 0, baseline: bool = True,
                        baseline_batches: int = 50, num_workers: int = 0, device: str = "auto",
                        allow_unfrozen: bool = False, force: bool = False,
                        picture: str | None = None) -> dict[str, dict[str, float]]:
    """Score a pre-trained checkpoint on a store split.

    Returns {"clean": metrics, "missing_joints": metrics with MHM-style removed joints
    (ratio ``mask_ratio``, drawn from each sample's key), "mean_pose" and "mean_camera_frame":
    the baselines of :func:`mean_pose`, one prediction for every input}. Metrics in mm.
    ``picture``: also write predicted vs true meshes of the first samples to this PNG.
    """
    import dataclasses

    from .data import LoaderConfig, PairLoader
    from .inputs import InputConfig, prepare_batch
    from .loading import load_checkpoint_run

    dev = choose_device(device)
    probe = PairLoader(LoaderConfig(shards=shards, split=split, num_workers=0, allow_unfrozen=allow_unfrozen,
                                    shuffle=False, drop_last=False))
    model, run_cfg = load_checkpoint_run(checkpoint, expected_fingerprint=probe.fingerprint, force=force)
    model = model.to(dev)
    inputs_cfg = InputConfig(**run_cfg["inputs"])
    loader_cfg = LoaderConfig(shards=shards, split=split, batch_size=batch_size, num_workers=num_workers,
                              joint_set=model.cfg.joint_set, allow_unfrozen=allow_unfrozen).for_eval(split)
    if PairLoader(loader_cfg).dataset.num_pairs == 0:
        raise ValueError(f"{shards}: split {split!r} has no samples")

    def prep(icfg):
        def f(batch):
            mi = prepare_batch(batch, icfg, dev)
            return mi.tokens, {"joints3d": mi.joints3d, "vertices": mi.vertices, "joints2d": mi.joints2d,
                               "visible": mi.visible}
        return f

    clean = prep(inputs_cfg.without_augmentation())
    out = {"clean": evaluate_model(model, PairLoader(loader_cfg), clean, device=dev, max_batches=max_batches)}
    masked_cfg = dataclasses.replace(inputs_cfg.without_augmentation(mask_ratio), use_mhm=True)
    out["missing_joints"] = evaluate_model(model, PairLoader(loader_cfg), prep(masked_cfg), device=dev,
                                           max_batches=max_batches)
    if baseline:
        train_cfg = dataclasses.replace(loader_cfg, split="train")
        for name, (mj, mv) in mean_pose(PairLoader(train_cfg), clean, max_batches=baseline_batches).items():
            base = MeanPoseModel(model, mj.to(dev), mv.to(dev))
            out[name] = evaluate_model(base, PairLoader(loader_cfg), clean, device=dev, max_batches=max_batches)
    if picture:
        comparison_picture(model, PairLoader(loader_cfg), clean, picture, device=dev)
    return out


@torch.no_grad()
def comparison_picture(model: torch.nn.Module, batches: Iterable[dict], prepare: Prepare, out_png: str, *,
                       num: int = 4, device: torch.device | str = "cpu", size: int = 224) -> str:
    """Write a PNG: one row per held-out sample, true mesh (left, grey-blue) and predicted mesh
    (right, orange), both in the view's camera frame placed 3 m in front of a pinhole camera."""
    import cv2
    import numpy as np

    from mpt_data.raster import render_mesh  # cv2 + numpy only

    inner = model.module if hasattr(model, "module") else model
    was_training = inner.training
    inner.eval()
    faces = inner.faces.cpu().numpy()
    k = np.array([[size * 1.3, 0, size / 2], [0, size * 1.3, size / 2], [0, 0, 1]])
    rows: list = []
    try:
        for batch in batches:
            inputs, targets = prepare(batch)
            pred = inner(inputs)
            for i in range(inputs.shape[0]):
                if len(rows) >= num:
                    break
                tiles = []
                for verts, colour in ((targets["vertices"][i], (200, 170, 140)), (pred["vertices"][i], (80, 150, 230))):
                    v = verts.float().cpu().numpy() + np.array([0.0, 0.0, 3.0])
                    canvas = np.full((size, size, 3), 255, np.uint8)
                    tiles.append(render_mesh(canvas, v, faces, k, color=colour, cull_back=False))
                rows.append(np.concatenate(tiles, axis=1))
            if len(rows) >= num:
                break
    finally:
        inner.train(was_training)
    if not rows:
        raise ValueError("comparison picture: no samples")
    img = np.concatenate(rows, axis=0)
    cv2.putText(img, "truth", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "prediction", (size + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    if not cv2.imwrite(str(out_png), img):
        raise OSError(f"{out_png}: could not write the picture")
    return str(out_png)
