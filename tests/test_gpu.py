"""CUDA paths: bf16 training end to end, resume, and checkpoints that load on a CPU. Skipped without CUDA."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_bf16_forward_on_cuda_matches_fp32_on_cpu():
    from _helpers_c2 import tiny_model

    model = tiny_model(patch=28).eval()
    x = torch.randn(4, model.cfg.num_input_tokens, model.cfg.input_token_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x.cuda())
    for key in ("joints", "vertices", "camera"):
        got, want = out[key].float().cpu(), ref[key]
        assert got.shape == want.shape
        # bf16 keeps ~3 significant digits; outputs are template offsets of ~1 m
        assert (got - want).abs().max().item() < 2e-2, key


def test_cuda_pretrain_resumes_and_its_checkpoint_evaluates_on_cpu(tmp_path):
    from click.testing import CliRunner

    from _helpers_c2 import write_test_store
    from mpt_train import checkpoint as ckpt
    from mpt_train.cli import main

    store = write_test_store(tmp_path / "store")
    run = tmp_path / "run"
    common = ["pretrain", "--shards", store, "--out", str(run), "--batch-size", "8", "--workers", "0",
              "--patch", "28", "--checkpoint-every", "3", "--no-progress", "--device", "cuda"]
    res = CliRunner().invoke(main, common + ["--steps", "4"])
    assert res.exit_code == 0, res.output
    assert ckpt.latest(run).name == "step-00000004"
    res = CliRunner().invoke(main, common + ["--steps", "8", "--resume"])
    assert res.exit_code == 0, res.output
    assert ckpt.latest(run).name == "step-00000008"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert train_recs and all(math.isfinite(r["loss"]) for r in train_recs)
    assert max(r["step"] for r in train_recs) == 8
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run / "latest"), "--shards", store,
                                    "--json", str(tmp_path / "e.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["clean"]["samples"] == 32 and figures["clean"]["pa_mpjpe"] > 0
