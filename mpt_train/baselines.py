"""The rows of an image evaluation: the models under test, what they must beat, and their ceiling.

Every image evaluation (``mpt-train evaluate-images``, the demo's table) scores, besides the
fine-tuned models it is given:

- **mean pose**: one constant prediction, the Procrustes mean of the training images' 3D labels
  (:func:`mpt_train.evaluate.procrustes_mean`). A model that ignores its input scores this.
- **no fine-tune**: the pre-trained transformer behind the 2D pose network it was fine-tuned from,
  both unchanged (the paper's "test without fine-tuning").
- **oracle**: the pre-trained transformer fed heatmaps rendered from the images' ground-truth 2D
  joints exactly as pre-training renders them from the store (same σ, patch and pixel convention,
  no masking or noise). It is the ceiling of the pre-trained transformer on these images; a gap
  between it and the store's own validation figure is a mismatch of conventions (camera, crop,
  joint definitions) between the image path and the store path.

The fine-tuned checkpoint's run config names what the baselines need (``finetune.init``: the
pre-trained checkpoint; ``finetune.backbone``: the 2D network; ``finetune.data``: the training
mixture), so one checkpoint is enough to get all of them; each can also be given explicitly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from mpt_data.schema import PIXEL_CENTRE

from .backbones import BackboneConfig
from .evaluate import MeanPoseModel, Prepare, evaluate_model, mean_pose
from .images import ImageEvalBatches, image_prepare, read_mixture
from .inputs import InputConfig, heatmap_windows
from .loading import BackboneMPT, MapFeed, load_checkpoint_run, no_finetune_model
from .model import MeshRegressor
from .protocols import evaluate_protocol

# Columns of the table, in this order (a protocol reports the ones it defines): errors in mm, F-scores (FreiHAND)
# unitless.
COLUMNS = ("mpjpe", "pa_mpjpe", "mpve", "pa_mpvpe", "f_score_5mm", "f_score_15mm")


def oracle_prepare(device: torch.device, inputs: InputConfig) -> Prepare:
    """prepare(batch) -> (heatmap windows of the batch's ground-truth 2D joints, image targets).

    The image shards' 2D joints are crop pixels with pixel centres at integers; pre-training's
    heatmaps put centres at i + 0.5 (:mod:`mpt_train.inputs`), hence the shift. Joints that are not
    visible (unlabelled or outside the crop) get no heatmap, as in pre-training.
    """
    targets_of = image_prepare(device)

    def prepare(batch: dict, train: bool = False) -> tuple[object, dict]:
        images, targets = targets_of(batch)
        size = images.shape[-1]
        if size != inputs.size:
            raise ValueError(f"image crops are {size} px, the transformer was pre-trained on {inputs.size} px heatmaps")
        xy = batch["joints2d"].to(device).float() + PIXEL_CENTRE
        present = batch["visible"].to(device).bool()
        return heatmap_windows(xy, present, inputs.size, inputs.sigma, inputs.patch), targets

    return prepare


def pretraining_inputs(run_config: Mapping, regressor: MeshRegressor) -> InputConfig:
    """The heatmap settings a transformer was pre-trained with (its run config's ``inputs``), without
    masking, noise or jitter; from the token count alone (patch side) when the run config has none."""
    saved = run_config.get("inputs")
    if saved:
        fields = {f.name for f in dataclasses.fields(InputConfig)}
        cfg = InputConfig(**{k: v for k, v in saved.items() if k in fields})
    else:
        cfg = InputConfig(patch=cfg_patch(regressor))
    return cfg.without_augmentation()


def cfg_patch(regressor: MeshRegressor, size: int = 224) -> int:
    """The heatmap patch side of a transformer from its number of input tokens."""
    return size // max(1, math.isqrt(regressor.cfg.num_input_tokens))


@dataclass(frozen=True)
class BaselineSources:
    """Where the baselines come from: the pre-trained checkpoint, the 2D network in front of it for
    the no-fine-tune row, and the training mixture for the mean pose. None leaves that row out."""

    pretrained: str | None = None
    backbone: BackboneConfig | None = None
    train_data: str | None = None
    feed: MapFeed = MapFeed()


def sources_from_run(run_config: Mapping) -> BaselineSources:
    """The baseline sources a fine-tuning run recorded (its ``finetune`` section), or none."""
    ft = run_config.get("finetune") or {}
    bb = ft.get("backbone")
    return BaselineSources(pretrained=ft.get("init"), backbone=BackboneConfig(**bb) if bb else None,
                           train_data=ft.get("data"), feed=MapFeed(**ft["feed"]) if ft.get("feed") else MapFeed())


@dataclass
class Row:
    """One row of the table: a model and how batches become its inputs."""

    model: torch.nn.Module
    prepare: Prepare


def baseline_rows(sources: BaselineSources, like: torch.nn.Module, device: torch.device, *,
                  batch_size: int = 32, max_train_samples: int = 2000) -> dict[str, Row]:
    """The baseline rows that ``sources`` allow, in table order: mean pose, no fine-tune, oracle.

    like: a model under test (its mesh size and regressors serve the mean-pose row).
    """
    rows: dict[str, Row] = {}
    nv = like.cfg.level_sizes[-1]
    plain = image_prepare(device)
    if sources.train_data:
        mix = read_mixture(sources.train_data)
        train = ImageEvalBatches([e.shards for e in mix.datasets], batch_size, nv, max_samples=max_train_samples)
        joints, vertices = mean_pose(train, plain)["mean_pose"]
        rows["mean pose (train images)"] = Row(MeanPoseModel(like, joints, vertices).to(device), plain)
    if sources.pretrained:
        regressor, run_config = load_checkpoint_run(sources.pretrained)
        if isinstance(regressor, MeshRegressor):
            # a fine-tuning run that started its 2D network from random weights has no network to test
            # the pre-trained transformer behind: no row then (it would score an unseeded random network)
            if sources.backbone is not None and sources.backbone.checkpoint:
                model = no_finetune_model(sources.pretrained, sources.backbone, sources.feed)
                rows["no fine-tune"] = Row(model.to(device), plain)
            rows["oracle (true 2D heatmaps)"] = Row(
                regressor.to(device), oracle_prepare(device, pretraining_inputs(run_config, regressor)))
    return rows


def score_rows(rows: Mapping[str, Row], folders: list[str], protocol: str, device: torch.device, *,
               h36m_regressor: torch.Tensor | None = None, batch_size: int = 32, max_batches: int = 0,
               progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """{row name: metrics in mm} over the image shard ``folders`` under ``protocol``
    ("train-metrics": the training loop's MPJPE / PA-MPJPE / MPVE; or a benchmark protocol)."""
    out = {}
    for name, row in rows.items():
        if progress is not None:
            progress(name)
        nv = row.model.cfg.level_sizes[-1]
        batches = ImageEvalBatches(list(folders), batch_size, nv)
        if protocol == "train-metrics":
            res = evaluate_model(row.model, batches, row.prepare, device=device, max_batches=max_batches)
        else:
            res = evaluate_protocol(row.model, batches, row.prepare, protocol, h36m_regressor, device, max_batches)
        out[name] = res
    return out


def results_table(results: Mapping[str, Mapping[str, float]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A markdown table (one row per model, the given columns: errors in mm with one decimal, F-scores with
    three; "–" where a protocol has none)."""
    present = [c for c in columns if any(c in r for r in results.values())]
    width = max(len(n) for n in results) if results else 5
    titles = [c if c.startswith("f_score") else f"{c} (mm)" for c in present]
    head = f"| {'model':<{width}} | " + " | ".join(titles) + " |"
    rule = f"|{'-' * (width + 2)}|" + "|".join("-" * (len(t) + 2) for t in titles) + "|"
    lines = [head, rule]
    for name, r in results.items():
        cells = [("–" if c not in r else f"{r[c]:.3f}" if c.startswith("f_score") else f"{r[c]:.1f}") for c in present]
        lines.append(f"| {name:<{width}} | " + " | ".join(f"{v:>{len(t)}}" for v, t in zip(cells, titles)) + " |")
    return "\n".join(lines) + "\n"


def models_under_test(checkpoints: Mapping[str, str]) -> tuple[dict[str, torch.nn.Module], BaselineSources]:
    """Load the named fine-tuned checkpoints; the baseline sources recorded by the first that has them."""
    models, sources = {}, BaselineSources()
    for name, path in checkpoints.items():
        model, run_config = load_checkpoint_run(path)
        if not isinstance(model, BackboneMPT):
            raise ValueError(f"{path}: a pre-trained transformer, not a fine-tuned model; pass it as --pretrained "
                             "(or use --no-finetune with a backbone)")
        models[name] = model
        if sources == BaselineSources():
            sources = sources_from_run(run_config)
    return models, sources
