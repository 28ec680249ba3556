"""Fine-tuning: a 2D pose backbone in front of the pre-trained transformer, trained end to end.

This is the loop of :mod:`mpt_train.trainer` with another :class:`~mpt_train.trainer.Task`: the
model is :class:`~mpt_train.loading.BackboneMPT` (image -> K pose feature maps -> 8x8 patches ->
the transformer; K = the maps the transformer was pre-trained on: 17 for people, 21 for hands, so the
2D network's head gets 21 output channels in front of a hand model), the batches are the image mixture of :mod:`mpt_train.images`, ``prepare``
moves images and targets to the device, and the criterion is the pre-training criterion (each
term only where its ground truth exists). ``--freeze-backbone`` keeps the 2D network fixed (the
paper's Table 4); evaluating a pre-trained checkpoint through a frozen off-the-shelf backbone
with no training at all is the paper's "test without fine-tuning"
(:func:`mpt_train.loading.no_finetune_model`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .augment import AugmentConfig
from .backbones import BackboneConfig, PoseFeatureMaps
from .checkpoint import CheckpointError
from .images import (ImageBatches, ImageEvalBatches, ImageStream, MixtureError, image_prepare, keep_units,
                     read_mixture)
from .loading import BackboneMPT, MapFeed, load_checkpoint_model
from .losses import Criterion, LossConfig
from .model import MeshRegressor, topology_from_store
from .runtime import Runtime
from .trainer import Task, TrainConfig

IMAGE_JOINT_SETS = ("coco17", "hand21")  # the 3D joints image shards carry (people, hands)


def heatmap_channels(cfg) -> int:
    """Heatmap channels K a transformer reads (its input tokens are patch x patch x K values of K maps on
    the 224 px grid): 17 for COCO-17 people, 21 for hands."""
    from mpt_data.schema import CROP_SIZE

    patch = CROP_SIZE // max(1, math.isqrt(cfg.num_input_tokens))
    return cfg.input_token_dim // (patch * patch)


def fit_backbone(backbone: BackboneConfig, cfg) -> BackboneConfig:
    """``backbone`` with as many output maps as the transformer of config ``cfg`` reads (21 for a hand model)."""
    return dataclasses.replace(backbone, num_joints=heatmap_channels(cfg))


def scratch_regressor(like: MeshRegressor, store: str, seed: int) -> MeshRegressor:
    """A freshly initialised transformer with ``like``'s configuration on ``store``'s topology
    (the same initialisation a pre-training run starts from): the from-scratch baseline."""
    from .store import open_store

    topo = topology_from_store(open_store(store, allow_unfrozen=True).topology())
    torch.manual_seed(seed)
    fresh = MeshRegressor(like.cfg, topo)
    with torch.no_grad():  # the query template in the typical camera frame, as pre-training sets it up
        fresh.query_template.copy_(like.query_template)
    return fresh


# ------------------------------------------------------------------------------------------
# The fine-tuning Task


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune on what.

    init: pre-trained (or fine-tuned) checkpoint. data: mixture YAML. val: shard folders for
    validation. backbone: the 2D network (its ``checkpoint`` a public COCO ``.pth``).
    freeze_backbone: Table 4. scratch_store: when set, the transformer is re-initialised on
    this store's topology instead of taking the pre-trained weights (the from-scratch
    baseline, same architecture). workers: DataLoader workers per rank. augment: on/off.
    fraction: keep this share of each dataset's row groups (the paper's Fig. 4b data sizes).
    feed: how the 2D network's maps enter the transformer (:class:`mpt_train.loading.MapFeed`).
    backbone_lr_scale: the 2D network's learning rate as a multiple of the transformer's (a network
    that is already trained moves less than the transformer adapting to it).
    """

    init: str
    data: str
    val: tuple[str, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    freeze_backbone: bool = False
    scratch_store: str | None = None
    workers: int = 0
    augment: bool = True
    fraction: float = 1.0
    feed: MapFeed = field(default_factory=MapFeed)
    backbone_lr_scale: float = 1.0


def build_finetune_task(train_cfg: TrainConfig, ft: FinetuneConfig, loss_cfg: LossConfig | None = None,
                        runtime: Runtime | None = None) -> Task:
    """The fine-tuning Task for :func:`mpt_train.trainer.train` (same loop as pre-training).

    loss_cfg: the loss weights; by default those for the pre-trained model's joint set
    (:meth:`LossConfig.for_joint_set`: hands weight their 3D terms 8).
    runtime: where the run computes; by default resolved from ``train_cfg.device`` / ``precision``.
    """
    runtime = runtime or Runtime.start(train_cfg.device, train_cfg.precision)
    device = runtime.device
    backbone_cfg = dataclasses.replace(ft.backbone, frozen=ft.freeze_backbone)
    model = load_checkpoint_model(ft.init, feed=ft.feed)
    if isinstance(model, MeshRegressor):  # a pre-trained transformer: the 2D network gets its K maps
        backbone_cfg = fit_backbone(backbone_cfg, model.cfg)
        model = BackboneMPT(PoseFeatureMaps(backbone_cfg), model, feed=ft.feed)
    if not isinstance(model, BackboneMPT):
        raise CheckpointError(f"{ft.init}: not a transformer checkpoint")
    ft = dataclasses.replace(ft, backbone=fit_backbone(ft.backbone, model.cfg))  # recorded: the maps it makes
    model.backbone.set_frozen(ft.freeze_backbone)
    if ft.scratch_store:
        model.regressor = scratch_regressor(model.regressor, ft.scratch_store, train_cfg.seed)
    if model.cfg.joint_set not in IMAGE_JOINT_SETS:
        raise CheckpointError(f"{ft.init}: the transformer predicts {model.cfg.joint_set!r} joints; image shards "
                              f"carry {' or '.join(IMAGE_JOINT_SETS)} 3D joints: pre-train with one of those joint sets")
    nv = model.cfg.level_sizes[-1]
    mix = read_mixture(ft.data, seed=train_cfg.seed, num_vertices=nv,
                       augment=AugmentConfig(enabled=ft.augment))
    stream = ImageStream(mix, runtime.rank, runtime.world_size)
    if stream.joint_set != model.cfg.joint_set:
        raise MixtureError(f"{ft.data}: its images carry {stream.joint_set!r} joints, the transformer of {ft.init} "
                           f"predicts {model.cfg.joint_set!r}: fine-tune a hand model on hand images (FreiHAND) and a "
                           "body model on images of people")
    if ft.fraction < 1.0:
        keep_units(stream, ft.fraction, train_cfg.seed)
    if mix.vertex_flip:
        stream.vertex_flip = load_vertex_flip(mix.vertex_flip, nv)
    batches = ImageBatches(stream, train_cfg.batch_size, ft.workers, pin_memory=device.type == "cuda")
    val = list(ft.val)
    prepare = image_prepare(device)
    loss_cfg = loss_cfg or LossConfig.for_joint_set(model.cfg.joint_set)
    return Task(
        model=model, criterion=Criterion(loss_cfg, model.regressor), train_batches=batches,
        prepare=prepare,
        val_batches=(lambda: ImageEvalBatches(val, train_cfg.batch_size, nv, runtime.rank, runtime.world_size)) if val else None,
        config={"finetune": _plain(dataclasses.asdict(ft)), "model": model.cfg.to_dict(), "loss": loss_cfg.to_dict(),
                "mixture": [dataclasses.asdict(e) for e in mix.datasets]},
        store_fingerprint=None,
        runtime=runtime,
        param_groups=lambda lr: _param_groups(model, lr, ft.backbone_lr_scale),
    )


def _param_groups(model: BackboneMPT, lr: float, backbone_scale: float) -> list[dict]:
    """The transformer's trainable parameters at ``lr``, the 2D network's at ``lr * backbone_scale``."""
    groups = [{"params": [p for p in model.regressor.parameters() if p.requires_grad], "lr": lr},
              {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": lr * backbone_scale}]
    return [g for g in groups if g["params"]]


def load_vertex_flip(path: str, num_vertices: int) -> np.ndarray:
    """A (V,) mirror-vertex permutation from ``.npy``, checked against the model's mesh."""
    flip = np.load(path)
    if flip.shape != (num_vertices,) or not np.array_equal(np.sort(flip), np.arange(num_vertices)):
        raise MixtureError(f"{path}: not a permutation of the model's {num_vertices} vertices")
    return flip.astype(np.int64)


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out[k] = _plain(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
    return out
