"""Pre-training: the loop of :mod:`mpt_train.trainer` fed from a store, with heatmaps made on the device.

The :class:`~mpt_train.trainer.Task` built here holds the mesh regression transformer (its mesh
shape and input layout taken from the store and the input configuration), the store loader
(a resumable stream of 2D/3D pairs), a ``prepare`` that synthesises heatmap tokens with Masked
Heatmap Modeling, noise and jitter on the device (:func:`mpt_train.inputs.prepare_batch`),
the paper's criterion, and the store's val split for validation. The presets (``tiny``,
``paper``) are constructors of the configs themselves: ``ModelConfig.tiny()``,
``InputConfig.tiny()``, ``TrainConfig.tiny()``.
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from mpt_data import schema

from .data import LoaderConfig, PairLoader
from .inputs import InputConfig, prepare_batch
from .losses import Criterion, LossConfig
from .model import (MeshRegressor, MeshTopology, ModelConfig, config_for_topology, topology_from_store,
                    typical_camera_rotation)
from .runtime import Runtime, precision_dtype
from .trainer import Task, TrainConfig
from .views import CameraDistribution, heatmap_joints_key, random_views


def model_config_for_store(preset: ModelConfig, reader, inputs_cfg: InputConfig) -> tuple[ModelConfig, MeshTopology]:
    """Resolve a preset against a store's topology and the input layout of ``inputs_cfg``."""
    topo = dataclasses.replace(topology_from_store(reader.topology()),
                               frame_rotation=typical_camera_rotation(reader.cameras.R))
    k = reader.num_heatmap_joints
    if inputs_cfg.use_heatmaps:
        n, d, kind = inputs_cfg.num_patches, inputs_cfg.token_dim(k), "heatmap"
    else:
        n, d, kind = k, inputs_cfg.token_dim(k), "coords"
    return config_for_topology(preset, topo, num_input_tokens=n, input_token_dim=d, input_kind=kind), topo


def pretrain_prepare(inputs_cfg: InputConfig, device: torch.device, precision: str,
                     cameras: CameraDistribution | None = None, heatmap_joint_set: str = "coco17",
                     joints_key: str = "joints3d"):
    """prepare(batch, train) for pre-training: camera-frame targets and heatmap tokens on ``device``.

    Training batches get MHM, noise and jitter as configured; evaluation batches none.
    cameras: None feeds the stored views; a distribution replaces each training batch's view by
    one random camera per sample key (:func:`mpt_train.views.random_views`, heatmap joints from
    the batch field ``joints_key``). Validation batches keep the stored views.
    """
    dtype = precision_dtype(precision)
    eval_cfg = inputs_cfg.without_augmentation()

    def prepare(batch: dict, train: bool) -> tuple[torch.Tensor, dict]:
        if train and cameras is not None:
            batch = random_views(batch, cameras, heatmap_joint_set, device, joints_key=joints_key)
        mi = prepare_batch(batch, inputs_cfg if train else eval_cfg, device, dtype)
        targets = {"joints3d": mi.joints3d, "vertices": mi.vertices, "joints2d": mi.joints2d,
                   "visible": mi.visible}
        return mi.tokens, targets

    return prepare


def camera_setting(cameras: CameraDistribution | None) -> dict:
    """The run config's ``cameras`` entry: {"mode": "rig"} or {"mode": "random", "distribution": {...}}."""
    if cameras is None:
        return {"mode": "rig"}
    return {"mode": "random", "distribution": cameras.to_dict()}


def build_pretrain_task(cfg: TrainConfig, preset: ModelConfig, inputs_cfg: InputConfig, loss_cfg: LossConfig,
                        loader_cfg: LoaderConfig, runtime: Runtime | None = None,
                        cameras: CameraDistribution | None = None) -> Task:
    """The pre-training Task: model from ``preset`` on the store's topology, store loader,
    heatmap `prepare`, the paper's criterion, and the val split for validation.

    runtime: where the run computes; by default resolved from ``cfg.device`` / ``cfg.precision``
    (joining the process group first: the loader takes its rank from it).
    cameras: None trains on the store's views (``--views rig``); a distribution draws one random
    camera per training sample on the device (``--views random``): the loader's pairs, and so
    the samples per epoch, stay the store's (mesh, camera) pairs, each pair's key picks its camera.
    The setting is part of the run's config (``cameras``) and a resume must match it.
    """
    runtime = runtime or Runtime.start(cfg.device, cfg.precision)
    loader_cfg = dataclasses.replace(loader_cfg, batch_size=cfg.batch_size, seed=cfg.seed,
                                     joint_set=preset.joint_set)
    heatmap_set = None
    if cameras is not None:
        probe = PairLoader(loader_cfg)
        heatmap_set = probe.reader.attrs.get(schema.ATTR_HEATMAP_JOINT_SET, "coco17")
        if heatmap_set != preset.joint_set and heatmap_set not in loader_cfg.extra_joint_sets:
            loader_cfg = dataclasses.replace(loader_cfg, extra_joint_sets=(*loader_cfg.extra_joint_sets, heatmap_set))
        if not loader_cfg.vertices:
            loader_cfg = dataclasses.replace(loader_cfg, vertices=True)
    train_loader = PairLoader(loader_cfg)
    model_cfg, topo = model_config_for_store(preset, train_loader.reader, inputs_cfg)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = MeshRegressor(model_cfg, topo)
    val_cfg = loader_cfg.for_eval("val")
    val_probe = PairLoader(val_cfg)
    has_val = val_probe.dataset.num_pairs > 0
    if not has_val:
        print(f"{loader_cfg.shards}: the val split is empty; no validation", file=sys.stderr)
    return Task(
        model=model,
        criterion=Criterion(loss_cfg, model, heatmap_joint_set=train_loader.reader.attrs.get(
            schema.ATTR_HEATMAP_JOINT_SET, "coco17")),
        train_batches=train_loader,
        prepare=pretrain_prepare(inputs_cfg, runtime.device, runtime.precision, cameras=cameras,
                                 heatmap_joint_set=heatmap_set or "coco17",
                                 joints_key=heatmap_joints_key(preset.joint_set, heatmap_set or "coco17")),
        val_batches=(lambda: PairLoader(val_cfg)) if has_val else None,
        config={"model": model_cfg.to_dict(), "inputs": dataclasses.asdict(inputs_cfg),
                "loss": loss_cfg.to_dict(), "loader": loader_cfg.to_dict(),
                "cameras": camera_setting(cameras)},
        resume_must_match=("cameras",),
        store_fingerprint=train_loader.fingerprint,
        runtime=runtime,
        elastic_resume=True,  # the store loader re-partitions an epoch's rest over other ranks
    )
