"""`mpt-data build`: AMASS folder (or a folder of MANO parameter files) + recipe -> a sharded Zarr store, written
by a Dask cluster. What depends on the source kind and the body model (listing and reading the files, the
forward, the stored pose and shape) is `mpt_data.meshes`'s.

The build has three phases:

1. **Plan** (deterministic, on the driver; the file scan runs on the cluster). Every motion file under the
   AMASS root is read and validated in full, hashed, and either kept or skipped with a reason. Kept sequences
   get their sampled frames (`mpt_data.sampling`), and global mesh indices in the order of their sorted paths.
   The mesh range is cut into partitions of exactly one shard each, so the layout is fixed before anything
   is written and a bad file can never shift indices.
2. **Write** (parallel). One task per partition reads its sequences, runs the body model in batches (built
   once per worker process), projects the joints into every camera, writes its shards and then, last and
   atomically, its completion record (counts, per-chunk checksums, recipe hash, source files). A task
   re-run after a worker died writes the same bytes; `--resume` skips partitions whose record is valid.
3. **Finish**: state `complete`, then a summary of skipped files. `mpt-data freeze` seals the store.

All three phases, and `--overwrite`'s removal of an old store, hold one exclusive lock per store (`store.store_lock`:
`.<name>.lock` beside it; `freeze` takes it too), so two builds can never interleave partitions of different recipes in one store.

The build has no randomness: sampling is strided and the camera rig is fixed, so the same inputs and recipe
give the same store, byte for byte in its arrays, with any number of workers.
Relative data paths in a recipe (amass_root, body_model.dir, h36m_regressor) resolve against the current
directory; `splits.from` (the project's data manifest) resolves against the recipe file's folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpt_data import __version__, meshes, schema
from mpt_data import store as st
from mpt_data.fileio import LockError, atomic_write_bytes, atomic_write_json
from mpt_data.integrity import SEQUENCES_KEY
from mpt_data.plan import Partition, plan_build, scan_file, sequences_table_bytes, table_rows
from mpt_data.recipe import BuildConfig, RecipeError, load_recipe, manifest_splits, recipe_hash

# Stable entry points (tests and the trainer's fixtures call `build_store(load_recipe(None, ...))`).
__all__ = ["BuildConfig", "BuildResult", "LockError", "RecipeError", "build_store", "load_recipe", "manifest_splits", "run_build",
           "run_partition", "scan_file"]


# ---------------------------------------------------------------------------------------------------
# Write


@dataclass(frozen=True)
class TaskContext:
    """Everything a partition task needs besides its partition (small, picklable)."""

    out: str
    amass_root: str
    fps_overrides: tuple[tuple[str, float], ...]
    body_model_dir: str
    body_model_type: str
    num_betas: int
    h36m_regressor: str | None
    cameras: int
    layout: st.StoreLayout
    recipe_hash: str
    batch_size: int
    torch_threads: int | None  # 1 inside cluster workers (one process per core); None: leave as is
    device: str = "cpu"  # "cpu" or "cuda": where the body-model forward runs (see _task_device)
    hands: tuple[str, ...] = ()  # hand recipes: the sides made of each sampled frame (mpt_data.meshes)
    rig: Any = None  # the resolved camera rig (mpt_data.rigs.Rig); None: the Human3.6M rig of `cameras`
    reader: meshes.SequenceReader = meshes.SequenceReader()  # reads a source file of the recipe's kind


# Stages of a partition task; each process sums its tasks' seconds per stage here (like the model cache, per
# process), and the driver reports the sums in BuildResult.stage_seconds. Timings never enter a record, whose
# bytes must not depend on them.
TASK_STAGES = ("model_load", "read", "forward", "project", "quantise", "compress_write", "record")
_STAGE_SECONDS: dict[str, float] = dict.fromkeys(TASK_STAGES, 0.0)

_MODEL_CACHE: dict[tuple, Any] = {}
_load_body_model = meshes.load_model  # (model_dir, model_type, gender, num_betas, h36m, device) -> model


def _task_device(ctx: TaskContext) -> str:
    """The torch device of this process: the CPU, or one GPU per Dask worker, picked by the worker's index
    (its name in a LocalCluster) modulo the visible GPUs; GPU 0 outside a cluster."""
    if ctx.device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise st.StoreError("--device cuda: no CUDA device is visible in this worker process")
    index = 0
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else 0
    except ValueError:  # not inside a Dask worker
        index = 0
    return f"cuda:{index % torch.cuda.device_count()}"


def _body_model(ctx: TaskContext, gender: str, times: dict[str, float] | None = None):
    """The body (or hand) model for `gender`, built once per process (per worker, not per task) and kept for
    later tasks."""
    device = _task_device(ctx)
    gender = meshes.model_cache_key(ctx.body_model_type, gender)
    key = (ctx.body_model_dir, ctx.body_model_type, gender, ctx.num_betas, ctx.h36m_regressor, device)
    if key not in _MODEL_CACHE:
        t = time.perf_counter()
        _MODEL_CACHE[key] = _load_body_model(ctx.body_model_dir, ctx.body_model_type, gender, ctx.num_betas,
                                             ctx.h36m_regressor, device)
        if times is not None:
            times["model_load"] += time.perf_counter() - t
    return _MODEL_CACHE[key]


def run_partition(ctx: TaskContext, part: Partition) -> dict[str, Any]:
    """Compute and write one partition's shards, then its completion record; returns the record.

    Idempotent: a re-run (after a worker died) writes the same bytes and the same record.
    """
    from mpt_data.amass import MotionError

    if ctx.torch_threads:
        import torch

        torch.set_num_threads(ctx.torch_threads)
    times = _STAGE_SECONDS
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage] += now - clock
        clock = now
    n = part.stop - part.start
    lay = ctx.layout
    arrays = {name: np.zeros((n, *rest), dtype=dtype) for name, (rest, dtype) in st.mesh_array_specs(lay).items()}
    overrides = dict(ctx.fps_overrides)
    rig = _camera_rig(ctx)
    sources = []
    for seg in part.segments:
        size = os.stat(seg.path).st_size
        if size != seg.size:
            raise st.StoreError(f"{seg.path} changed size since the plan ({seg.size} -> {size} bytes); restart the build")
        try:
            motion = ctx.reader(seg.path, ctx.amass_root, overrides)
        except MotionError as err:  # it passed the plan, so it changed since
            raise st.StoreError(f"{seg.path} no longer reads as it did in the plan ({err}); restart the build") from err
        frames = np.asarray(seg.frames, dtype=np.int64)
        lo = seg.mesh_start - part.start
        lap("read")
        model = _body_model(ctx, seg.gender, times)
        clock = time.perf_counter()
        betas = meshes.mesh_betas(ctx.body_model_type, motion.betas, ctx.num_betas, ctx.reader.kind)
        sides = np.asarray(seg.sides, dtype=np.int64) if seg.sides else None
        for b in range(0, frames.shape[0], ctx.batch_size):
            fr = frames[b : b + ctx.batch_size]
            sl = slice(lo + b, lo + b + fr.shape[0])
            poses, verts, joints = meshes.forward_frames(model, ctx.body_model_type, motion.poses[fr], betas,
                                                         None if sides is None else sides[b : b + ctx.batch_size],
                                                         ctx.hands, ctx.reader.kind)
            lap("forward")
            try:
                arrays[schema.VERTICES][sl] = st.quantise_vertices(verts)
            except st.StoreError as err:
                # The plan's plausibility limits should keep such a file out; if one still gets here, the
                # error must name it, so it can be excluded.
                raise st.StoreError(f"{seg.path}, frames {int(fr[0])}..{int(fr[-1])}: {err}; exclude this file "
                                    f"(move it out of the AMASS root or --exclude its subset) and rebuild") from err
            for name, j in joints.items():
                arrays[f"{schema.JOINTS_GROUP}/{name}"][sl] = j
            lap("quantise")
            j2d, vis, crop = _project_views(rig, joints[meshes.heatmap_joint_set(ctx.body_model_type)], verts,
                                            meshes.heatmap_joint_set(ctx.body_model_type))
            arrays[schema.JOINTS2D][sl] = j2d
            arrays[schema.VISIBLE][sl] = vis
            arrays[schema.CROP][sl] = crop
            arrays[schema.POSE][sl] = poses
            arrays[schema.BETAS][sl] = betas[None]
            arrays[schema.SEQUENCE][sl] = seg.row
            arrays[schema.FRAME][sl] = fr
            arrays[schema.SPLIT][sl] = seg.split
            lap("project")
        rel = os.path.relpath(seg.path, ctx.amass_root)
        sources.append({"path": Path(rel).as_posix(), "size": size, "meshes": int(frames.shape[0])})
    sums = st.write_mesh_block(ctx.out, part.start, arrays, lay.chunk_meshes)
    lap("compress_write")
    record = {
        "partition": part.index,
        "start": part.start,
        "stop": part.stop,
        "recipe_hash": ctx.recipe_hash,
        "counts": {"meshes": n, "views": n * ctx.cameras},
        "checksums": sums,
        "sources": sources,
        "tool_version": __version__,
    }
    atomic_write_json(st.partition_record_path(ctx.out, part.index), record)
    lap("record")
    return record


def partition_task(ctx: TaskContext, part: Partition) -> tuple[dict[str, Any], dict[str, float]]:
    """The cluster task: `run_partition`'s record and the seconds it spent in each of `TASK_STAGES`."""
    before = dict(_STAGE_SECONDS)
    record = run_partition(ctx, part)
    return record, {k: _STAGE_SECONDS[k] - before[k] for k in TASK_STAGES}


