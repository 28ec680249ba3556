"""The training loop: exact resume, non-finite steps skipped, schedule, metrics log."""

from __future__ import annotations

import json
import math

import pytest
import torch

from synthetic_batches import SyntheticSource, synthetic_prepare
from tiny_models import small_input_model, synthetic_topology_arrays
from mpt_train import checkpoint as ckpt
from mpt_train.losses import Criterion, LossConfig
from mpt_train.trainer import Task, TrainConfig, lr_factor, train


def _task(fail_after=None, nan_at=None):
    topo = synthetic_topology_arrays()
    model = small_input_model()
    crit = Criterion(LossConfig(), model)
    if nan_at is not None:  # poison the loss of one step
        calls = {"n": 0}
        base = crit

        def crit(pred, targets):
            loss, terms = base(pred, targets)
            calls["n"] += 1
            return (loss * float("nan") if calls["n"] == nan_at else loss), terms

    src = SyntheticSource(topo, batch=4, fail_after=fail_after)
    return Task(model=model, criterion=crit, train_batches=src, prepare=synthetic_prepare(),
                val_batches=lambda: SyntheticSource(topo, batch=4, seed=99, batches_per_epoch=2),
                config={"model": model.cfg.to_dict()}, store_fingerprint="fp-test")


def _cfg(out, **kw):
    base = dict(out=str(out), steps=8, batch_size=4, lr=1e-3, log_every=2, checkpoint_every=3,
                val_every=4, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_then_linear_decay():
    total = 100
    f = [lr_factor(s, total, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.5)
    assert f[99] == pytest.approx(1 / 90)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))


def test_resume_is_bit_exact(tmp_path):
    full = _task()
    train(_cfg(tmp_path / "full"), full)
    crashed = _task(fail_after=7)  # crash while in step 8, after the step-6 checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(tmp_path / "part"), crashed)
    assert ckpt.latest(tmp_path / "part").name == "step-00000006"
    resumed = _task()
    metrics = train(_cfg(tmp_path / "part"), resumed, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics["mpjpe"] > 0 and metrics["samples"] == 8
    lines = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "val" and "pa_mpjpe" in r for r in lines)
    assert any(r["kind"] == "train" and r["samples_per_s"] > 0 for r in lines)


def test_resume_refuses_other_store(tmp_path):
    train(_cfg(tmp_path / "r", steps=3), _task())
    other = _task()
    other.store_fingerprint = "another-store"
    with pytest.raises(ValueError, match="fingerprint"):
        train(_cfg(tmp_path / "r", steps=6), other, resume=True)


def test_nonfinite_loss_is_skipped(tmp_path):
    task = _task(nan_at=2)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    train(_cfg(tmp_path / "n", steps=3, val_every=0), task)
    recs = [json.loads(l) for l in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()]
    bad = [r for r in recs if r["kind"] == "nonfinite"]
    assert len(bad) == 1 and bad[0]["step"] == 1 and bad[0]["ranks"] == [0] and len(bad[0]["keys"][0]) == 4
    assert all(torch.isfinite(v).all() for v in task.model.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    last = [r for r in recs if r["kind"] == "train"][-1]
    assert last["skipped"] == 1 and math.isfinite(last["loss"])


def test_pretrain_and_evaluate_commands_on_a_store(reference_store, tmp_path):
    from click.testing import CliRunner

    from mpt_train.cli import main
    from mpt_train.store import open_store

    store = str(reference_store.path)
    run = tmp_path / "run"
    args = ["pretrain", "--shards", store, "--out", str(run), "--steps", "6", "--batch-size", "8", "--workers", "0",
            "--patch", "28", "--checkpoint-every", "3", "--no-progress", "--device", "cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert ckpt.latest(run).name == "step-00000006" and "pa_mpjpe=" in res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["num_input_tokens"] == 64 and cfg["store_fingerprint"] == open_store(store).fingerprint
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run / "latest"), "--shards", store,
                                    "--json-out", str(tmp_path / "e.json"), "--device", "cpu",
                                    "--picture", str(tmp_path / "cmp.png")])
    assert res.exit_code == 0, res.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert set(figures) == {"clean", "missing_joints", "mean_pose", "mean_camera_frame"}
    assert figures["clean"]["samples"] == 30 * 4  # the val meshes (HumanEva jog: 90 frames, 60 -> 20 fps), 4 cameras
    assert figures["clean"]["pa_mpjpe"] > 0 and figures["mean_pose"]["mpve"] > 0
    assert figures["missing_joints"]["mpjpe"] != figures["clean"]["mpjpe"]
    import cv2
    img = cv2.imread(str(tmp_path / "cmp.png"))
    # rows: input heatmaps, prediction, truth; a label column, then 6 samples (the val split has 120)
    assert img.shape == (3 * 224, 130 + 6 * 224, 3) and (img < 250).any()


def test_tiny_preset_built_in_python_equals_the_cli_run(tmp_path, reference_store):
    # Presets live in the config classes: the CLI only maps the flags it is given onto fields, so
    # the same choices made from Python resolve to the same run configuration.
    from click.testing import CliRunner

    from mpt_train.cli import main
    from mpt_train.data import LoaderConfig
    from mpt_train.inputs import InputConfig
    from mpt_train.model import ModelConfig
    from mpt_train.pretrain import build_pretrain_task

    store = str(reference_store.path)
    res = CliRunner().invoke(main, ["pretrain", "--shards", store, "--preset", "tiny", "--out", str(tmp_path / "cli"),
                                    "--steps", "2", "--workers", "0", "--patch", "28", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = TrainConfig.tiny(out=str(tmp_path / "py"), steps=2, progress=False)
    task = build_pretrain_task(cfg, ModelConfig.tiny(), InputConfig.tiny(patch=28), LossConfig(),
                               LoaderConfig(shards=store, num_workers=0))
    train(cfg, task)
    from_cli = json.loads((tmp_path / "cli" / "config.json").read_text())
    from_python = json.loads((tmp_path / "py" / "config.json").read_text())
    assert from_cli["train"].pop("out") != from_python["train"].pop("out")
    assert from_python == from_cli
    assert from_cli["train"]["lr"] == 2e-3 and from_cli["inputs"]["mask_ratio"] == 0.1
