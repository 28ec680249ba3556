"""Where the build's time goes (per-stage seconds) and the GPU build path (`--device cuda`).

The GPU tests skip without CUDA; without one, `--device cuda` must stop with one line saying so.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from store_builds import small_config
from mpt_data import build as bd
from mpt_data import schema

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_stage_seconds_cover_every_stage_of_the_write(build_inputs, tmp_path):
    result = bd.run_build(small_config(build_inputs, tmp_path / "store"))
    sec = result.stage_seconds
    assert set(sec) == {"static", "startup", "plan", "write", *bd.TASK_STAGES}
    assert all(v >= 0 for v in sec.values())
    for stage in ("read", "forward", "project", "quantise", "compress_write", "record"):
        assert sec[stage] > 0, stage  # every stage ran and was timed
    # In this process the tasks run inside the write phase: their stages cannot add up to more than it.
    assert sum(sec[k] for k in bd.TASK_STAGES) <= sec["write"] + 1e-3
    assert sec["plan"] <= result.plan_seconds and sec["write"] == result.write_seconds


def test_model_is_loaded_once_per_process_not_per_task(build_inputs, tmp_path, monkeypatch):
    loads = []
    real = bd._load_body_model

    def counting(*args, **kwargs):
        loads.append(args[2])  # the gender
        return real(*args, **kwargs)

    monkeypatch.setattr(bd, "_MODEL_CACHE", {})
    monkeypatch.setattr(bd, "_load_body_model", counting)
    result = bd.run_build(small_config(build_inputs, tmp_path / "store"))
    assert result.partitions > 1
    assert sorted(loads) == sorted(set(loads)), "one load per gender, whatever the number of partitions"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_device_cuda_without_cuda_is_one_clear_line(build_inputs, tmp_path):
    from mpt_data.cli import main

    out = tmp_path / "store"
    r = CliRunner().invoke(main, ["build", "--amass-root", str(build_inputs.amass_root), "--body-models",
                                  str(build_inputs.body_dir), "--target-fps", "5", "--workers", "0", "--device", "cuda",
                                  "--out", str(out), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "--device cuda" in r.output and "CUDA" in r.output and r.output.count("\n") == 1, r.output
    assert not out.exists(), "nothing written"


@pytest.mark.gpu
@needs_cuda
def test_forward_on_cuda_matches_the_cpu(build_inputs):
    from mpt_data.body import BodyModel, BodyModelConfig

    cfg = BodyModelConfig(str(build_inputs.body_dir))
    cpu, gpu = BodyModel.load(cfg, "neutral"), BodyModel.load(cfg, "neutral", device="cuda")
    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.4, (300, 156)).astype(np.float32)
    betas = rng.normal(0, 1, (300, 16)).astype(np.float32)
    a, b = cpu.forward(poses, betas), gpu.forward(poses, betas)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-4, err_msg=key)


@pytest.mark.gpu
@needs_cuda
def test_cuda_build_equals_the_cpu_build_within_a_quantum(reference_store, build_inputs, tmp_path):
    """A GPU build's floats differ from the CPU's in the last bits, so an int16 vertex may round to the next
    0.1 mm step and the fingerprints may differ; the content agrees within one quantum (vertices) and 1e-4 m."""
    ref = zarr.open_group(str(reference_store.path), mode="r")
    out = tmp_path / "store"
    bd.build_store(small_config(build_inputs, out, device="cuda"))
    got = zarr.open_group(str(out), mode="r")
    dv = np.abs(np.asarray(got[schema.VERTICES][:], np.int32) - np.asarray(ref[schema.VERTICES][:], np.int32))
    assert dv.max() <= 1
    for name in ref[schema.JOINTS_GROUP].array_keys():
        path = f"{schema.JOINTS_GROUP}/{name}"
        np.testing.assert_allclose(got[path][:], ref[path][:], atol=1e-4, err_msg=name)
    for path in (schema.POSE, schema.BETAS, schema.SEQUENCE, schema.FRAME, schema.SPLIT):
        np.testing.assert_array_equal(got[path][:], ref[path][:])