# ---------------------------------------------------------------------------------------------------
# Driver


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _connect(cfg: BuildConfig):
    """(client, cluster): an existing scheduler, a new LocalCluster, or (None, None) for in-process."""
    if cfg.scheduler:
        from distributed import Client

        client = Client(cfg.scheduler)
        _log(f"scheduler {cfg.scheduler}; dashboard {client.dashboard_link}")
        return client, None
    if cfg.workers == 0:
        return None, None
    import importlib.util

    from distributed import Client, LocalCluster

    n = cfg.workers or os.cpu_count() or 1
    has_dashboard = importlib.util.find_spec("bokeh") is not None
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    client = Client(cluster)
    dash = client.dashboard_link if has_dashboard else "not served (install bokeh for the Dask dashboard)"
    _log(f"local cluster: {n} worker processes x 1 thread; dashboard {dash}")
    return client, cluster


WORKER_EXIT_SECONDS = 60.0  # how long a local worker process may take to exit before its nanny kills it


def _disconnect(client, cluster) -> None:
    """Close the client, then the local cluster's workers, then the cluster (scheduler).

    A worker process that holds a body model and torch can take longer to exit than the 4 s its nanny
    allows by default on a busy machine; it would then be killed with a warning. Closing the nannies first
    with a longer timeout lets each exit on its own; a worker that hangs is still killed after
    WORKER_EXIT_SECONDS."""
    if client is not None:
        client.close()
    if cluster is None:
        return

    async def close_workers():
        import asyncio

        await asyncio.gather(*(worker.close(timeout=WORKER_EXIT_SECONDS) for worker in cluster.workers.values()))

    try:
        cluster.sync(close_workers)
    finally:
        cluster.close()


