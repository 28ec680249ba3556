"""Train a 2D pose backbone on image shards with a heatmap loss: an "off-the-shelf" network of our own.

MPT's fine-tuning puts a 2D pose network trained elsewhere (SimpleBaseline, HRNet on COCO) in front
of the transformer. Where no public checkpoint can be used (the CPU demo's small ResNet, or a new
joint layout), this trains one with the shared loop of :mod:`mpt_train.trainer`: the model is
:class:`~mpt_train.backbones.PoseFeatureMaps` (trained on its own map grid; fine-tuning resizes
the maps to the transformer's 224 px grid), the
targets are Gaussian heatmaps of the same formula and pixel convention as
:func:`mpt_train.inputs.render_heatmaps`, and the loss is their mean squared difference over the
visible joints. The target width σ belongs to this loss only: pre-training's σ = 3 px (at 224) is
under one output pixel of a stride-4 network reading 128 px crops, too sharp to learn in a few
hundred CPU steps, so the demo trains with σ = 8 (about 1.1 output pixels; the public COCO networks
use 2 output pixels). The maps the network then makes are what fine-tuning feeds the transformer,
which adapts to their width end to end. The result is exported as ``RUN/pose_network.pth``, a bare
state dict with the public key names, which ``--backbone-checkpoint`` loads strictly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mpt_data.schema import CROP_SIZE, PIXEL_CENTRE

from .augment import AugmentConfig
from .backbones import BackboneConfig, PoseFeatureMaps, argmax_joints
from .images import ImageBatches, ImageStream, read_mixture
from .inputs import render_heatmaps
from .runtime import Runtime
from .trainer import Task, TrainConfig

POSE_NETWORK_FILE = "pose_network.pth"


@dataclass(frozen=True)
class PoseNetConfig:
    """The 2D network's training: mixture YAML, validation shard folders, backbone, heatmap σ (px of
    the 224 crop; the loss is taken on the network's own map grid with σ scaled to it), DataLoader
    workers per rank, augmentation on/off."""

    data: str
    val: tuple[str, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sigma: float = 3.0
    workers: int = 0
    augment: bool = True


class HeatmapCriterion:
    """Mean squared heatmap error over visible joints, per joint normalised by the Gaussian's area.

    pred: (B, K, H, W) maps; targets["heatmaps"]: (B, K, H, W); targets["visible"]: (B, K) bool.
    loss = Σ_visible Σ_pixels (pred - target)² / (number of visible joints · π σ² / 2), the
    denominator being one target's own squared mass, so a map of all zeros scores 1, whatever the
    resolution and σ. Returns (loss, terms).
    """

    def __init__(self, sigma: float):
        self.area = math.pi * sigma * sigma / 2  # ∫ exp(-2 r²/σ²) dA: the target's own squared mass

    def __call__(self, pred: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        vis = targets["visible"].to(pred.dtype)
        err = (pred.float() - targets["heatmaps"].float()).pow(2).sum(dim=(-2, -1))  # (B, K)
        loss = (err * vis).sum() / (vis.sum().clamp_min(1.0) * self.area)
        return loss, {"heatmap": loss.detach()}


def heatmap_prepare(device: torch.device, sigma: float, size: int):
    """prepare(batch, train) → (images on device, {"heatmaps", "visible", "joints2d"}); the maps are
    rendered on the device from the 2D joints (crop pixels, centres at integers) on a ``size`` grid
    spanning the crop: joints and σ (given in crop pixels) scale by size / crop side."""

    def prepare(batch: dict, train: bool = False) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(device, non_blocking=True)
        j2d = batch["joints2d"].to(device).float()
        visible = batch["visible"].to(device).bool()
        k = size / images.shape[-1]
        maps = render_heatmaps((j2d + PIXEL_CENTRE) * k, visible, size, sigma * k)
        return images, {"heatmaps": maps, "visible": visible, "joints2d": j2d}

    return prepare


def build_posenet_task(train_cfg: TrainConfig, pcfg: PoseNetConfig, runtime: Runtime | None = None) -> Task:
    """The Task for :func:`mpt_train.trainer.train` that trains ``pcfg.backbone`` on heatmaps.

    runtime: where the run computes; by default resolved from ``train_cfg.device`` / ``precision``.
    """
    runtime = runtime or Runtime.start(train_cfg.device, train_cfg.precision)
    device = runtime.device
    torch.manual_seed(train_cfg.seed)
    # The loss is taken on the network's own map grid (32 px for 128 px input): the same
    # targets, without resizing every map to 224 and back through the gradient.
    probe = PoseFeatureMaps(dataclasses.replace(pcfg.backbone, frozen=False, checkpoint=None)).eval()
    side = pcfg.backbone.in_size or pcfg.backbone.out_size
    with torch.no_grad():
        native = int(probe.net(torch.zeros(1, 3, side, side)).shape[-1])
    model = PoseFeatureMaps(dataclasses.replace(pcfg.backbone, frozen=False, out_size=native))
    mix = read_mixture(pcfg.data, seed=train_cfg.seed, num_vertices=0, augment=AugmentConfig(enabled=pcfg.augment))
    stream = ImageStream(mix, runtime.rank, runtime.world_size)
    batches = ImageBatches(stream, train_cfg.batch_size, pcfg.workers, pin_memory=device.type == "cuda")
    return Task(
        model=model, criterion=HeatmapCriterion(pcfg.sigma * native / CROP_SIZE), train_batches=batches,
        prepare=heatmap_prepare(device, pcfg.sigma, model.cfg.out_size), val_batches=None,
        config={"posenet": _plain(dataclasses.asdict(pcfg)), "mixture": [dataclasses.asdict(e) for e in mix.datasets]},
        store_fingerprint=None,
        runtime=runtime,
    )


def export_pose_network(model: PoseFeatureMaps, run_dir: str | Path) -> Path:
    """Write ``RUN/pose_network.pth``: the bare network's state dict (public key names), atomically."""
    from mpt_data.fileio import atomic_write

    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    return atomic_write(Path(run_dir) / POSE_NETWORK_FILE, lambda f: torch.save(state, f))


@torch.no_grad()
def evaluate_pose_network(model: nn.Module, batches, device: torch.device, max_batches: int = 0,
                          threshold_px: float = 10.0) -> dict[str, float]:
    """2D accuracy on centred crops: mean distance (px at 224) between each visible joint and its
    map's arg-max, and the share within ``threshold_px`` (PCK)."""
    model.eval()
    dist_sum, close, count = 0.0, 0, 0
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        maps = model(batch["image"].to(device))
        gt = batch["joints2d"].to(device).float()
        vis = batch["visible"].to(device).bool()
        d = (argmax_joints(maps, batch["image"].shape[-1]) - gt).norm(dim=-1)[vis]
        dist_sum += float(d.sum())
        close += int((d <= threshold_px).sum())
        count += int(d.numel())
    if count == 0:
        raise ValueError("pose network evaluation: no visible joints in the validation data")
    return {"mean_px_error": dist_sum / count, f"pck@{threshold_px:g}px": close / count, "joints": float(count)}


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out[k] = _plain(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
    return out
