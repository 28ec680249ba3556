"""`mpt-train`: pre-train, fine-tune, evaluate and predict with the mesh regression transformer.

Each command maps its options onto the frozen config dataclasses of the trainer's
components; torch is imported inside the commands so `--help` is fast.
"""

from __future__ import annotations

import click

from mpt_data.console import DEVICES, PRECISIONS, CommandGroup, debug_option


class TrainerGroup(CommandGroup):
    """`mpt-train`'s group: the data side's expected errors and the trainer's own, each as one line."""

    def expected_errors(self) -> tuple[type[BaseException], ...]:
        from .backbones import CheckpointMismatch
        from .checkpoint import CheckpointError
        from .images import ImageDecodeError, ImageShardError, MixtureError
        from .loading import ChannelOrderMismatch
        from .report import RunReportError
        from .runtime import DeviceError
        from .trainer import RunFolderError

        return super().expected_errors() + (CheckpointError, RunFolderError, ImageShardError, ImageDecodeError,
                                            MixtureError, ChannelOrderMismatch, CheckpointMismatch, DeviceError,
                                            RunReportError)


@click.group(cls=TrainerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpt")
@debug_option
def main(debug: bool) -> None:
    """MPT trainer: pre-train on MoCap heatmaps from a store, fine-tune on images, evaluate.

    \b
    Typical use, after `mpt-data --help`'s (a frozen ./store, image shards in ./images):
      mpt-train pretrain --shards ./store --preset tiny --epochs 1 --out runs/pre
      mpt-train evaluate --checkpoint runs/pre/latest --shards ./store --split val
      mpt-train finetune --init runs/pre/latest --data ./images/mixture.yaml --backbone tiny --epochs 1 \\
        --out runs/ft
      mpt-train predict --checkpoint runs/ft/latest --image ./images/images/val/000000.jpg --out pred/
    Runs on CUDA when a GPU is present and on the CPU otherwise; use torchrun for many GPUs.
    """


def _run_training(cfg, task, **kw):
    """`trainer.train`, leaving no process group behind whatever happens (errors: see TrainerGroup)."""
    from .runtime import cleanup_distributed
    from .trainer import train

    try:
        return train(cfg, task, **kw)
    finally:
        cleanup_distributed()


def _stack(options):
    """A decorator applying ``options`` in the order listed (as they appear in --help)."""
    def decorate(f):
        for o in reversed(options):
            f = o(f)
        return f
    return decorate


# Shared option groups: declared once, validated the same way in every command.
device_option = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                             help="auto: CUDA when present, else the CPU.")
def _storage_options(ctx, param, values):
    from mpt_data.remote import parse_storage_options

    try:
        return parse_storage_options(values)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


# Where the store named by --shards lies and how it is read: fsspec options for a URL, and a local chunk cache.
store_options = _stack([
    click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", callback=_storage_options,
                 help="fsspec option for a --shards URL (s3://bucket/store), repeatable: endpoint_url=..., key=..., "
                      "secret=..., client_kwargs={...} (JSON). Without them AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                      "AWS_ENDPOINT_URL apply. Never written to logs, checkpoints or the run's config."),
    click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                 help="Local read-through cache of the store's chunks (each checked against its checksum)."),
])
runtime_options = _stack([
    device_option,
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="auto: bf16 on CUDA, fp32 on the CPU."),
])

# The training loop's options map onto TrainConfig fields; left out, a field keeps the value of
# the command's preset (TrainConfig.tiny / .paper / .finetune / .pose_network).
_LOOP_FIELDS = ("steps", "batch_size", "lr", "warmup_frac", "grad_clip", "seed", "log_every", "checkpoint_every",
                "val_every", "val_batches", "device", "precision")
