"""`mpt-data bench`: how fast the build runs and how small the store is, on synthetic inputs.

Prints four figures (a benchmark, not a test; the machine's load average is printed with them):

1. body-model forward, meshes/s on one core: `mpt_data.body.BodyModel` against plain `smplx.SMPLH`
   (use_pca=False, flat_hand_mean=True) at the same batch size and one frame per call (the plain loop), on
   the same synthetic SMPL+H file;
2. end to end, meshes/s per worker core: a whole in-process build (plan, read, forward, 8-camera projection,
   quantisation, compression, checksums, shard writes) with torch on one thread, with the body model already
   loaded (a worker's steady state; the first, cold build is printed too); the write phase alone too;
3. bytes per mesh on disk against raw float32, for the vertices and for all per-mesh arrays;
4. the write phase with a 1-worker and a 2-worker local Dask cluster.
With `profile`, the warm build's seconds per stage (start-up, plan; per task: model load, read, forward,
projection, quantise, compress+write incl. checksums, record). With `scaling`, only the scaling run
(`run_scaling`): a store large enough that start-up is a small share (20,000 meshes by default) built with 1
and 2 workers and frozen, with meshes/s of the whole build, the parallel efficiency and the stage breakdown.
Targets: >= 1,000 meshes/s per core end to end; store <= 0.5 of raw float32; 2-worker efficiency >= 80 %.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data import schema


@dataclass(frozen=True)
class BenchConfig:
    meshes: int = 2048  # meshes per build
    batch: int = 512  # body-model batch
    num_vertices: int = 6890  # synthetic model size (SMPL's count by default)
    cameras: int = 8  # the paper's rig (the targets are for 8 cameras)
    workdir: str | None = None  # scratch folder; a temporary one when None
    repeats: int = 5  # forward passes timed per model
    profile: bool = False  # print the build's time per stage (forward, projection, quantise, compress+write, ...)
    scaling: bool = False  # only the scaling run: a large store built with 1 and 2 workers
    scaling_meshes: int = 20000  # meshes of the scaling store (start-up must be a small share of the run)


def stage_lines(result, meshes: int) -> list[str]:
    """Lines giving a build's seconds per stage and each task stage's share of the task time."""
    from mpt_data.build import TASK_STAGES

    sec = result.stage_seconds
    task_total = sum(sec.get(k, 0.0) for k in TASK_STAGES) or float("nan")
    out = [f"  driver: topology and cameras {sec.get('static', 0):.2f} s, start-up {sec.get('startup', 0):.2f} s, "
           f"plan {sec.get('plan', 0):.2f} s, "
           f"write phase {sec.get('write', 0):.2f} s"]
    out.append("  tasks (worker seconds): " + ", ".join(
        f"{k} {sec.get(k, 0):.2f} s ({100 * sec.get(k, 0) / task_total:.0f} %)" for k in TASK_STAGES)
        + f"; {1e3 * task_total / max(meshes, 1):.3f} ms per mesh")
    return out


def run_scaling(cfg: BenchConfig, work: Path, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Build a `cfg.scaling_meshes` store with a 1- and a 2-worker local cluster, then freeze it; prints
    meshes/s of the whole build, the parallel efficiency and where the time goes."""
    from mpt_data.build import load_recipe, run_build
    from mpt_data.freeze import freeze_store

    body_dir, amass = _inputs(cfg, work, cfg.scaling_meshes, echo)
    base = dict(amass_root=str(amass), body_model_dir=str(body_dir), target_meshes=cfg.scaling_meshes,
                cameras=cfg.cameras, chunk_meshes=32, shard_meshes=512, batch_size=cfg.batch, progress=False)
    out = work / "scaling-store"
    figures: dict[str, float] = {}
    for workers in (1, 2):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        r = run_build(load_recipe(None, **base, out=str(out), workers=workers))
        whole = time.perf_counter() - t
        t = time.perf_counter()
        freeze_store(out)
        freeze = time.perf_counter() - t
        figures[f"scaling_meshes_per_s_{workers}_workers"] = r.meshes / whole
        figures[f"scaling_startup_share_{workers}_workers"] = r.stage_seconds["startup"] / whole
        echo(f"scaling, {workers} worker(s): {r.meshes} meshes x {cfg.cameras} cameras in {whole:.1f} s = "
             f"{r.meshes / whole:,.0f} meshes/s (start-up {100 * r.stage_seconds['startup'] / whole:.1f} % of the "
             f"build); freeze {freeze:.1f} s")
        for line in stage_lines(r, r.meshes):
            echo(line)
    eff = figures["scaling_meshes_per_s_2_workers"] / (2 * figures["scaling_meshes_per_s_1_workers"])
    figures["parallel_efficiency_2_workers"] = eff
    echo(f"parallel efficiency, 2 workers: {100 * eff:.0f} % (meshes/s with 2 / twice meshes/s with 1)")
    return figures


