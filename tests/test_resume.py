"""Exact resume of a real pre-training run (tiny preset, builder-made store, CPU), damaged checkpoints,
a forced resume on another store, and one owner per run folder.

Every run logs every step (log_every 1); a resumed run's metrics.jsonl must equal the
uninterrupted run's record for record (JSON floats round-trip exactly, so equal means
bit-identical losses). Runs: 20 steps of 8 pairs on the reference store's 78 train meshes seen by
camera 0 (9 batches per epoch: checkpoints every 6 steps fall mid-epoch, and a resume crosses epoch
boundaries), a validation pass at step 10, dropout and Masked Vertex Modeling on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mpt_data.fileio import FolderLock, LockError
from mpt_train import checkpoint as ckpt
from mpt_train.trainer import RunFolderError, train

STEPS = 20
TESTS = Path(__file__).parent


def build(store: str, out: Path, steps: int = STEPS):
    """(TrainConfig, Task) of the runs compared here."""
    from mpt_train.data import LoaderConfig
    from mpt_train.inputs import InputConfig
    from mpt_train.losses import LossConfig
    from mpt_train.model import ModelConfig
    from mpt_train.pretrain import build_pretrain_task
    from mpt_train.trainer import TrainConfig

    cfg = TrainConfig(out=str(out), steps=steps, batch_size=8, lr=2e-3, log_every=1, checkpoint_every=6,
                      val_every=10, val_batches=1, progress=False, device="cpu")
    # dropout 0.1: the global-RNG draws must line up too, not only the model's MVM generator.
    # One layer per block: the store's 1500-vertex body gives 94 vertex tokens, and the dozen runs here
    # need the steps to be cheap, not deep.
    task = build_pretrain_task(cfg, ModelConfig.tiny(dropout=0.1, mvm_ratio=0.3, layers_per_block=1),
                               InputConfig(patch=28), LossConfig(),
                               LoaderConfig(shards=store, num_workers=0, cameras=(0,)))
    return cfg, task


def crash_at(task, step: int, how=None):
    """Make the task's criterion stop the process (default: raise) while computing `step` (1-based)."""
    base, calls = task.criterion, {"n": 0}

    def criterion(pred, targets):
        calls["n"] += 1
        if calls["n"] == step:
            if how is not None:
                how()
            raise RuntimeError(f"simulated crash in step {step}")
        return base(pred, targets)

    task.criterion = criterion


def records(run: Path, kind: str = "train") -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in recs if r["kind"] == kind]


@pytest.fixture(scope="module")
def reference(reference_store, tmp_path_factory):
    """A store and the uninterrupted run on it: (store, run folder, final model state)."""
    root = tmp_path_factory.mktemp("resume")
    store = str(reference_store.path)
    cfg, task = build(store, root / "full")
    train(cfg, task)
    recs = records(root / "full")
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    return store, root / "full", {k: v.clone() for k, v in task.model.state_dict().items()}


@pytest.fixture(scope="module")
def crashed(reference, tmp_path_factory):
    """A run stopped inside step 17 (after the step-6 and step-12 checkpoints, in epoch 3)."""
    store, _, _ = reference
    run = tmp_path_factory.mktemp("crashed") / "run"
    cfg, task = build(store, run)
    crash_at(task, 17)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, task)
    assert [s for s, _ in ckpt.complete_checkpoints(run)] == [6, 12]
    return run


def assert_same_run(run: Path, reference_run: Path, model=None, state=None) -> None:
    got, want = records(run), records(reference_run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for g, w in zip(got, want):
        assert g == w, (g["step"], g["loss"], w["loss"])  # bit-identical losses, terms, lr, counters
    assert records(run, "val") == records(reference_run, "val")
    if model is not None:
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, tmp_path):
    """A process SIGKILLed in step 11 (checkpoint at 6, epochs of 8 batches) resumes to the same run."""
    store, full, state = reference
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        import torch
        torch.set_num_threads(1)
        from test_resume import build, crash_at
        from mpt_train.trainer import train
        cfg, task = build({store!r}, {str(run)!r})
        crash_at(task, 11, lambda: os.kill(os.getpid(), signal.SIGKILL))
        train(cfg, task)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [s for s, _ in ckpt.complete_checkpoints(run)] == [6]
    assert [r["step"] for r in records(run)] == list(range(1, 11))  # steps 7..10 are redone
    assert (run / ".lock").is_file()  # left by the killed process: stale, taken over below
    cfg, task = build(store, run)
    with pytest.warns(UserWarning, match="stale lock"):
        train(cfg, task, resume=True)
    assert_same_run(run, full, task.model, state)
    assert not (run / ".lock").exists()


