"""Fine-tuning: a 2D pose backbone in front of the pre-trained transformer, trained end to end.

This is the pre-training loop of :mod:`mpt_train.trainer` with another :class:`Task`: the
model is :class:`BackboneMPT` (image → 17 pose feature maps → 8×8 patches → the transformer),
the batches are the image mixture of :mod:`mpt_train.images`, ``prepare`` moves images and
targets to the device, and the criterion is the pre-training criterion (each term only where
its ground truth exists). ``--freeze-backbone`` keeps the 2D network fixed (the paper's
Table 4); evaluating a pre-trained checkpoint through a frozen off-the-shelf backbone with no
training at all is the paper's "test without fine-tuning" (:func:`no_finetune_model`).

The feature maps enter the transformer exactly where the MoCap heatmaps did: 17 maps at
224×224 cut into 784 patches of 8·8·17 values in :func:`mpt_train.inputs.patchify`'s order,
so the pre-trained input embedding applies unchanged.

Images reach the backbone as RGB; :class:`~mpt_train.backbones.PoseFeatureMaps` puts them in
its family's channel order. A fine-tuned checkpoint records that order (``channel_order``);
loading one whose recorded order differs from its family's today (a version-1 checkpoint, from
before the order was per family, fed every backbone RGB) raises ``ChannelOrderMismatch`` instead
of running a backbone on colours it was not trained with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from .backbones import BackboneConfig, PoseFeatureMaps, channel_order
from .images import ImageBatches, ImageDecodeError, ImageStream, ImageStreamConfig, MixtureEntry, read_mixture
from .inputs import patchify
from .model import MeshRegressor, model_from_state, topology_from_store

FINETUNE_STATE_VERSION = 2  # 2: records the backbone's input channel order
IMAGE_JOINT_SET = "coco17"  # the 3D joints image shards carry


class ChannelOrderMismatch(ValueError):
    """A fine-tuned checkpoint whose backbone was fed another channel order than its family reads now."""


class BackboneMPT(nn.Module):
    """Image crops (B, 3, 224, 224) RGB in [0, 1] → the prediction dict of :class:`MeshRegressor`.

    ``cfg`` and ``extra_regressor`` are the transformer's, so evaluation and the criterion
    treat this model like the pre-training one.
    """

    def __init__(self, backbone: PoseFeatureMaps, regressor: MeshRegressor, patch: int | None = None):
        super().__init__()
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
        maps = self.backbone(images)
        out = self.regressor(patchify(maps, self.patch))
        out["maps"] = maps
        return out

    def state_dict_versioned(self) -> dict[str, Any]:
        """Everything needed to rebuild the model without data: configs, backbone and transformer."""
        bcfg = dataclasses.replace(self.backbone.cfg, checkpoint=None)
        return {"version": FINETUNE_STATE_VERSION, "kind": "backbone_mpt", "patch": self.patch,
                "backbone_config": dataclasses.asdict(bcfg), "channel_order": self.backbone.channel_order,
                "backbone": self.backbone.net.state_dict(), "regressor": self.regressor.state_dict_versioned()}

    def load_state_dict_versioned(self, blob: Mapping[str, Any]) -> None:
        if blob.get("version") not in (1, FINETUNE_STATE_VERSION) or blob.get("kind") != "backbone_mpt":
            raise ValueError(f"not a fine-tuned MPT state (version {blob.get('version')}, kind {blob.get('kind')})")
        fed = blob.get("channel_order", "RGB")  # version 1 fed every backbone RGB
        if fed != self.backbone.channel_order:
            kind = self.backbone.cfg.kind
            raise ChannelOrderMismatch(
                f"fine-tuned with {fed} input to its {kind} backbone, but {kind} reads {self.backbone.channel_order} "
                "(the order of its public weights): fine-tune again from the pre-trained checkpoint")
        self.backbone.net.load_state_dict(blob["backbone"], strict=True)
        self.regressor.load_state_dict_versioned(blob["regressor"])


def model_from_blob(blob: Mapping[str, Any], backbone: BackboneConfig | None = None) -> nn.Module:
    """A model from a checkpoint's model blob: a fine-tuned BackboneMPT, or a bare pre-trained
    transformer (then ``backbone`` must be given to make a BackboneMPT; else it is returned bare)."""
    if blob.get("kind") == "backbone_mpt":
        bcfg = BackboneConfig(**blob["backbone_config"])
        if backbone is not None and backbone.frozen != bcfg.frozen:
            bcfg = dataclasses.replace(bcfg, frozen=backbone.frozen)
        model = BackboneMPT(PoseFeatureMaps(bcfg), model_from_state(blob["regressor"]), int(blob["patch"]))
        model.load_state_dict_versioned(blob)
        return model
    regressor = model_from_state(blob)
    if backbone is None:
        return regressor
    return BackboneMPT(PoseFeatureMaps(backbone), regressor)


def load_checkpoint_model(path: str | Path, backbone: BackboneConfig | None = None) -> nn.Module:
    """The model of a trainer checkpoint (folder, run folder or RUN/latest)."""
    from . import checkpoint as ckpt

    state, _ = ckpt.load(path)
    try:
        return model_from_blob(state["model"], backbone)
    except ChannelOrderMismatch as exc:
        raise ChannelOrderMismatch(f"{path}: {exc}") from exc


def no_finetune_model(pretrained: str | Path, backbone: BackboneConfig) -> BackboneMPT:
    """The paper's "test without fine-tuning": a pre-trained transformer fed by a frozen backbone."""
    model = load_checkpoint_model(pretrained, dataclasses.replace(backbone, frozen=True))
    if not isinstance(model, BackboneMPT):
        raise ValueError(f"{pretrained}: expected a pre-trained transformer checkpoint")
    model.backbone.set_frozen(True)
    return model


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
# Batches → device tensors; a finite, ordered pass over shards for validation


