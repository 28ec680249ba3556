"""The training loop, shared by every task; it reads top to bottom and imports none of them.

What differs between tasks (:mod:`mpt_train.pretrain`, :mod:`mpt_train.finetune`,
:mod:`mpt_train.posenet`) is bundled in a :class:`Task`: the model, the criterion, the
training batches (a resumable iterator), the `prepare` function that turns a batch into
model inputs and targets on the device (pre-training: heatmap synthesis with MHM, noise and
jitter; fine-tuning: normalised images for a backbone + transformer), the validation
batches, and the :class:`~mpt_train.runtime.Runtime` it was built for. Everything else is
here once: Adam with warm-up then linear decay, bf16 autocast
on CUDA (fp16 with a gradient scaler for GPUs without bf16, fp32 on CPU), DDP through
torchrun (NCCL on CUDA, gloo on CPU), gradient clipping, non-finite steps reported and
skipped on every rank, atomic checkpoints with exact resume, JSON-lines metrics (and
TensorBoard when installed), a progress bar, and periodic validation in mm.

Randomness and exact resume: nothing a step draws depends on what ran before it in the
process. Components with their own generators (the model's Masked Vertex Modeling: any
module with ``seed_rng`` / ``rng_state_dict`` / ``load_rng_state_dict``) are seeded from
(seed, rank) and their generator states travel in each rank's checkpoint file; the global
RNGs (python, numpy, torch CPU and CUDA), which dropout and any third-party draw use, are
re-seeded before every step from (seed, rank, step). A DataLoader starting, a validation
pass or a resume therefore cannot shift a single draw.

One owner per run folder: rank 0 holds ``RUN/.lock`` (:class:`mpt_data.fileio.FolderLock`)
for the whole run, and a fresh run refuses a folder that holds another run's checkpoints or
metrics unless told to continue it (``resume``) or to delete them first (``overwrite``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from mpt_data.fileio import FolderLock, atomic_write_json, atomic_write_text

from . import checkpoint as ckpt
from .data import derived_seed
from .evaluate import evaluate_model
from .order import resumed_batch_size
from .runtime import Runtime, autocast_context

TRAINER_STATE_VERSION = 1
RUN_LOCK = ".lock"
METRICS_FILE = "metrics.jsonl"


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked (the message names it and the option to give)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run bookkeeping. `steps` counts optimiser steps (skipped ones included)."""

    out: str = "runs/pretrain"
    steps: int = 1000
    batch_size: int = 32  # per rank
    lr: float = 2e-4
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    val_every: int = 500  # 0: only at the end
    val_batches: int = 0  # 0: the whole val split
    keep_checkpoints: int = 2
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the training forward (fuses norms and activations on GPUs)

    @staticmethod
    def paper(**overrides: Any) -> "TrainConfig":
        """Pre-training as the paper runs it: Adam at 2e-4, 32 per rank; a log line every 20
        steps, validation at the end only (pass ``val_every`` for more)."""
        return dataclasses.replace(TrainConfig(lr=2e-4, batch_size=32, log_every=20, val_every=0), **overrides)

    @staticmethod
    def tiny(**overrides: Any) -> "TrainConfig":
        """Pre-training of the tiny model: the paper's run with a 10x learning rate, which a
        model this small needs to converge within a CPU demo's few thousand steps."""
        return dataclasses.replace(TrainConfig.paper(lr=2e-3), **overrides)

    @staticmethod
    def finetune(**overrides: Any) -> "TrainConfig":
        """Fine-tuning backbone + transformer: Adam at 1e-4, 1000 steps, validation every 500."""
        return dataclasses.replace(TrainConfig(steps=1000, lr=1e-4, val_every=500), **overrides)

    @staticmethod
    def pose_network(**overrides: Any) -> "TrainConfig":
        """Training a 2D pose backbone on heatmaps: Adam at 1e-3, 1000 steps, no validation in
        the loop (the command scores the exported network afterwards)."""
        return dataclasses.replace(TrainConfig(steps=1000, lr=1e-3, val_every=0), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BatchSource(Protocol):
    """A resumable stream of batch dicts (the store loader, or the image-shard loader)."""

    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict, allow_other_store: bool = False) -> None:
        """Restore the position; ``allow_other_store`` (``--force``) continues on data whose fingerprint
        differs from the one the state was saved on."""