def test_resume_at_a_checkpoint_step_is_bit_identical(reference, crashed, tmp_path):
    store, full, state = reference
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    cfg, task = build(store, run)
    train(cfg, task, resume=True)
    assert_same_run(run, full, task.model, state)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated state.pt", "missing rank-0.pt", "flipped byte in state.pt"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(reference, crashed, tmp_path, damage):
    store, full, state = reference
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    newest = ckpt.step_dir(run, 12)
    if damage == "truncated state.pt":
        _truncate(newest / "state.pt")
    elif damage == "missing rank-0.pt":
        (newest / "rank-0.pt").unlink()
    else:
        _flip_byte(newest / "state.pt")
    cfg, task = build(store, run)
    with pytest.warns(UserWarning, match=r"step-00000012.*using step-00000006"):
        train(cfg, task, resume=True)
    assert_same_run(run, full, task.model, state)
    assert [s for s, _ in ckpt.complete_checkpoints(run)] == [18, 20]  # the damaged one was pruned


def test_resume_without_a_usable_checkpoint_says_so(reference, crashed, tmp_path):
    store, _, _ = reference
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    _truncate(ckpt.step_dir(run, 12) / "state.pt")
    (ckpt.step_dir(run, 6) / "rank-0.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no usable checkpoint.*step-00000012.*state.pt.*"
                                                    r"step-00000006.*rank-0.pt.*--overwrite"):
        train(*build(store, run), resume=True)
    with pytest.raises(ckpt.CheckpointError, match="step-00000006"):  # named explicitly: no fallback
        ckpt.load_checkpoint(ckpt.step_dir(run, 6))


def test_resume_after_a_kill_during_the_first_checkpoint_write_starts_at_step_0(reference, crashed, tmp_path):
    """Only folders whose write was interrupted (no marker): the uninterrupted run is the one from step 0."""
    store, full, state = reference
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    for folder in ckpt.checkpoint_folders(run):
        (folder / ckpt.MARKER).unlink()
    cfg, task = build(store, run)
    train(cfg, task, resume=True)
    assert_same_run(run, full, task.model, state)


def test_forced_resume_on_another_store(reference, crashed, other_fingerprint_store, tmp_path):
    """The same content under another fingerprint: refused, then accepted with force (loader too)."""
    store, full, state = reference
    other = str(other_fingerprint_store.path)
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    with pytest.raises(ValueError, match="fingerprint"):
        train(*build(other, run), resume=True)
    cfg, task = build(other, run)
    train(cfg, task, resume=True, force=True)
    assert_same_run(run, full, task.model, state)


def test_second_trainer_on_a_run_folder_is_refused(reference, tmp_path):
    store, _, _ = reference
    run = tmp_path / "run"
    with FolderLock(run / ".lock", "run folder"):  # another trainer holds the folder
        with pytest.raises(LockError, match=f"in use by pid {os.getpid()}"):
            train(*build(store, run, steps=2))
        assert not (run / "metrics.jsonl").exists()
    train(*build(store, run, steps=2))  # released: the folder is free again
    assert len(records(run)) == 2


def test_fresh_run_refuses_a_folder_with_a_run_overwrite_and_resume(reference, tmp_path):
    from click.testing import CliRunner

    from mpt_train.cli import main

    store, _, _ = reference
    run = tmp_path / "run"
    args = ["pretrain", "--shards", store, "--out", str(run), "--batch-size", "8", "--workers", "0", "--patch", "28",
            "--checkpoint-every", "2", "--log-every", "1", "--no-progress", "--device", "cpu"]
    assert CliRunner().invoke(main, args + ["--steps", "3"]).exit_code == 0
    old = records(run)
    res = CliRunner().invoke(main, args + ["--steps", "4"])
    assert res.exit_code != 0 and "holds an earlier run" in res.output and "--overwrite" in res.output
    assert records(run) == old and ckpt.latest(run).name == "step-00000003"
    with pytest.raises(RunFolderError, match="give one"):
        train(*build(store, run), resume=True, overwrite=True)
    res = CliRunner().invoke(main, args + ["--steps", "4", "--resume"])  # continues the run: steps 4
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4] and records(run)[:3] == old
    res = CliRunner().invoke(main, args + ["--steps", "2", "--overwrite"])  # a new run from step 0
    assert res.exit_code == 0, res.output
    new = records(run)  # the same first steps as the first run (the lr schedule spans 2 steps, not 3)
    assert [r["step"] for r in new] == [1, 2] and [r["loss"] for r in new] == [r["loss"] for r in old[:2]]
    assert [s for s, _ in ckpt.complete_checkpoints(run)] == [2]
