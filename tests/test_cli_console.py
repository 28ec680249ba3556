"""A clean console: under torchrun only rank 0 prints, validation lines go above the live progress bar,
smplx's notice about 10 shape coefficients is not repeated, the build shows progress while it plans and its
local cluster closes without killing workers."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain_rank(rank: int, world: int, port: int, store: str, out: str, logs: str) -> None:
    """One torchrun-like rank running `mpt-train pretrain`, its stdout and stderr (file descriptors, so
    tqdm and click included) going to logs/rank-<rank>.txt."""
    log = os.open(f"{logs}/rank-{rank}.txt", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    os.environ.pop("MPT_DEBUG", None)
    from mpt_train.cli import main

    main(["pretrain", "--shards", store, "--out", out, "--steps", "2", "--batch-size", "4", "--workers", "0",
          "--patch", "28", "--val-every", "0", "--val-batches", "1", "--log-every", "1", "--device", "cpu"],
         standalone_mode=False)


def test_under_two_ranks_only_rank_0_prints_and_validation_goes_above_the_bar(reference_store, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    mp.spawn(_pretrain_rank, args=(2, _free_port(), str(reference_store.path), str(tmp_path / "run"), str(logs)),
             nprocs=2, join=True)
    rank0 = (logs / "rank-0.txt").read_text()
    rank1 = (logs / "rank-1.txt").read_text()
    assert "pre-training tiny: 2 steps of 4 per rank" in rank0 and "2/2" in rank0  # header and bar
    result = [line for line in rank0.splitlines() if line.startswith("mpjpe=")]
    assert len(result) == 1 and "pa_mpjpe=" in result[0]
    for text in ("pre-training", "val:", "mpjpe", "step/s", "%|"):
        assert text not in rank1, rank1
    # the validation line is written by tqdm above the bar: on a line of its own once the bar's \r-redraws
    # are taken away, never appended to the bar
    val = [line for line in rank0.split("\n") if "step 2 val:" in line]
    assert len(val) == 1 and re.split(r"\r", val[0])[-1].startswith("step 2 val: mpjpe "), repr(val)


def test_smplx_notice_about_ten_shape_coefficients_is_dropped_and_other_output_kept(build_inputs, capfd):
    import smplx

    from mpt_data.synth.picture import quiet_smplh

    model = quiet_smplh(smplx.SMPLH, str(build_inputs.body_dir / "smplh"), gender="female", use_pca=False,
                         flat_hand_mean=True, num_betas=10)
    assert model.num_betas == 10
    assert "shape coefficients" not in capfd.readouterr().out

    def noisy(*args, **kwargs):
        print("WARNING: You are using a SMPL+H model, with only 10 shape coefficients.")
        print("loaded 3 files")
        return "model"

    assert quiet_smplh(noisy) == "model"
    assert capfd.readouterr().out == "loaded 3 files\n"


def test_a_local_cluster_build_plans_with_progress_and_closes_its_workers_cleanly(build_inputs, tmp_path, capfd):
    from store_builds import small_config

    from mpt_data.build import build_store

    build_store(small_config(build_inputs, tmp_path / "store", workers=2, progress=True,
                             subsets_include=("HumanEva",)))
    err = capfd.readouterr().err
    assert re.search(r"plan: 100%\|[^\n]*\| (\d+)/\1 \[", err), err  # the plan's bar, files validated
    assert "still alive" not in err and "killing" not in err, err