@dataclass
class Task:
    """What a training run trains, on what, and how batches become inputs and targets.

    prepare(batch, train) -> (inputs, targets): moves the batch to the device and synthesises
    the model input; `train` switches augmentation (MHM, noise, jitter) on. targets follow
    `mpt_train.losses`. val_batches() returns a fresh iterable over the validation split
    (this rank's share), or None to skip validation. config: the resolved configuration of
    every component, saved in each checkpoint. store_fingerprint: the data's identity, checked
    on resume. runtime: the device and process group `prepare` was built for (the loop runs
    there too); None lets the loop resolve one from the TrainConfig. elastic_resume: the training
    batches continue a checkpoint of another number of ranks (the store loader re-partitions the
    rest of the epoch, :mod:`mpt_train.order`); other tasks resume on the same number only.
    param_groups(lr) -> the optimiser's parameter groups, each with its own peak "lr" (the schedule
    scales them all alike); None: every trainable parameter at the run's lr.
    resume_must_match: keys of `config` whose saved value a resume must equal (e.g. "cameras").
    """

    model: torch.nn.Module
    criterion: Callable[[dict, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    train_batches: BatchSource
    prepare: Callable[[dict, bool], tuple[torch.Tensor, dict]]
    val_batches: Callable[[], Iterable[dict]] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    store_fingerprint: str | None = None
    runtime: Runtime | None = None
    elastic_resume: bool = False
    param_groups: Callable[[float], list[dict[str, Any]]] | None = None
    resume_must_match: tuple[str, ...] = ()


def lr_factor(step: int, total: int, warmup_frac: float) -> float:
    """Linear warm-up over the first ``warmup_frac`` of ``total`` steps, then linear decay to 0."""
    warm = max(1, int(math.ceil(warmup_frac * total)))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_STEP_STREAM, _COMPONENT_STREAM = 0x57E9, 0xC0DE


def seed_step(seed: int, rank: int, step: int) -> None:
    """Re-seed the global RNGs (python, numpy, torch CPU and CUDA) for training step ``step``.

    Dropout (inside scaled_dot_product_attention too) takes no generator argument; seeding the
    global RNGs from the step makes its draws a pure function of (seed, rank, step).
    """
    s = derived_seed(seed, rank, step, _STEP_STREAM)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_components(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The sub-modules (by name, "" = the model) that own a generator: seed_rng, rng_state_dict,
    load_rng_state_dict."""
    return {name: m for name, m in model.named_modules()
            if all(callable(getattr(m, a, None)) for a in ("seed_rng", "rng_state_dict", "load_rng_state_dict"))}


class MetricsLog:
    """JSON lines in RUN/metrics.jsonl (rank 0), mirrored to TensorBoard when it is installed."""

    def __init__(self, out: Path, enabled: bool, upto_step: int | None = None):
        """upto_step: a resumed run first drops the records the interrupted run wrote after its
        checkpoint (they are written again), so the file reads as one uninterrupted run."""
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / METRICS_FILE
        if upto_step is not None and self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= upto_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError:
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def batch_keys(batch: dict) -> list:
    """The sample keys of a batch (for error reports)."""
    key = batch.get("key")
    if key is None:
        return []
    return key.tolist() if torch.is_tensor(key) or isinstance(key, np.ndarray) else list(key)


def _finite_ranks(x: torch.Tensor, runtime: Runtime) -> list[bool]:
    """Whether ``x`` is finite on each rank (the same list on every rank)."""
    flag = torch.isfinite(x.detach()).all().to(torch.float32).reshape(1).cpu()
    if runtime.world_size == 1:
        return [bool(flag.item() > 0)]
    flags = [torch.zeros(1) for _ in range(runtime.world_size)]
    dist.all_gather(flags, flag)
    return [bool(f.item() > 0) for f in flags]


def say(line: str) -> None:
    """Print a line for the user on stderr through tqdm, above a live progress bar instead of inside it.
    Callers print on rank 0 only."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _report_nonfinite(what: str, step: int, ok: list[bool], batch: dict, runtime: Runtime, log: "MetricsLog") -> None:
    """Log which ranks saw a non-finite value and their batch keys (every rank takes part)."""
    keys = batch_keys(batch)
    if runtime.world_size > 1:
        gathered: list[Any] = [None] * runtime.world_size
        dist.all_gather_object(gathered, keys)
    else:
        gathered = [keys]
    bad = [r for r, good in enumerate(ok) if not good]
    log.write({"kind": "nonfinite", "step": step, "what": what, "ranks": bad,
               "keys": [gathered[r] for r in bad]})
    if runtime.is_main:
        say(f"step {step}: non-finite {what} on rank(s) {bad}; step skipped on all ranks; batch keys "
            f"{[gathered[r] for r in bad]}")


def _mean_across(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    if runtime.world_size == 1 or not values:
        return values
    names = sorted(values)
    t = torch.tensor([values[n] for n in names], dtype=torch.float64)
    dist.all_reduce(t)
    return {n: float(v) / runtime.world_size for n, v in zip(names, t)}


def _on_main(runtime: Runtime, fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0; if it raises, every rank raises (none is left waiting in a collective)."""
    err: BaseException | None = None
    if runtime.is_main:
        try:
            fn()
        except Exception as e:  # re-raised below on rank 0, reported to the other ranks first
            err = e
    if runtime.world_size > 1:
        box = [None if err is None else f"{type(err).__name__}: {err}"]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and err is None:
            raise RunFolderError(f"rank 0 stopped: {box[0]}")
    if err is not None:
        raise err


def holds_a_run(out: Path) -> list[str]:
    """Names of what an earlier run left in ``out``: checkpoint folders (complete or not), metrics."""
    found = [p.name for p in ckpt.checkpoint_folders(out)]
    if (out / METRICS_FILE).is_file():
        found.append(METRICS_FILE)
    return found


def claim_run_folder(out: Path, lock: FolderLock, *, resume: bool, overwrite: bool) -> None:
    """Take ``lock`` for the run, then check or clear ``out`` for a fresh run.

    A fresh run (neither ``resume`` nor ``overwrite``) refuses a folder holding an earlier run:
    it would prune that run's checkpoints as its own and a later resume would continue the
    wrong one. ``overwrite`` deletes the checkpoints, metrics and TensorBoard logs first.
    """
    lock.acquire()
    try:
        old = holds_a_run(out)
        if overwrite:
            for p in ckpt.checkpoint_folders(out):
                shutil.rmtree(p)
            (out / METRICS_FILE).unlink(missing_ok=True)
            if (out / "tensorboard").is_dir():
                shutil.rmtree(out / "tensorboard")
        elif old and not resume:
            raise RunFolderError(f"{out}: holds an earlier run ({', '.join(old[:4])}{' ...' if len(old) > 4 else ''}); "
                                 f"continue it with --resume or delete it with --overwrite")
    except BaseException:
        lock.release()
        raise


def train(cfg: TrainConfig, task: Task, *, resume: bool = False, force: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) training to ``cfg.steps``. Returns the final validation metrics (mm).

    Resume: continues from the newest usable checkpoint in ``cfg.out`` (a damaged newest one
    is skipped with a warning) with the same model, optimiser, schedule, scaler, counters,
    generator states and loader position, so the run is the one it would have been
    uninterrupted (bit-exact on CPU); a folder without any checkpoint starts afresh. A
    checkpoint made against another store fingerprint is refused unless ``force``. On another
    number of ranks (a task with ``elastic_resume``) the global batch is kept (per-rank batch =
    global / ranks, refused when it does not divide) and the epoch goes on with the pairs it has
    not seen, in another order than the uninterrupted run's.
    Rank 0 holds ``RUN/.lock`` throughout (LockError if another process holds it). A fresh
    run refuses a folder holding an earlier run unless ``overwrite`` (which deletes it first).
    """
    if resume and overwrite:
        raise RunFolderError(f"{cfg.out}: --resume continues the run there and --overwrite deletes it; give one")
    runtime = task.runtime or Runtime.start(cfg.device, cfg.precision)
    out = Path(cfg.out)
    lock = FolderLock(out / RUN_LOCK, f"run folder {out}")
    _on_main(runtime, lambda: claim_run_folder(out, lock, resume=resume, overwrite=overwrite))
    try:
        return _train_locked(cfg, task, runtime, resume=resume, force=force)
    finally:
        lock.release()


def _train_locked(cfg: TrainConfig, task: Task, runtime: Runtime, *, resume: bool, force: bool) -> dict[str, Any]:
    # --- devices, seeds
    device, precision = runtime.device, runtime.precision
    seed_everything(cfg.seed + runtime.rank)
    out = Path(cfg.out)

    # --- model, optimiser, schedule, scaler
    model = task.model.to(device)
    model.train()
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if runtime.world_size > 1 else model
    if cfg.compile:  # checkpoints and evaluation keep using the plain `model`
        net = torch.compile(net)
    groups = task.param_groups(cfg.lr) if task.param_groups is not None else None
    params = [p for g in groups for p in g["params"]] if groups else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(groups or params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_frac))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, samples, skipped = 0, 0, 0
    components = rng_components(model)
    for i, name in enumerate(sorted(components)):
        components[name].seed_rng(derived_seed(cfg.seed, runtime.rank, i, _COMPONENT_STREAM))

    # --- resume
    if resume and ckpt.checkpoint_folders(out) and not ckpt.complete_checkpoints(out):
        # Killed while writing its first checkpoint: the uninterrupted run is the one from step 0.
        if runtime.is_main:
            names = ", ".join(p.name for p in ckpt.checkpoint_folders(out))
            print(f"{out}: no complete checkpoint, only folders whose write was interrupted ({names}); "
                  "starting at step 0", file=sys.stderr)
            for p in ckpt.checkpoint_folders(out):
                shutil.rmtree(p)
        if runtime.world_size > 1:
            runtime.barrier()
    if resume and ckpt.complete_checkpoints(out):
        loaded = ckpt.load_checkpoint(out, rank=runtime.rank, map_location=device,
                                      expected_fingerprint=task.store_fingerprint, force=force)
        state, rank_state = loaded.state, loaded.rank_state
        loader_state = None if rank_state is None else rank_state["loader"]
        saved_world = int(state["world_size"])
        if saved_world != runtime.world_size:
            # Elastic resume: every rank continues from rank 0's loader position (the same on every
            # rank), the global batch kept; ranks the checkpoint did not have start their generators.
            if not task.elastic_resume:
                raise ckpt.CheckpointError(f"{loaded.folder}: checkpoint written by {saved_world} ranks, resuming with "
                                           f"{runtime.world_size}: this task's batches resume only on {saved_world}")
            saved_batch = int(json.loads(state["config"])["train"]["batch_size"])
            try:
                per_rank = resumed_batch_size(saved_world, saved_batch, runtime.world_size, cfg.batch_size)
            except ValueError as e:
                raise ckpt.CheckpointError(f"{loaded.folder}: {e}") from e
            cfg = dataclasses.replace(cfg, batch_size=per_rank)
            loader_state = ckpt.load_rank_state(loaded.folder, 0)["loader"]
            if runtime.is_main:
                say(f"{loaded.folder}: written by {saved_world} rank(s) x {saved_batch}, resuming on "
                    f"{runtime.world_size} x {per_rank} (the same global batch); the rest of the epoch is "
                    f"re-partitioned: the same pairs, in another order")
        saved_cfg = json.loads(state["config"])
        for key in task.resume_must_match:
            want = json.loads(json.dumps(task.config.get(key)))
            if saved_cfg.get(key) != want:
                raise ckpt.CheckpointError(f"{loaded.folder}: the run was trained with {key} {saved_cfg.get(key)!r}, "
                                           f"this resume asks for {want!r}; resume with the same setting")
        if state["trainer"]["version"] != TRAINER_STATE_VERSION:
            raise ValueError(f"{out}: trainer state version {state['trainer']['version']} != {TRAINER_STATE_VERSION}")
        _load_model(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, samples, skipped = (state["trainer"][k] for k in ("step", "samples", "skipped"))
        try:
            task.train_batches.load_state_dict(loader_state, allow_other_store=force)
        except ValueError as e:  # the position cannot continue on this layout: one line naming the folder
            raise ckpt.CheckpointError(f"{loaded.folder}: {e}") from e
        if rank_state is not None:
            ckpt.set_rng_state(rank_state["rng"])
        saved_components = None if rank_state is None else rank_state.get("components")
        if rank_state is None:  # a rank the checkpoint did not have: generators from its seed and the step
            for i, name in enumerate(sorted(components)):
                components[name].seed_rng(derived_seed(cfg.seed, runtime.rank, i, _COMPONENT_STREAM, step))
        elif saved_components is None:
            warnings.warn(f"{loaded.folder}: no component generator states (an older checkpoint); they restart "
                          f"from their seeds, so the resumed run is not bit-exact", stacklevel=2)
        else:
            if set(saved_components) != set(components):
                raise ckpt.CheckpointError(f"{loaded.folder}: generator states for {sorted(saved_components)}, this "
                                           f"model has {sorted(components)}; resume with the same model")
            for name, module in components.items():
                module.load_rng_state_dict(saved_components[name])
        if runtime.is_main:
            print(f"resumed from {loaded.folder} at step {step}", file=sys.stderr)
    elif resume and runtime.is_main:
        print(f"{out}: no checkpoint yet, starting at step 0", file=sys.stderr)

    log = MetricsLog(out, runtime.is_main, upto_step=step if resume else None)
    if runtime.is_main:
        atomic_write_json(out / "config.json", _resolved_config(cfg, task, precision, runtime), indent=2)
    bar = None
    if cfg.progress and runtime.is_main:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def save_checkpoint() -> None:
        state = {"model": _model_state(model), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                 "trainer": {"version": TRAINER_STATE_VERSION, "step": step, "samples": samples,
                             "skipped": skipped},
                 "config": json.dumps(_resolved_config(cfg, task, precision, runtime)),
                 "store_fingerprint": task.store_fingerprint}
        rank_state = {"rng": ckpt.rng_state(), "loader": task.train_batches.state_dict(),
                      "components": {name: m.rng_state_dict() for name, m in components.items()}}
        ckpt.save(out, step, state, rank_state, rank=runtime.rank, world_size=runtime.world_size,
                  barrier=runtime.barrier if runtime.world_size > 1 else None, keep=cfg.keep_checkpoints)

    def validate() -> dict[str, float]:
        if task.val_batches is None:
            return {}
        res = evaluate_model(model, task.val_batches(), lambda b: task.prepare(b, False), device=device,
                             precision=precision, max_batches=cfg.val_batches)
        log.write({"kind": "val", "step": step, **res})
        if runtime.is_main:
            say(f"step {step} val: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))
        return res

    # --- the loop
    batches = iter(task.train_batches)
    t_last, samples_last = time.perf_counter(), samples
    final_val: dict[str, float] = {}
    while step < cfg.steps:
        batch = next(batches, None)
        if batch is None:  # end of an epoch: the loader starts the next one
            batches = iter(task.train_batches)
            continue
        seed_step(cfg.seed, runtime.rank, step)
        inputs, targets = task.prepare(batch, True)
        with autocast_context(device, precision):
            pred = net(inputs)
        loss, terms = task.criterion(pred, targets)
        optimizer.zero_grad(set_to_none=True)
        applied = False
        loss_ok = _finite_ranks(loss, runtime)
        if not all(loss_ok):
            _report_nonfinite("loss", step, loss_ok, batch, runtime, log)
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            grad_ok = _finite_ranks(gnorm, runtime)
            if all(grad_ok):
                scaler.step(optimizer)
                applied = True
            else:
                _report_nonfinite("gradient", step, grad_ok, batch, runtime, log)
            scaler.update()
        skipped += 0 if applied else 1
        schedule.step()
        step += 1
        samples += int(inputs.shape[0]) * runtime.world_size

        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            rate = (samples - samples_last) / max(now - t_last, 1e-9)
            t_last, samples_last = now, samples
            record = _mean_across({k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())}, runtime)
            log.write({"kind": "train", "step": step, "lr": schedule.get_last_lr()[0], "samples": samples,
                       "samples_per_s": rate, "skipped": skipped, **record})
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{rate:.0f}")
        if bar is not None:
            bar.update(1)
        if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
            validate()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()

    final_val = validate()
    if bar is not None:
        bar.close()
    log.close()
    return final_val


def _model_state(model: torch.nn.Module) -> dict:
    return model.state_dict_versioned() if hasattr(model, "state_dict_versioned") else model.state_dict()


def _load_model(model: torch.nn.Module, blob: dict) -> None:
    if hasattr(model, "load_state_dict_versioned"):
        model.load_state_dict_versioned(blob)
    else:
        model.load_state_dict(blob)


def _resolved_config(cfg: TrainConfig, task: Task, precision: str, runtime: Runtime) -> dict[str, Any]:
    return {"train": cfg.to_dict(), "precision": precision, "world_size": runtime.world_size,
            "store_fingerprint": task.store_fingerprint, **task.config}
