"""Models from checkpoints, for inference and for training alike; no training code is imported here.

A trainer checkpoint's model blob is either a bare pre-trained transformer
(:class:`~mpt_train.model.MeshRegressor`) or a fine-tuned :class:`BackboneMPT`: a 2D pose backbone
in front of the transformer (image -> 17 pose feature maps -> 8x8 patches -> the transformer).
:func:`load_checkpoint_model` rebuilds either from the blob alone (configs travel in it) and,
given a backbone config, puts a backbone in front of a bare transformer.

The feature maps enter the transformer exactly where the MoCap heatmaps did: 17 maps at
224x224 cut into 784 patches of 8*8*17 values in :func:`mpt_train.inputs.patchify`'s order,
so the pre-trained input embedding applies unchanged.

Images reach the backbone as RGB; :class:`~mpt_train.backbones.PoseFeatureMaps` puts them in
its family's channel order. A fine-tuned checkpoint records that order (``channel_order``);
loading one whose recorded order differs from its family's today (a version-1 checkpoint, from
before the order was per family, fed every backbone RGB) raises ``ChannelOrderMismatch`` instead
of running a backbone on colours it was not trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import checkpoint as ckpt
from .backbones import BackboneConfig, PoseFeatureMaps, refined_joints
from .inputs import heatmap_windows, patchify
from .model import MeshRegressor, model_from_state

FINETUNE_STATE_VERSION = 3  # 2: records the backbone's input channel order; 3: and how its maps are fed
FEED_MODES = ("maps", "keypoints")


@dataclass(frozen=True)
class MapFeed:
    """How the 2D network's output enters the pre-trained transformer.

    mode "maps": its heatmaps, resized to 224 px and cut into patches (the paper's design; a
    network whose maps are wider or fainter than pre-training's σ-px Gaussians hands the transformer
    inputs it never saw). "keypoints": each map's peak, refined to sub-pixel
    (:func:`mpt_train.backbones.refined_joints`), rendered as pre-training renders a joint (σ px at
    224, peak 1); a joint whose peak value is below ``threshold`` is left out, as pre-training's
    masking leaves joints out. The transformer then sees its pre-training inputs, with the 2D
    network's errors; the network still trains end to end through the refinement.
    """

    mode: str = "maps"
    sigma: float = 3.0
    threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in FEED_MODES:
            raise ValueError(f"feed mode {self.mode!r}: one of {FEED_MODES}")


class ChannelOrderMismatch(ValueError):
    """A fine-tuned checkpoint whose backbone was fed another channel order than its family reads now."""


class BackboneMPT(nn.Module):
    """Image crops (B, 3, 224, 224) RGB in [0, 1] → the prediction dict of :class:`MeshRegressor`.

    ``cfg`` and ``extra_regressor`` are the transformer's, so evaluation and the criterion
    treat this model like the pre-training one.
    """

    def __init__(self, backbone: PoseFeatureMaps, regressor: MeshRegressor, patch: int | None = None,
                 feed: MapFeed = MapFeed()):
        super().__init__()
        self.feed = feed
        rc = regressor.cfg
        if patch is None:  # the patch side the transformer was pre-trained with (tiny 16, paper 8)
            patch = backbone.cfg.out_size // max(1, math.isqrt(rc.num_input_tokens))
        expect = (backbone.cfg.out_size // patch) ** 2, backbone.cfg.num_joints * patch * patch
        if (rc.num_input_tokens, rc.input_token_dim) != expect:
            raise ValueError(f"transformer expects {rc.num_input_tokens} tokens of {rc.input_token_dim}, the backbone "
                             f"gives {expect[0]} of {expect[1]} ({backbone.cfg.num_joints} maps at "
                             f"{backbone.cfg.out_size} px, patch {patch})")
        self.backbone = backbone
        self.regressor = regressor
        self.patch = patch

    @property
    def cfg(self):
        return self.regressor.cfg

    def extra_regressor(self, joint_set: str) -> torch.Tensor:
        return self.regressor.extra_regressor(joint_set)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        if self.feed.mode == "keypoints":
            maps = self.backbone.native(images)
            size = self.backbone.cfg.out_size
            xy, peak = refined_joints(maps, size)
            windows = heatmap_windows(xy, peak > self.feed.threshold, size, self.feed.sigma, self.patch)
            out = self.regressor(windows)
        else:
            maps = self.backbone(images)
            out = self.regressor(patchify(maps, self.patch))
        out["maps"] = maps
        return out

    def state_dict_versioned(self) -> dict[str, Any]:
        """Everything needed to rebuild the model without data: configs, backbone and transformer."""
        bcfg = dataclasses.replace(self.backbone.cfg, checkpoint=None)
        return {"version": FINETUNE_STATE_VERSION, "kind": "backbone_mpt", "patch": self.patch,
                "feed": dataclasses.asdict(self.feed),
                "backbone_config": dataclasses.asdict(bcfg), "channel_order": self.backbone.channel_order,
                "backbone": self.backbone.net.state_dict(), "regressor": self.regressor.state_dict_versioned()}

    def load_state_dict_versioned(self, blob: Mapping[str, Any]) -> None:
        if blob.get("version") not in (1, 2, FINETUNE_STATE_VERSION) or blob.get("kind") != "backbone_mpt":
            raise ValueError(f"not a fine-tuned MPT state (version {blob.get('version')}, kind {blob.get('kind')})")
        fed = blob.get("channel_order", "RGB")  # version 1 fed every backbone RGB
        if fed != self.backbone.channel_order:
            kind = self.backbone.cfg.kind
            raise ChannelOrderMismatch(
                f"fine-tuned with {fed} input to its {kind} backbone, but {kind} reads {self.backbone.channel_order} "
                "(the order of its public weights): fine-tune again from the pre-trained checkpoint")
        self.backbone.net.load_state_dict(blob["backbone"], strict=True)
        self.regressor.load_state_dict_versioned(blob["regressor"])


def model_from_blob(blob: Mapping[str, Any], backbone: BackboneConfig | None = None,
                    feed: MapFeed = MapFeed()) -> nn.Module:
    """A model from a checkpoint's model blob: a fine-tuned BackboneMPT, or a bare pre-trained
    transformer (then ``backbone`` must be given to make a BackboneMPT; else it is returned bare)."""
    if blob.get("kind") == "backbone_mpt":
        bcfg = BackboneConfig(**blob["backbone_config"])
        if backbone is not None and backbone.frozen != bcfg.frozen:
            bcfg = dataclasses.replace(bcfg, frozen=backbone.frozen)
        feed = MapFeed(**blob["feed"]) if "feed" in blob else MapFeed()  # before version 3: the maps
        model = BackboneMPT(PoseFeatureMaps(bcfg), model_from_state(blob["regressor"]), int(blob["patch"]), feed)
        model.load_state_dict_versioned(blob)
        return model
    regressor = model_from_state(blob)
    if backbone is None:
        return regressor
    return BackboneMPT(PoseFeatureMaps(backbone), regressor, feed=feed)


def load_checkpoint_run(path: str | Path, backbone: BackboneConfig | None = None, *,
                        expected_fingerprint: str | None = None, force: bool = False,
                        feed: MapFeed = MapFeed()) -> tuple[nn.Module, dict]:
    """(model, the run's resolved config, {} if none) of a trainer checkpoint (folder, run folder or
    RUN/latest), on the CPU. ``backbone``, ``feed``: as for :func:`model_from_blob`. A checkpoint made against
    another store fingerprint than ``expected_fingerprint`` is refused unless ``force``."""
    state = ckpt.load_checkpoint(path, map_location="cpu", expected_fingerprint=expected_fingerprint, force=force).state
    try:
        model = model_from_blob(state["model"], backbone, feed)
    except ChannelOrderMismatch as exc:
        raise ChannelOrderMismatch(f"{path}: {exc}") from exc
    # A checkpoint saved outside the trainer (a bare model blob) records no run config.
    return model, json.loads(state["config"]) if "config" in state else {}


def load_checkpoint_model(path: str | Path, backbone: BackboneConfig | None = None, *,
                          expected_fingerprint: str | None = None, force: bool = False,
                          feed: MapFeed = MapFeed()) -> nn.Module:
    """The model of a trainer checkpoint (folder, run folder or RUN/latest), on the CPU."""
    return load_checkpoint_run(path, backbone, expected_fingerprint=expected_fingerprint, force=force, feed=feed)[0]


def no_finetune_model(pretrained: str | Path, backbone: BackboneConfig, feed: MapFeed = MapFeed()) -> BackboneMPT:
    """The paper's "test without fine-tuning": a pre-trained transformer fed by a frozen backbone."""
    model = load_checkpoint_model(pretrained, dataclasses.replace(backbone, frozen=True), feed=feed)
    if not isinstance(model, BackboneMPT):
        raise ckpt.CheckpointError(f"{pretrained}: expected a pre-trained transformer checkpoint")
    model.backbone.set_frozen(True)
    return model