def _selected_files(cfg: BuildConfig) -> list[Path]:
    from mpt_data.amass import subset_and_subject

    root = Path(cfg.amass_root)
    out = []
    for p in meshes.find_source_files(cfg.source_kind, root):
        subset, _ = subset_and_subject(p.relative_to(root).as_posix())
        if cfg.subsets_include and subset not in cfg.subsets_include:
            continue
        if subset in cfg.subsets_exclude:
            continue
        out.append(p)
    return out


def _progress(total: int, desc: str, enabled: bool, unit: str = "part"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr)


def _scan_files(client, files: list[Path], config: BuildConfig,
                reader: meshes.SequenceReader | None = None) -> list[dict]:
    """The plan rows of `files` (in their order), read by `reader` (default: AMASS motion files) in this process
    or on the cluster, with a progress bar (the plan reads and validates every file: minutes for all of AMASS)."""
    overrides = dict(config.fps_overrides)
    bar = _progress(len(files), "plan", config.progress, unit="file")
    try:
        if client is None:
            rows = []
            for p in files:
                rows.append(scan_file(str(p), config.amass_root, overrides, reader))
                bar.update(1)
            return rows
        from distributed import as_completed

        futures = client.map(scan_file, [str(p) for p in files], root=config.amass_root, fps_overrides=overrides,
                             read=reader)
        for _ in as_completed(futures):
            bar.update(1)
        return client.gather(futures)
    finally:
        bar.close()