def _inputs(cfg: BenchConfig, work: Path, meshes: int, echo: Callable[[str], None]) -> tuple[Path, Path]:
    """The synthetic body-model folder and AMASS root in `work`, written when missing."""
    from mpt_data.synth.body import write_body_models
    from mpt_data.synth.motion import write_motions

    body_dir, amass = work / "body_models", work / f"amass-{meshes}"
    if not (body_dir / "vertex_ids.json").exists():
        echo(f"writing a {cfg.num_vertices}-vertex synthetic body model ...")
        write_body_models(body_dir, seed=0, num_vertices=cfg.num_vertices)
    if not amass.exists():
        # 4 s per sequence at 60-120 fps; enough sequences to hold the requested meshes at full rate.
        write_motions(amass, seed=0, num_sequences=max(7, meshes // 300 + 1), seconds=4.0)
    return body_dir, amass


def _forward_rates(body_dir: Path, batch: int, repeats: int) -> tuple[float, float, float, int]:
    """(meshes/s of BodyModel, of smplx.SMPLH at the same batch, of smplx.SMPLH one frame at a time, smplx's
    betas) on one thread."""
    import smplx
    import torch

    from mpt_data.body import BodyModel, BodyModelConfig, find_model_file
    from mpt_data.synth.picture import quiet_smplh

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    poses = (rng.normal(size=(batch, 156)) * 0.3).astype(np.float32)
    betas = rng.normal(size=(batch, 16)).astype(np.float32)
    cfg = BodyModelConfig(str(body_dir), "smplh", 16)
    ours = BodyModel.load(cfg, "neutral")
    ref = quiet_smplh(smplx.SMPLH, model_path=str(find_model_file(cfg, "neutral")), use_pca=False,
                      flat_hand_mean=True, num_betas=16, batch_size=batch)
    nb = ref.num_betas
    tp, tb = torch.from_numpy(poses), torch.from_numpy(betas[:, :nb])

    def ours_step():
        ours.forward(poses, betas)

    def ref_step():
        with torch.inference_mode():
            out = ref(betas=tb, global_orient=tp[:, :3], body_pose=tp[:, 3:66], left_hand_pose=tp[:, 66:111],
                      right_hand_pose=tp[:, 111:156], return_verts=True)
            out.vertices.numpy()

    single = quiet_smplh(smplx.SMPLH, model_path=str(find_model_file(cfg, "neutral")), use_pca=False,
                         flat_hand_mean=True, num_betas=16, batch_size=1)
    frames = min(batch, 128)

    def per_frame_step():  # the plain loop a user would write: one smplx call per frame
        with torch.inference_mode():
            for i in range(frames):
                out = single(betas=tb[i: i + 1], global_orient=tp[i: i + 1, :3], body_pose=tp[i: i + 1, 3:66],
                             left_hand_pose=tp[i: i + 1, 66:111], right_hand_pose=tp[i: i + 1, 111:156],
                             return_verts=True)
                out.vertices.numpy()

    rates = []
    for step, per_step in ((ours_step, batch), (ref_step, batch), (per_frame_step, frames)):
        step()  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            step()
        rates.append(per_step * repeats / (time.perf_counter() - t))
    return rates[0], rates[1], rates[2], nb


def _raw_float32_bytes(group) -> tuple[int, int]:
    """(raw float32 bytes of the vertices, of every per-mesh array) for one mesh."""
    from mpt_data.store import _mesh_array_paths

    total = 0
    for name in _mesh_array_paths(group):
        total += int(np.prod(group[name].shape[1:])) * 4
    return int(np.prod(group[schema.VERTICES].shape[1:])) * 4, total


def run_bench(cfg: BenchConfig, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run the four measurements, print them, and return them by name."""
    import torch
    import zarr

    from mpt_data.build import load_recipe, manifest_splits, run_build
    from mpt_data.store import store_info

    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="mpt-bench-"))
    figures: dict[str, float] = {}
    try:
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        echo(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if cfg.scaling:
            return run_scaling(cfg, work, echo)
        body_dir, amass = _inputs(cfg, work, cfg.meshes, echo)

        ours, ref, per_frame, nb = _forward_rates(body_dir, cfg.batch, cfg.repeats)
        figures.update(forward_meshes_per_s=ours, smplx_meshes_per_s=ref, smplx_per_frame_meshes_per_s=per_frame)
        echo(f"body-model forward, batch {cfg.batch}, 1 thread: mpt {ours:,.0f} meshes/s   smplx.SMPLH {ref:,.0f} "
             f"meshes/s ({ours / ref:.2f}x; smplx uses {nb} betas); smplx one frame per call {per_frame:,.0f} meshes/s")

        repo_manifest = Path(__file__).resolve().parents[1] / "data_manifest.yaml"
        base = dict(amass_root=str(amass), body_model_dir=str(body_dir), target_meshes=cfg.meshes,
                    cameras=cfg.cameras, chunk_meshes=32, shard_meshes=512, batch_size=cfg.batch, progress=False,
                    splits=manifest_splits(repo_manifest) if repo_manifest.exists() else {})
        out = work / "store"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        runs = []
        for _ in range(2):  # cold (loads the body model), then warm: a worker's steady state in a long build
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            result = run_build(load_recipe(None, **base, out=str(out), workers=0))
            runs.append((time.perf_counter() - t, result))
        torch.set_num_threads(threads)
        n = result.meshes
        (cold, cold_r), (warm, warm_r) = runs
        figures.update(end_to_end_meshes_per_s_per_core=n / warm, write_meshes_per_s_per_core=n / warm_r.write_seconds,
                       end_to_end_cold_meshes_per_s=n / cold, end_to_end_vs_smplx_per_frame=(n / warm) / per_frame)
        echo(f"end to end, 1 core, {n} meshes x {cfg.cameras} cameras, {cfg.num_vertices} vertices: "
             f"{n / warm:,.0f} meshes/s (whole build {warm:.2f} s, model cached); write phase "
             f"{n / warm_r.write_seconds:,.0f} meshes/s; first build with the model load {n / cold:,.0f} meshes/s; "
             f"{(n / warm) / per_frame:.2f}x the per-frame smplx loop")
        if cfg.profile:
            echo("where the time goes (warm build, 1 core):")
            for line in stage_lines(warm_r, n):
                echo(line)
            figures.update({f"seconds_{k}": v for k, v in warm_r.stage_seconds.items()})

        info = store_info(out)
        group = zarr.open_group(str(out), mode="r")
        raw_v, raw_all = _raw_float32_bytes(group)
        disk_v = info["sizes_bytes"][schema.VERTICES] / n
        from mpt_data.store import _mesh_array_paths

        disk_all = sum(info["sizes_bytes"].get(a, 0) for a in _mesh_array_paths(group)) / n
        figures.update(vertex_bytes_per_mesh=disk_v, vertex_ratio=disk_v / raw_v,
                       bytes_per_mesh=disk_all, ratio=disk_all / raw_all)
        echo(f"on disk: vertices {disk_v:,.0f} B/mesh vs {raw_v:,} raw float32 ({disk_v / raw_v:.3f}); "
             f"all per-mesh arrays {disk_all:,.0f} B/mesh vs {raw_all:,} ({disk_all / raw_all:.3f})")

        for workers in (1, 2):
            shutil.rmtree(out, ignore_errors=True)
            r = run_build(load_recipe(None, **base, out=str(out), workers=workers))
            figures[f"write_meshes_per_s_{workers}_workers"] = r.meshes / r.write_seconds
            echo(f"local cluster, {workers} worker(s): write phase {r.meshes / r.write_seconds:,.0f} meshes/s "
                 f"({r.partitions} partitions, {r.write_seconds:.2f} s; includes each worker's model load)")
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return figures