def crop_pixels_to_unit(joints2d: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 2) crop pixels with pixel centres at integers (image shards, cv2) → [-1, 1] across the
    crop, the unit of :func:`mpt_train.inputs.normalise_2d` (whose pixel centres are at i + 0.5)."""
    from mpt_data.schema import PIXEL_CENTRE

    from .inputs import normalise_2d

    return normalise_2d(joints2d.float() + PIXEL_CENTRE, size)


def image_prepare(device: torch.device):
    """prepare(batch, train) → (images (B, 3, 224, 224) on device, targets of mpt_train.losses);
    2D joints converted from crop pixels to [-1, 1] crop units."""
    keys = ("joints3d", "vertices", "joints2d", "visible", "has_joints3d", "has_vertices", "joints3d_conf")

    def prepare(batch: dict, train: bool = False) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(device, non_blocking=True)
        targets = {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}
        if "joints2d" in targets:  # the re-projection loss compares in [-1, 1] crop units
            targets["joints2d"] = crop_pixels_to_unit(targets["joints2d"], images.shape[-1])
        for k in ("spin3d",):
            if k in batch:
                targets[k] = batch[k].to(device)
        return images, targets

    return prepare


class ImageEvalBatches:
    """Every sample of the given shard folders once, in order, centred crops (no augmentation).

    Row groups are dealt to ranks round-robin, so ranks see disjoint parts. Batches carry the
    training keys plus ``spin3d`` (B, 24, 4): the raw SPIN-24 3D joints (camera frame,
    metres, confidence) for the benchmark protocols. A row whose JPEG cannot be decoded is
    left out with a warning naming its shard and row (as in the training stream) and counted
    in ``skipped_rows`` (this pass).
    """

    def __init__(self, folders: list[str], batch_size: int, num_vertices: int, rank: int = 0, world_size: int = 1,
                 max_samples: int = 0):
        from .augment import AugmentConfig

        self.folders, self.batch_size = list(folders), batch_size
        self.rank, self.world_size, self.max_samples = rank, world_size, max_samples
        self.skipped_rows = 0
        entries = tuple(MixtureEntry(Path(f).name, f, 1.0) for f in self.folders)
        self.stream = ImageStream(ImageStreamConfig(entries, augment=AugmentConfig(enabled=False),
                                                    num_vertices=num_vertices), rank, world_size)

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng(0)
        buf: list[dict] = []
        n = 0
        self.skipped_rows = 0
        for d, ds in enumerate(self.stream.datasets):
            for u in range(len(ds.units)):
                if u % self.world_size != self.rank:
                    continue
                for row in self.stream.load_rows(d, u):
                    if self.max_samples and n >= self.max_samples:
                        break
                    try:
                        s = self.stream._prepare(row, d, rng)
                    except ImageDecodeError as exc:
                        self.skipped_rows += 1
                        self.stream.report_bad_row(row, d, exc, self.skipped_rows)
                        continue
                    s["spin3d"] = torch.tensor(row["S"], dtype=torch.float32).reshape(24, 4)
                    buf.append(s)
                    n += 1
                    if len(buf) == self.batch_size:
                        yield _collate(buf)
                        buf = []
        if buf:
            yield _collate(buf)


def _collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


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


def build_finetune_task(train_cfg, ft: FinetuneConfig, loss_cfg) -> "Task":
    """The fine-tuning Task for :func:`mpt_train.trainer.train` (same loop as pre-training)."""
    import os

    from .augment import AugmentConfig
    from .losses import Criterion
    from .trainer import Task, resolve_device, setup_distributed

    device_kind = resolve_device(train_cfg)
    ddp = setup_distributed(device_kind)
    device = torch.device(device_kind, int(os.environ.get("LOCAL_RANK", "0"))) if device_kind == "cuda" \
        else torch.device("cpu")
    backbone_cfg = dataclasses.replace(ft.backbone, frozen=ft.freeze_backbone)
    model = load_checkpoint_model(ft.init, backbone_cfg)
    if not isinstance(model, BackboneMPT):
        raise ValueError(f"{ft.init}: not a transformer checkpoint")
    model.backbone.set_frozen(ft.freeze_backbone)
    if ft.scratch_store:
        model.regressor = scratch_regressor(model.regressor, ft.scratch_store, train_cfg.seed)
    if model.cfg.joint_set != IMAGE_JOINT_SET:
        raise ValueError(f"the transformer predicts {model.cfg.joint_set!r} joints; image shards carry "
                         f"{IMAGE_JOINT_SET!r} 3D joints: pre-train with joint set {IMAGE_JOINT_SET}")
    nv = model.cfg.level_sizes[-1]
    mix = read_mixture(ft.data, seed=train_cfg.seed, num_vertices=nv,
                       augment=AugmentConfig(enabled=ft.augment))
    stream = ImageStream(mix, ddp.rank, ddp.world_size)
    if ft.fraction < 1.0:
        keep_units(stream, ft.fraction, train_cfg.seed)
    if mix.vertex_flip:
        stream.vertex_flip = load_vertex_flip(mix.vertex_flip, nv)
    batches = ImageBatches(stream, train_cfg.batch_size, ft.workers, pin_memory=device.type == "cuda")
    val = list(ft.val)
    prepare = image_prepare(device)
    return Task(
        model=model, criterion=Criterion(loss_cfg, model.regressor), train_batches=batches,
        prepare=prepare,
        val_batches=(lambda: ImageEvalBatches(val, train_cfg.batch_size, nv, ddp.rank, ddp.world_size)) if val else None,
        config={"finetune": _plain(dataclasses.asdict(ft)), "model": model.cfg.to_dict(), "loss": loss_cfg.to_dict(),
                "mixture": [dataclasses.asdict(e) for e in mix.datasets]},
        store_fingerprint=None,
    )


def load_vertex_flip(path: str, num_vertices: int) -> np.ndarray:
    """A (V,) mirror-vertex permutation from ``.npy``, checked against the model's mesh."""
    flip = np.load(path)
    if flip.shape != (num_vertices,) or not np.array_equal(np.sort(flip), np.arange(num_vertices)):
        raise ValueError(f"{path}: not a permutation of the model's {num_vertices} vertices")
    return flip.astype(np.int64)