@dataclass(frozen=True)
class BuildResult:
    """What a build did: the store, its size, which partitions this run wrote, and phase timings."""

    path: Path
    meshes: int
    partitions: int
    written: tuple[int, ...]  # partition indices written by this run (all of them unless resuming)
    skipped_files: int
    plan_seconds: float
    write_seconds: float
    # Where the time went: "static" (topology, cameras, body-model facts), "startup" (cluster start), "plan",
    # "write" on the driver's clock, and each of
    # TASK_STAGES summed over the partition tasks (worker seconds, so with N workers up to N x write).
    stage_seconds: dict[str, float] = field(default_factory=dict)


def build_store(config: BuildConfig) -> Path:
    """Build (or, with `resume`, finish) the store `config.out`; returns its path. State ends 'complete'.

    Stable entry point for tests and fixtures: `build_store(load_recipe(None, amass_root=..., body_model_dir=...,
    target_fps=..., out=..., workers=0))` builds a small store in this process.
    Raises RecipeError for a bad recipe or missing body-model file, FrozenStoreError on a frozen store,
    LockError while another build writes the same store.
    """
    return run_build(config).path


def run_build(config: BuildConfig) -> BuildResult:
    """`build_store` with a report of what was done (used by tests and the benchmark).

    The whole build (checks of an existing store, `--overwrite`'s removal, plan, write) holds
    `st.store_lock(config.out)`: a second build into the same store is refused with a LockError naming
    the holder, and a lock left by a dead process on this host is taken over.
    """
    config.validate()
    config = config.with_absolute_paths()  # workers resolve paths in their own current directory
    with st.store_lock(config.out):
        return _run_build_locked(config)