loop_options = _stack([
    click.option("--steps", type=int, default=None, help="Optimiser steps (default: the preset's)."),
    click.option("--batch-size", type=int, default=None, help="Samples per rank and step (default: the preset's, 32)."),
    click.option("--lr", type=float, default=None,
                 help="Peak Adam learning rate (default: the preset's; tiny 2e-3, paper 2e-4, finetune 1e-4, "
                      "train-pose 1e-3)."),
    click.option("--warmup-frac", type=float, default=None, help="Share of the steps warming up (default 0.1)."),
    click.option("--grad-clip", type=float, default=None, help="Max gradient norm; 0 = off (default 1.0)."),
    click.option("--seed", type=int, default=None, help="Seed of weights, data order and draws (default 0)."),
    click.option("--log-every", type=int, default=None, help="Steps between metrics records (default: the preset's)."),
    click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints (default 500)."),
    click.option("--val-every", type=int, default=None, help="Validate every N steps, 0: at the end "
                 "(default: the preset's)."),
    click.option("--val-batches", type=int, default=None, help="Val batches, 0: the whole split (default 0)."),
    click.option("--workers", type=int, default=2, show_default=True, help="Loader worker processes per rank."),
    runtime_options,
    click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out."),
    click.option("--overwrite", is_flag=True, help="Delete the checkpoints and metrics of an earlier run in --out first."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (faster steps on GPUs)."),
])


epochs_option = click.option(
    "--epochs", type=float, default=None,
    help="Train for this many epochs instead of --steps: passes over the store's train split (pretrain) or over "
         "the mixture's images, after --fraction (finetune, train-pose).")


def _steps_for_epochs(cfg, epochs: float | None, samples_per_epoch: int, world: int, what: str):
    """``cfg`` with the steps that make ``epochs`` passes over ``samples_per_epoch`` samples (all ``world``
    ranks together; each step takes batch_size per rank), or ``cfg`` itself when no --epochs was given."""
    import dataclasses

    if epochs is None:
        return cfg
    if samples_per_epoch < cfg.batch_size * world:
        raise click.UsageError(f"{what}: {samples_per_epoch} samples, fewer than one batch of {cfg.batch_size} "
                               f"on each of {world} rank(s)")
    return dataclasses.replace(cfg, steps=max(1, round(epochs * samples_per_epoch / (cfg.batch_size * world))))


def _image_rows(task) -> int:
    """Rows of the image mixture a task trains on (after --fraction): an image epoch."""
    return sum(rows for dataset in task.train_batches.stream.datasets for _, _, rows in dataset.units)


def _train_config(preset, out: str, options: dict):
    """``preset(out=out, ...)`` with the loop options that were given (see loop_options)."""
    given = {k: options[k] for k in _LOOP_FIELDS if options[k] is not None}
    if options["no_progress"]:
        given["progress"] = False
    if options["compile_"]:
        given["compile"] = True
    return preset(out=out, **given)


def _given(**fields):
    """The fields whose option was given (not None): overrides for a preset constructor."""
    return {k: v for k, v in fields.items() if v is not None}


@main.command()
@click.option("--shards", required=True, help="Store path or fsspec URL (a frozen MPT store).")
@store_options
@click.option("--out", default="runs/pretrain", show_default=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl.")
@click.option("--preset", type=click.Choice(["tiny", "paper", "tiny-hand", "hand"]), default="tiny", show_default=True,
              help="paper (3x4 layers, hidden 1024/256/64, patch 8, MHM 0.3, lr 2e-4) or tiny (same structure, "
                   "small; patch 16, MHM 0.1, lr 2e-3); hand and tiny-hand: the same for a hand store (21 hand21 "
                   "joints and heatmaps, MANO mesh).")
@epochs_option
@loop_options
@click.option("--patch", type=int, default=None, help="Heatmap patch side in px (paper 8, tiny 16).")
@click.option("--mask-ratio", type=float, default=None,
              help="Masked Heatmap Modeling: probability that a joint is removed (paper 0.3, tiny 0.1).")
@click.option("--no-mhm", is_flag=True, help="Turn MHM, noise and jitter off (Table 3c ablation).")
@click.option("--coords", is_flag=True, help="Feed 2D joint coordinates instead of heatmaps (Table 3a).")
@click.option("--mvm-ratio", type=float, default=None, help="Masked Vertex Modeling ratio (query tokens).")
@click.option("--joint-set", default=None, help="3D joint set the model predicts (default: coco17; hand presets hand21).")
@click.option("--views", "camera_mode", type=click.Choice(["rig", "random"]), default="rig", show_default=True,
              help="rig: the store's stored views; random: one random virtual camera per sample, projected on the "
                   "device (distribution: mpt_train.views, README 'Random cameras and held-out rigs').")
@click.option("--camera-config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="YAML file of the random-camera distribution's fields (e.g. distance_m: [3, 8]); with "
                   "--views random.")
@click.option("--store-cameras", default=None,
              help="Train on these store cameras only, comma-separated indices (e.g. 0,2,4,6: the 4 Human3.6M "
                   "cameras of an 8-camera store).")
@click.option("--force", is_flag=True, help="Resume even if the store fingerprint differs.")
@click.option("--allow-unfrozen", is_flag=True, help="Accept a store that is not frozen.")
def pretrain(shards, storage_options, cache_dir, out, preset, epochs, patch, mask_ratio, no_mhm, coords, mvm_ratio,
             joint_set, camera_mode, camera_config, store_cameras, force, allow_unfrozen, **loop):
    """Pre-train the mesh regression transformer on MoCap heatmaps streamed from a store.

    \b
    One process:   mpt-train pretrain --shards ./store --preset tiny --steps 2000 --out runs/tiny
    Many GPUs:     torchrun --nproc-per-node 8 -m mpt_train.cli pretrain --shards ./store --preset paper ...
    """
    import dataclasses

    from .data import LoaderConfig
    from .inputs import InputConfig
    from .losses import LossConfig
    from .model import ModelConfig
    from .pretrain import build_pretrain_task
    from .trainer import TrainConfig

    if (loop["steps"] is None) == (epochs is None):
        raise click.UsageError("give exactly one of --steps and --epochs")
    if preset in ("tiny", "tiny-hand"):
        model_preset = ModelConfig.tiny if preset == "tiny" else ModelConfig.tiny_hand
        inputs_preset, train_preset = InputConfig.tiny, TrainConfig.tiny
    else:
        model_preset = ModelConfig.paper if preset == "paper" else ModelConfig.hand
        inputs_preset, train_preset = InputConfig.paper, TrainConfig.paper
    model_cfg = model_preset(**_given(joint_set=joint_set, mvm_ratio=mvm_ratio))
    inputs_cfg = inputs_preset(**_given(patch=patch, mask_ratio=mask_ratio, use_mhm=False if no_mhm else None,
                                        use_heatmaps=False if coords else None))
    cfg = _train_config(train_preset, out, loop | {"steps": loop["steps"] or 1})
    from .views import CameraDistribution

    if camera_config and camera_mode != "random":
        raise click.UsageError("--camera-config needs --views random")
    cameras = None
    if camera_mode == "random":
        cameras = CameraDistribution.load(camera_config) if camera_config else CameraDistribution.photographs()
    subset = None
    if store_cameras:
        try:
            subset = tuple(int(x) for x in store_cameras.split(","))
        except ValueError as exc:
            raise click.UsageError(f"--store-cameras {store_cameras!r}: expected comma-separated integers") from exc
    loader_cfg = LoaderConfig(shards=shards, num_workers=loop["workers"], allow_unfrozen=allow_unfrozen,
                              storage_options=storage_options, cache_dir=cache_dir, cameras=subset)
    task = build_pretrain_task(cfg, model_cfg, inputs_cfg, LossConfig.for_joint_set(model_cfg.joint_set), loader_cfg,
                              cameras=cameras)
    if epochs is not None:
        per_epoch = task.train_batches.num_batches(0)
        if per_epoch == 0:
            raise click.UsageError(f"{shards}: the train split has fewer samples than one batch per rank")
        cfg = dataclasses.replace(cfg, steps=max(1, int(round(epochs * per_epoch))))
    main_rank = task.runtime.is_main  # under torchrun only rank 0 prints
    if main_rank:
        click.echo(f"{task.train_batches.reader.describe()}\npre-training {preset}: {cfg.steps} steps of "
                   f"{cfg.batch_size} per rank -> {out}", err=True)
    result = _run_training(cfg, task, resume=loop["resume"], force=force, overwrite=loop["overwrite"])
    if result and main_rank:
        click.echo(" ".join(f"{k}={v:.1f}" for k, v in result.items()))


def _figures_table(rows: dict[str, dict[str, float]]) -> str:
    """Rows of figures (mm) as a text table whose columns line up whatever the names' lengths."""
    names = sorted({k for r in rows.values() for k in r if k != "samples"})
    cells = [[""] + names] + [[row] + [f"{r.get(n, float('nan')):.1f}" for n in names] for row, r in rows.items()]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


@main.command()
@click.option("--checkpoint", required=True, help="Checkpoint folder, run folder, or RUN/latest.")
@click.option("--shards", required=True, help="Store path or fsspec URL.")
@store_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True,
              help="Store split to score.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Samples per forward pass.")
@click.option("--mask-ratio", type=float, default=0.3, show_default=True,
              help="Ratio of joints removed for the missing-joints evaluation.")
@click.option("--max-batches", type=int, default=0, show_default=True, help="0: the whole split.")
@click.option("--no-baseline", is_flag=True, help="Skip the mean-pose baseline.")
@device_option
@click.option("--json-out", "--out", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures to this JSON file.")
@click.option("--rig", default=None,
              help="Score the split's meshes seen by every camera of this rig instead of the stored views: a rig "
                   "YAML file or a packaged rig name (h36m-s1, elevated-ring, close-wide; mpt_data.rigs), "
                   "projected on the device; figures per camera and overall.")
@click.option("--picture", default=None, type=click.Path(dir_okay=False),
              help="Also write a PNG file of varied samples: input heatmaps, predicted and true meshes, PA-MPJPE.")
@click.option("--picture-samples", type=click.IntRange(1, 64), default=6, show_default=True,
              help="Samples (columns) in the --picture, spread over the split's sequences and cameras.")
@click.option("--picture-seed", type=int, default=0, show_default=True, help="Seed of the --picture's sample draw.")
@click.option("--allow-unfrozen", is_flag=True, help="Accept a store that is not frozen.")
@click.option("--force", is_flag=True, help="Evaluate even if the store fingerprint differs from training.")
def evaluate(checkpoint, shards, storage_options, cache_dir, split, batch_size, mask_ratio, max_batches, no_baseline,
             device, json_out, rig,
             picture, picture_samples, picture_seed, allow_unfrozen, force):
    """MPJPE, PA-MPJPE and MPVE (mm) on a store split, with and without missing joints, vs a mean pose.

    With --rig: the split's meshes projected through every camera of that rig, per camera and overall."""
    from .evaluate import evaluate_checkpoint

    if rig:
        from .evaluate import evaluate_rig

        res = evaluate_rig(checkpoint, shards, rig, split, batch_size=batch_size, max_batches=max_batches,
                           device=device, allow_unfrozen=allow_unfrozen, force=force,
                           storage_options=storage_options, cache_dir=cache_dir)
        click.echo(_figures_table(res))
        if json_out:
            from mpt_data.fileio import atomic_write_json

            atomic_write_json(json_out, res, indent=2)
        return

    res = evaluate_checkpoint(checkpoint, shards, split, batch_size=batch_size, mask_ratio=mask_ratio,
                              max_batches=max_batches, baseline=not no_baseline, device=device,
                              allow_unfrozen=allow_unfrozen, force=force, picture=picture,
                              picture_samples=picture_samples, picture_seed=picture_seed,
                              storage_options=storage_options, cache_dir=cache_dir)
    click.echo(_figures_table(res))
    if json_out:
        from mpt_data.fileio import atomic_write_json

        atomic_write_json(json_out, res, indent=2)


@main.command()
@click.option("--shards", default=None, help="A store for the loader benchmark (optional): a folder, or a URL, "
              "which is then also timed through --cache-dir (or a temporary cache) and from a local copy.")
@store_options
@click.option("--batch-size", type=int, default=None, help="Paper-step batch (default: 64 on CUDA, 2 on CPU).")
@click.option("--steps", type=int, default=None, help="Timed paper steps (default: 20 on CUDA, 2 on CPU).")
@device_option
@click.option("--compile", "compile_", is_flag=True, help="Time the step under torch.compile.")
def bench(shards, storage_options, cache_dir, batch_size, steps, device, compile_):
    """Heatmap render + MHM, loader samples/s, and a `paper` training step in samples/s and TFLOP/s.

    On a GPU the step runs in bf16 and is compared with the device's measured bf16 matmul rate
    (target >= 45 %); render + MHM is compared with the step (target <= 5 %).
    """
    from . import bench as b

    step = b.bench_paper_step(batch_size=batch_size, steps=steps, device=device, compile=compile_)
    render = b.bench_inputs(batch_size=step["batch_size"], device=device)
    click.echo(b.format_result(render))
    from mpt_data.remote import is_local

    if shards and not is_local(shards):
        for result in b.bench_remote_loader(shards, storage_options, cache_dir=cache_dir):
            click.echo(b.format_result(result))
    elif shards:
        click.echo(b.format_result(b.bench_loader(shards, num_workers=1)))
        click.echo(b.format_result(b.bench_chunk_checks(shards)))
    click.echo(f"paper step on {step['device']} {step['dtype']}: {step['samples_per_s']:,.1f} samples/s, "
               f"{step['ms_per_step']:.1f} ms per step of {step['batch_size']}, "
               f"{step['gflop_per_sample']:.0f} GFLOP per sample, {step['tflop_per_s']:.2f} TFLOP/s achieved "
               f"({step['parameters'] / 1e6:.1f} M parameters)")
    click.echo(f"render + MHM = {100 * render['ms_per_batch'] / step['ms_per_step']:.1f} % of a paper step "
               f"(target <= 5 %)")
    proj = b.bench_projection(batch_size=step["batch_size"], device=device)
    click.echo(b.format_result(proj))
    click.echo(f"on-device projection (--views random) = {100 * proj['ms_per_batch'] / step['ms_per_step']:.1f} % "
               f"of a paper step (target <= 5 %)")
    if step["device"].startswith("cuda"):
        mm = b.bench_matmul(device)
        click.echo(f"device bf16 matmul: {mm['tflop_per_s']:.1f} TFLOP/s; paper step at "
                   f"{100 * step['tflop_per_s'] / mm['tflop_per_s']:.1f} % of it (target >= 45 %)")


backbone_options = _stack([
    click.option("--backbone", type=click.Choice(["pose_resnet", "pose_hrnet", "pose_higher_hrnet", "tiny"]),
                 default="pose_resnet", show_default=True,
                 help="SimpleBaseline ResNet, HRNet, HigherHRNet, or the small CPU demo ResNet-18."),
    click.option("--depth", default=50, show_default=True, help="ResNet depth (pose_resnet)."),
    click.option("--width", default=0, help="HRNet width 32/48 (default 32), or ResNet base width (default 64)."),
    click.option("--backbone-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="A public COCO keypoint .pth for the backbone; loaded strictly."),
])


feed_option = click.option(
    "--feed", type=click.Choice(["maps", "keypoints"]), default="maps", show_default=True,
    help="How the 2D network's output enters the transformer: its heatmaps cut into patches (the paper), or "
         "each map's refined peak rendered as pre-training's Gaussian (see mpt_train.loading.MapFeed).")


def _backbone_config(backbone, depth, width, checkpoint, frozen=False):
    import dataclasses

    from .backbones import TINY_BACKBONE, BackboneConfig

    if backbone == "tiny":
        base = TINY_BACKBONE
    elif backbone == "pose_resnet":
        base = BackboneConfig(kind="pose_resnet", depth=depth, width=width or 64)
    else:
        base = BackboneConfig(kind=backbone, width=width or 32)
    return dataclasses.replace(base, checkpoint=checkpoint, frozen=frozen)


@main.command()
@click.option("--init", required=True, help="Pre-trained (or fine-tuned) checkpoint: a step-N folder, a run folder or RUN/latest.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Mixture YAML.")
@click.option("--val", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Shard folder(s) for validation (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, config.json.")
@backbone_options
@click.option("--freeze-backbone", is_flag=True, help="Keep the 2D network fixed (the paper's Table 4).")
@click.option("--scratch-store", default=None, help="Re-initialise the transformer on this store's topology "
              "(the from-scratch baseline).")
@click.option("--fraction", default=1.0, show_default=True, help="Share of each dataset's data to train on.")
@click.option("--no-augment", is_flag=True, help="No image augmentation (flip, scale, rotation, colour).")
@feed_option
@click.option("--backbone-lr-scale", default=1.0, show_default=True,
              help="The 2D network's learning rate as a multiple of --lr (the transformer's).")
@epochs_option
@loop_options
def finetune(init, data, val, out, backbone, depth, width, backbone_checkpoint, freeze_backbone, scratch_store,
             fraction, no_augment, feed, backbone_lr_scale, epochs, **loop):
    """Fine-tune backbone + pre-trained transformer end to end on an image mixture (same loop as pretrain)."""
    from .finetune import FinetuneConfig, build_finetune_task
    from .loading import MapFeed
    from .trainer import TrainConfig

    if loop["steps"] is not None and epochs is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    tc = _train_config(TrainConfig.finetune, out, loop)
    ft = FinetuneConfig(init=init, data=data, val=tuple(val),
                        backbone=_backbone_config(backbone, depth, width, backbone_checkpoint),
                        freeze_backbone=freeze_backbone, scratch_store=scratch_store, workers=loop["workers"],
                        augment=not no_augment, fraction=fraction, feed=MapFeed(mode=feed),
                        backbone_lr_scale=backbone_lr_scale)
    task = build_finetune_task(tc, ft)  # loss weights for the pre-trained model's joint set
    tc = _steps_for_epochs(tc, epochs, _image_rows(task), task.runtime.world_size, data)
    res = _run_training(tc, task, resume=loop["resume"], overwrite=loop["overwrite"])
    if task.runtime.is_main:  # under torchrun only rank 0 prints
        click.echo(" ".join(f"{k} {v:.1f}" for k, v in res.items()) if res else
                   f"fine-tuned -> {out} (no --val given: no validation figures)")


@main.command("train-pose")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Mixture YAML.")
@click.option("--val", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Shard folder(s) to score the trained network on (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, pose_network.pth, pose_eval.json.")
@backbone_options
@click.option("--sigma", default=3.0, show_default=True, help="Target Gaussian width, px at 224 (pre-training's).")
@click.option("--no-augment", is_flag=True, help="No image augmentation (flip, scale, rotation, colour).")
@epochs_option
@loop_options
def train_pose(data, val, out, backbone, depth, width, backbone_checkpoint, sigma, no_augment, epochs, **loop):
    """Train a 2D pose backbone on image shards with a heatmap MSE loss (same loop as pretrain).

    Writes OUT/pose_network.pth (public key names) for `finetune --backbone-checkpoint`. Use it
    where no public COCO checkpoint fits, e.g. the CPU demo's `--backbone tiny`.
    """
    from .images import ImageEvalBatches
    from .posenet import PoseNetConfig, build_posenet_task, evaluate_pose_network, export_pose_network
    from .trainer import TrainConfig

    if loop["steps"] is not None and epochs is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    tc = _train_config(TrainConfig.pose_network, out, loop)
    import dataclasses

    from mpt_data.conventions import JOINT_SETS

    from .images import open_dataset, read_mixture

    first = read_mixture(data).datasets[0]  # the network makes one map per joint the images carry (21 for hands)
    maps = len(JOINT_SETS[open_dataset(first.shards, first.name).joint_set])
    pc = PoseNetConfig(data=data, val=tuple(val), sigma=sigma, workers=loop["workers"], augment=not no_augment,
                       backbone=dataclasses.replace(_backbone_config(backbone, depth, width, backbone_checkpoint),
                                                    num_joints=maps))
    task = build_posenet_task(tc, pc)
    tc = _steps_for_epochs(tc, epochs, _image_rows(task), task.runtime.world_size, data)
    _run_training(tc, task, resume=loop["resume"], overwrite=loop["overwrite"])
    if not task.runtime.is_main:  # under torchrun rank 0 exports, scores and prints
        return
    path = export_pose_network(task.model, out)
    click.echo(f"pose network: {path}")
    if val:
        res = evaluate_pose_network(task.model, ImageEvalBatches(list(val), tc.batch_size, 0), task.runtime.device)
        from mpt_data.fileio import atomic_write_json

        atomic_write_json(f"{out}/pose_eval.json", res, indent=2)
        click.echo("val 2D: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))


@main.command("compare-runs")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Markdown file to write the table to; FILE.json beside it.")
def compare_runs_cmd(runs, out):
    """Tabulate the final validation metrics (mm) of training runs given as NAME=RUN_DIR."""
    from pathlib import Path

    from mpt_data.fileio import atomic_write_json, atomic_write_text

    from .report import compare_runs

    named = {}
    for item in runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r}: expected NAME=RUN_DIR")
        named[name] = path
    res, table = compare_runs(named)
    atomic_write_text(out, table)
    atomic_write_json(Path(out).with_suffix(".json"), res, indent=2)
    click.echo(table)


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="PNG file to write (a file, not a folder).")
def plot(runs, out):
    """Training and validation curves of run folders given as RUN or NAME=RUN (overlaid, one legend): the
    loss and its terms (log scale), and validation PA-MPJPE, MPJPE, MPVE (mm), against samples trained on."""
    from .plot import PlotError, plot_runs, run_labels

    try:
        plot_runs(run_labels(runs), out)
    except PlotError as e:
        raise click.ClickException(str(e)) from None
    click.echo(out)


@main.command("evaluate-images")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True,
              help="[NAME=]CHECKPOINT: a fine-tuned model to score (a step-N folder, a run folder or RUN/latest); "
                   "repeatable, one table row each. With --no-finetune: a pre-trained transformer.")
@click.option("--image-shards", "folders", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Image shard folder(s) of the benchmark (e.g. h36m_valid_protocol2, 3dpw_test), as written by "
                   "`mpt-data images` (repeatable).")
@click.option("--protocol", type=click.Choice(["h36m-p2", "3dpw", "freihand", "train-metrics"]), default="h36m-p2",
              show_default=True, help="Human3.6M protocol 2, 3DPW, FreiHAND (PA-MPJPE, PA-MPVPE, F@5/15 mm; hand "
              "models), or the training loop's MPJPE / PA-MPJPE / MPVE.")
@click.option("--no-finetune", is_flag=True, help="CHECKPOINT is a pre-trained transformer: put the frozen "
              "off-the-shelf backbone in front of it (test without fine-tuning).")
@backbone_options
@feed_option
@click.option("--pretrained", default=None, help="Pre-trained checkpoint for the no-fine-tune and oracle rows "
              "(default: the one the first fine-tuned CHECKPOINT started from).")
@click.option("--train-data", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Mixture YAML whose images give the mean-pose row (default: the fine-tuning run's).")
@click.option("--no-baselines", is_flag=True, help="Score only the given checkpoints (no mean-pose, no-fine-tune "
              "or oracle rows).")
@click.option("--h36m-regressor", default=None, type=click.Path(exists=True, dir_okay=False),
              help="J_regressor_h36m.npy (17, V) when the model carries none.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Also write the table to this markdown FILE, and its figures to FILE with a .json suffix.")
@click.option("--picture", default=None, type=click.Path(dir_okay=False),
              help="PNG FILE: held-out images of the first shard folder with each row's 2D input joints and mesh.")
@click.option("--picture-count", default=6, show_default=True, help="Images in --picture.")
@click.option("--batch-size", default=32, show_default=True, help="Images per forward pass.")
@click.option("--max-batches", default=0, show_default=True, help="Score only this many batches per row (0: all).")
@device_option
def evaluate_images(checkpoints, folders, protocol, no_finetune, backbone, depth, width, backbone_checkpoint, feed,
                    pretrained, train_data, no_baselines, h36m_regressor, out, picture, picture_count, batch_size,
                    max_batches, device):
    """Score models on image shards, with the baselines they must beat: Human3.6M protocol 2 (MPJPE,
    PA-MPJPE on 14 joints), 3DPW (MPVE, MPJPE, PA-MPJPE), FreiHAND (PA-MPJPE, PA-MPVPE, F@5 mm, F@15 mm)
    or the training metrics, in mm.

    \b
    Rows besides the given models (see mpt_train/baselines.py):
      mean pose     one constant pose, the Procrustes mean of the training images' 3D labels
      no fine-tune  the pre-trained transformer behind the unchanged 2D network
      oracle        the pre-trained transformer fed heatmaps of the ground-truth 2D joints
    Exact rules of the protocols: mpt_train/protocols.py.
    """
    import dataclasses
    from pathlib import Path

    import numpy as np
    import torch

    from mpt_data.fileio import atomic_write_json, atomic_write_text

    from .baselines import BaselineSources, Row, baseline_rows, models_under_test, results_table, score_rows
    from .images import image_prepare
    from .loading import MapFeed, no_finetune_model
    from .runtime import choose_device

    dev = choose_device(device)
    named = {}
    for item in checkpoints:
        name, sep, path = item.partition("=")
        named[name if sep else ("model" if len(checkpoints) == 1 else item)] = path if sep else item
    if no_finetune:
        from .finetune import fit_backbone
        from .loading import load_checkpoint_model

        bcfg = _backbone_config(backbone, depth, width, backbone_checkpoint, True)
        models = {name: no_finetune_model(path, fit_backbone(bcfg, load_checkpoint_model(path).cfg), MapFeed(mode=feed))
                  for name, path in named.items()}
        sources = BaselineSources(pretrained=next(iter(named.values())))  # its oracle row; it is its own no-fine-tune
    else:
        models, sources = models_under_test(named)
    sources = dataclasses.replace(sources, **{k: v for k, v in (("pretrained", pretrained), ("train_data", train_data))
                                              if v is not None})
    like = next(iter(models.values()))
    rows = {} if no_baselines else baseline_rows(sources, like, dev, batch_size=batch_size)
    rows.update({name: Row(m.to(dev), image_prepare(dev)) for name, m in models.items()})
    reg = torch.from_numpy(np.load(h36m_regressor)).float() if h36m_regressor else None
    results = score_rows(rows, list(folders), protocol, dev, h36m_regressor=reg, batch_size=batch_size,
                         max_batches=max_batches, progress=lambda name: click.echo(f"scoring {name} ...", err=True))
    table = results_table(results)
    click.echo(f"{protocol} on {', '.join(folders)}:")
    click.echo(table, nl=False)
    if out:
        atomic_write_text(out, f"{protocol} on {', '.join(folders)}, mm\n\n{table}")
        atomic_write_json(Path(out).with_suffix(".json"), results, indent=2)
    if picture:
        from .comparison import write_comparison_grid

        from .evaluate import MeanPoseModel

        shown = {name: row for name, row in rows.items() if not isinstance(row.model, MeanPoseModel)}  # no 2D input
        click.echo(f"picture: {write_comparison_grid(shown, folders[0], picture, picture_count)}")


@main.command()
@click.option("--checkpoint", required=True, help="A fine-tuned checkpoint: a step-N folder, a run folder or RUN/latest.")
@click.option("--image", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Picture of one person (any format OpenCV reads: JPEG, PNG, ...).")
@click.option("--bbox", default=None, help="Person box x,y,w,h in pixels; default: the whole image is the crop.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for mesh.obj, overlay.png and prediction.json.")
@device_option
def predict(checkpoint, image, bbox, out, device):
    """Reconstruct the mesh of the person in IMAGE: writes mesh.obj, overlay.png, prediction.json."""
    from pathlib import Path

    from .predict import PredictConfig, run

    box = None
    if bbox:
        try:
            box = tuple(float(v) for v in bbox.split(","))
        except ValueError:
            raise click.BadParameter(f"{bbox!r}: expected four numbers x,y,w,h") from None
        if len(box) != 4:
            raise click.BadParameter(f"{bbox!r}: expected four numbers x,y,w,h")
    info = run(PredictConfig(checkpoint, image, out, box, device))
    folder = Path(out)
    click.echo(f"{folder / 'mesh.obj'} ({info['num_vertices']} vertices), {folder / 'overlay.png'}")


if __name__ == "__main__":
    main()
