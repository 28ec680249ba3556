"""Two-process DDP on the CPU (gloo): replicas stay identical, a non-finite loss on one rank is
skipped on both, both ranks' checkpoint files are written, and a task without elastic resume
refuses to continue on another number of ranks (pre-training's elastic resume: test_elastic_resume.py)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from synthetic_batches import SyntheticSource, synthetic_prepare
    from tiny_models import small_input_model, synthetic_topology_arrays
    from mpt_train.losses import Criterion
    from mpt_train.losses import LossConfig
    from mpt_train.runtime import cleanup_distributed
    from mpt_train.trainer import Task, TrainConfig, train

    topo = synthetic_topology_arrays()
    model = small_input_model(seed=0, mvm_ratio=0.3)  # MVM draws differ per rank: grads still agree
    base = Criterion(LossConfig(), model)
    calls = {"n": 0}

    def criterion(pred, targets):
        loss, terms = base(pred, targets)
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:  # only rank 1 sees a non-finite loss at step index 2
            loss = loss * float("inf")
        return loss, terms

    task = Task(model=model, criterion=criterion,
                train_batches=SyntheticSource(topo, batch=4, rank=rank),  # different data per rank
                prepare=synthetic_prepare(),
                val_batches=lambda: SyntheticSource(topo, batch=4, seed=5, rank=rank, batches_per_epoch=1),
                store_fingerprint="fp")
    cfg = TrainConfig(out=out, steps=5, batch_size=4, lr=1e-3, log_every=1, checkpoint_every=5, val_every=0,
                      progress=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = train(cfg, task)
    torch.save({"state": model.state_dict(), "init": init, "metrics": metrics}, f"{out}/replica-{rank}.pt")
    cleanup_distributed()


@pytest.mark.slow
def test_two_process_gloo_keeps_replicas_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "replica-0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "replica-1.pt", weights_only=True)
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert any(not torch.equal(r0["state"][k], r0["init"][k]) for k in r0["state"])
    assert r0["metrics"] == r1["metrics"] and r0["metrics"]["samples"] == 8  # val over both ranks' samples
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert train_recs[-1]["skipped"] == 1 and train_recs[-1]["samples"] == 5 * 4 * 2
    bad = [r for r in recs if r["kind"] == "nonfinite"]
    assert len(bad) == 1 and bad[0]["step"] == 2 and bad[0]["ranks"] == [1] and len(bad[0]["keys"][0]) == 4
    step_dir = tmp_path / "step-00000005"
    assert (step_dir / "rank-0.pt").is_file() and (step_dir / "rank-1.pt").is_file()
    # each rank saves its own MVM generator, seeded apart (the masks differ per rank)
    gens = [torch.load(step_dir / f"rank-{r}.pt", weights_only=True)["components"][""] for r in (0, 1)]
    assert gens[0]["seed"] != gens[1]["seed"] and not torch.equal(gens[0]["state"], gens[1]["state"])
    assert not (tmp_path / ".lock").exists()  # rank 0's run-folder lock is released at the end


@pytest.mark.slow
def test_a_task_without_elastic_resume_resumes_only_on_its_world_size(tmp_path):
    """Batches that cannot be re-partitioned (here the synthetic stream; fine-tuning's image stream
    too) refuse a checkpoint of 2 ranks on 1, in one line naming the checkpoint."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    from synthetic_batches import SyntheticSource, synthetic_prepare
    from tiny_models import small_input_model, synthetic_topology_arrays
    from mpt_train.checkpoint import CheckpointError
    from mpt_train.losses import Criterion, LossConfig
    from mpt_train.trainer import Task, TrainConfig, train

    model = small_input_model(seed=0)
    task = Task(model=model, criterion=Criterion(LossConfig(), model),
                train_batches=SyntheticSource(synthetic_topology_arrays(), batch=4), prepare=synthetic_prepare(),
                store_fingerprint="fp")
    assert not task.elastic_resume
    cfg = TrainConfig(out=str(tmp_path), steps=6, batch_size=4, progress=False, device="cpu")
    with pytest.raises(CheckpointError, match=r"step-00000005: checkpoint written by 2 ranks, resuming with 1: "
                                              r"this task's batches resume only on 2"):
        train(cfg, task, resume=True)