def _run_build_locked(config: BuildConfig) -> BuildResult:
    out = Path(config.out)
    t_static = time.perf_counter()
    rig = config.camera_rig()
    static_arrays, static_attrs, model_info = _static_content(config, rig)
    t_static = time.perf_counter() - t_static
    rhash = recipe_hash(config, model_info["files"])

    fresh = True
    if (out / "zarr.json").exists():
        group = st.open_store(out)  # raises for foreign schema
        if group.attrs.get(schema.ATTR_STATE) == schema.STATE_FROZEN:
            raise st.FrozenStoreError(f"{out} is frozen and refuses writes; choose another --out")
        if config.resume and (out / st.STATIC_RECORD).exists():
            if group.attrs.get(schema.ATTR_RECIPE_HASH) != rhash:
                raise RecipeError(f"{out} was built with another recipe or body model; resume needs the same recipe (or use --overwrite)")
            fresh = False
        elif config.resume or config.overwrite:
            st.remove_store(out)
        else:
            raise st.StoreError(f"{out} already exists; pass --resume to finish it or --overwrite to rebuild it")
    elif out.exists() and any(out.iterdir()):
        raise st.StoreError(f"{out} exists and is not an MPT store; choose another --out")

    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RecipeError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                              "build on the CPU (the default) or on a machine with a GPU")
    t0 = time.perf_counter()
    client, cluster = _connect(config)
    t_startup = time.perf_counter() - t0
    try:
        files = _selected_files(config)
        _log(f"plan: reading and validating {len(files)} {config.source_kind} files")
        rows = _scan_files(client, files, config, model_info["reader"])
        rows, parts, n = plan_build(config, rows)
        missing = sorted({r["gender"] for r in rows if r["status"] == "ok"} - set(model_info["genders"]))
        if missing:
            raise RecipeError(f"no {config.body_model_type.upper()} body-model file for gender(s) {missing} in "
                              f"{config.body_model_dir}, but motion files use them; add the files (see data_manifest.yaml)")
        table = sequences_table_bytes(rows)
        layout = st.StoreLayout(
            num_meshes=n, num_vertices=model_info["num_vertices"], num_cameras=config.cameras,
            joint_sets=model_info["joint_sets"], pose_dim=model_info["pose_dim"],
            num_betas=model_info["num_betas"], heatmap_joints=model_info["joint_sets"][model_info["heatmap_joint_set"]],
            chunk_meshes=config.chunk_meshes, shard_meshes=config.shard_meshes,
        )
        table_sum = st.table_checksum(table_rows(table))
        if fresh:
            _create(out, config, rhash, layout, rows, table, static_arrays, static_attrs, model_info)
        else:
            static = json.loads((out / st.STATIC_RECORD).read_text())
            if static["checksums"].get(SEQUENCES_KEY) != [table_sum] or st.open_store(out).attrs[schema.ATTR_COUNTS]["meshes"] != n:
                raise st.StoreError(f"the motion files under {config.amass_root} changed since {out} was started; rebuild with --overwrite")
        ctx = TaskContext(
            out=str(out), amass_root=config.amass_root, fps_overrides=config.fps_overrides,
            body_model_dir=config.body_model_dir, body_model_type=config.body_model_type, num_betas=model_info["num_betas"],
            h36m_regressor=config.h36m_regressor, cameras=config.cameras, layout=layout, recipe_hash=rhash,
            batch_size=config.batch_size, torch_threads=None if client is None else 1, device=config.device,
            hands=config.hands, rig=rig, reader=model_info["reader"],
        )
        arrays = sorted(st.mesh_array_specs(layout))
        todo = [p for p in parts if not st.record_is_valid(
            st.read_partition_record(out, p.index), index=p.index, start=p.start, stop=p.stop,
            recipe_hash=rhash, arrays=arrays, chunk_meshes=layout.chunk_meshes)]
        if len(todo) < len(parts):
            _log(f"resume: {len(parts) - len(todo)} of {len(parts)} partitions already complete")
        t_plan = time.perf_counter() - t0
        stages = _run_partitions(client, ctx, todo, config.progress)
        st.open_store(out, "r+").attrs[schema.ATTR_STATE] = schema.STATE_COMPLETE
        t_write = time.perf_counter() - t0 - t_plan
    finally:
        _disconnect(client, cluster)
    _summary(rows, n, config.cameras, time.perf_counter() - t0)
    return BuildResult(path=out, meshes=n, partitions=len(parts), written=tuple(p.index for p in todo),
                       skipped_files=sum(r["status"] != "ok" for r in rows), plan_seconds=t_plan, write_seconds=t_write,
                       stage_seconds={"static": t_static, "startup": t_startup, "plan": t_plan - t_startup,
                                      "write": t_write, **stages})


def _create(out: Path, cfg: BuildConfig, rhash: str, layout: st.StoreLayout, rows: list[dict], table: bytes,
            static_arrays: dict[str, np.ndarray], static_attrs: dict[str, dict], model_info: dict) -> None:
    split_counts = {name: 0 for name in schema.SPLITS}
    for r in rows:
        split_counts[r["split"]] += r["sampled"]
    ok = sum(r["status"] == "ok" for r in rows)
    counts = {
        "meshes": layout.num_meshes, "cameras": cfg.cameras, "views": layout.num_meshes * cfg.cameras,
        "vertices": layout.num_vertices, "faces": int(static_arrays[schema.TOPOLOGY_FACES].shape[0]),
        "sequences": ok, "skipped": len(rows) - ok, "splits": split_counts,
    }
    recipe = cfg.recipe()
    recipe["sample_fps"] = rows[0]["sample_fps"] if rows else None
    attrs = {
        schema.ATTR_RECIPE: recipe, schema.ATTR_RECIPE_HASH: rhash, schema.ATTR_COUNTS: counts,
        schema.ATTR_HEATMAP_JOINT_SET: model_info["heatmap_joint_set"], schema.ATTR_BODY_MODEL: model_info["describe"],
        schema.ATTR_VERTEX_SCALE_M: schema.VERTEX_SCALE_M, schema.ATTR_CROP_SIZE: schema.CROP_SIZE,
    }
    st.create_store(out, layout, attrs)
    sums = st.write_static_arrays(out, static_arrays)
    group = st.open_store(out, "r+")
    for name, extra in static_attrs.items():  # group attributes, e.g. the camera names
        group[name].attrs.update(extra)
    atomic_write_bytes(out / schema.SEQUENCES_TABLE, table)
    sums[SEQUENCES_KEY] = [st.table_checksum(table_rows(table))]
    atomic_write_json(out / st.STATIC_RECORD, {"checksums": sums, "recipe_hash": rhash})