def keep_units(stream: ImageStream, fraction: float, seed: int) -> None:
    """Keep a seeded ``fraction`` of each dataset's rows (at least one), so that 1 % of 1000
    images trains on 10 of them whatever the row-group size; groups left empty are dropped."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction}: must be in (0, 1]")
    for d, ds in enumerate(stream.datasets):
        sizes = np.asarray([rows for _, _, rows in ds.units], np.int64)
        total = int(sizes.sum())
        k = max(1, int(round(total * fraction)))
        chosen = np.sort(np.random.default_rng([seed, d, 0xF7]).permutation(total)[:k])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        unit_of = np.searchsorted(starts, chosen, side="right") - 1
        units, kept = [], {}
        for u in np.unique(unit_of):
            path, group, _ = ds.units[u]
            local = (chosen[unit_of == u] - starts[u]).tolist()
            units.append((path, group, len(local)))
            kept[(path, group)] = local
        ds.units, ds.kept = units, kept


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out[k] = _plain(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
    return out



# ------------------------------------------------------------------------------------------
# Comparing runs (the demo's table)


def final_validation(run_dir: str | Path) -> dict[str, float]:
    """The last validation record of a run (``RUN/metrics.jsonl``, kind "val"), in mm."""
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a training run folder)")
    last = None
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "val":
            last = rec
    if last is None:
        raise ValueError(f"{path}: the run has no validation record (was it given --val?)")
    return {k: float(v) for k, v in last.items() if k not in ("kind",)}


def compare_runs(runs: Mapping[str, str | Path], columns: tuple[str, ...] = ("pa_mpjpe", "mpjpe", "mpve")
                 ) -> tuple[dict[str, dict[str, float]], str]:
    """({name: final validation metrics}, a markdown table of ``columns`` in mm) for named runs."""
    res = {name: final_validation(path) for name, path in runs.items()}
    head = "| run | step | " + " | ".join(f"{c} (mm)" for c in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 2)
    rows = [f"| {name} | {int(r.get('step', 0))} | " + " | ".join(f"{r.get(c, float('nan')):.1f}" for c in columns) + " |"
            for name, r in res.items()]
    return res, "\n".join([head, rule, *rows]) + "\n"