def _run_partitions(client, ctx: TaskContext, todo: list[Partition], progress: bool) -> dict[str, float]:
    """Run the partition tasks; returns their seconds per stage (`TASK_STAGES`), summed over tasks."""
    bar = _progress(len(todo), "partitions", progress)
    try:
        if client is None:
            before = dict(_STAGE_SECONDS)
            for p in todo:
                run_partition(ctx, p)
                bar.update(1)
            return {k: _STAGE_SECONDS[k] - before[k] for k in TASK_STAGES}
        from distributed import as_completed

        ctx_future = client.scatter(ctx, broadcast=True)
        futures = [client.submit(partition_task, ctx_future, p, key=f"mpt-partition-{ctx.recipe_hash[:12]}-{p.index:06d}",
                                 pure=False) for p in todo]
        stages = dict.fromkeys(TASK_STAGES, 0.0)
        try:
            for fut in as_completed(futures):
                _, seconds = fut.result()  # re-raises a task's exception here, naming the partition's error
                for k, v in seconds.items():
                    stages[k] += v
                bar.update(1)
        except BaseException:
            client.cancel(futures)
            raise
        return stages
    finally:
        bar.close()


def _summary(rows: list[dict], n: int, cameras: int, seconds: float) -> None:
    skipped = [r for r in rows if r["status"] != "ok"]
    _log(f"built {n} meshes x {cameras} cameras from {len(rows) - len(skipped)} sequences in {seconds:.1f} s")
    if skipped:
        _log(f"skipped {len(skipped)} file(s):")
        for r in skipped:
            _log(f"  {r['path']}: {r['reason']}")


# ---------------------------------------------------------------------------------------------------
# Static content and cameras (the model-specific parts live in mpt_data.meshes; the maths in mpt_data.body,
# hand, cameras and topology)


def _static_content(cfg: BuildConfig, rig=None) -> tuple[dict[str, np.ndarray], dict[str, dict], dict[str, Any]]:
    """Driver-owned arrays (cameras, topology, regressors) and facts about the body model
    (`mpt_data.meshes.static_content`). Fails at once (RecipeError) when no model file is found or one is
    malformed. `rig`: the resolved camera rig (default: `cfg.camera_rig()`)."""
    arrays, info = meshes.static_content(cfg)
    cam_arrays, cam_attrs = _camera_arrays(cfg.camera_rig() if rig is None else rig)
    arrays.update(cam_arrays)
    return arrays, cam_attrs, info


def _camera_rig(ctx: TaskContext):
    """The task's camera rig (`mpt_data.rigs.Rig`): the driver's resolved rig, or Human3.6M's of `ctx.cameras`."""
    from mpt_data.rigs import standard_rig

    return standard_rig(ctx.cameras) if ctx.rig is None else ctx.rig


def _project_views(rig, joints: np.ndarray, vertices: np.ndarray,
                   joint_set: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, C, K, 2) crop pixels, (B, C, K) visibility, (B, C, 3) crops of heatmap joints seen by the rig, the
    meshes' roots at the rig's subject position. A joint set with face keypoints (coco17) gets the face rule
    (`cameras.face_facing`)."""
    from mpt_data.cameras import face_rows, project_views
    from mpt_data.conventions import JOINT_SETS

    rows = face_rows(JOINT_SETS.get(joint_set, ())) if joint_set is not None else None
    views = project_views(joints, vertices, rig.cameras, rig.subject_position, face_rows=rows)
    return views.joints2d, views.visible, views.crop


def _camera_arrays(rig) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    from mpt_data.cameras import stack_cameras

    stacked = stack_cameras(rig.cameras)
    arrays = {schema.CAMERA_K: stacked["K"], schema.CAMERA_R: stacked["R"], schema.CAMERA_T: stacked["t"],
              schema.CAMERA_SIZE: stacked["image_size"]}
    group_attrs = {schema.CAMERAS: {schema.ATTR_CAMERA_NAMES: [str(x) for x in stacked["name"]],
                                    schema.ATTR_SUBJECT_POSITION: [float(x) for x in rig.subject_position]}}
    return arrays, group_attrs
