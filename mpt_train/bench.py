"""Benchmarks of the trainer's data path (figures are printed, never asserted).

`bench_inputs`: on-device input synthesis (heatmap render + MHM + noise + jitter + patches +
camera-frame rotation) in samples/s and achieved GB/s of heatmap output written.
`bench_loader`: the streaming loader's samples/s, total and per worker, from a store.
`bench_chunk_checks`: the cost of checking every chunk read against the store's integrity manifest.
The `mpt-train bench` command adds the model step and prints all of them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from mpt_train.data import LoaderConfig, PairLoader
from mpt_train.inputs import InputConfig, prepare_batch
from mpt_train.runtime import choose_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_loader_batch(
    batch_size: int, num_joints: int = 17, num_vertices: int = 6890, device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A loader-shaped batch with plausible values (joints inside the crop, rotations), on `device`."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch_size, 3, 3, generator=g))
    batch = {
        "joints2d": 16 + 192 * torch.rand(batch_size, num_joints, 2, generator=g),
        "visible": torch.rand(batch_size, num_joints, generator=g) > 0.1,
        "joints3d": torch.randn(batch_size, num_joints, 3, generator=g) * 0.5,
        "vertices": torch.randn(batch_size, num_vertices, 3, generator=g) * 0.5,
        "camera_R": q,
        "key": torch.randint(0, 2**62, (batch_size,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def bench_inputs(
    batch_size: int = 64,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    cfg: InputConfig | None = None,
    iters: int = 20,
    warmup: int = 3,
    num_vertices: int = 6890,
) -> dict[str, Any]:
    """Time `prepare_batch` on a batch already on the device.

    Returns samples_per_s, ms_per_batch, and gb_per_s = bytes of the heatmap windows
    (in `dtype`) written per second. Defaults: CUDA with bf16 when present, else CPU float32.
    """
    dev = choose_device(device)
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    cfg = cfg or InputConfig()
    batch = synthetic_loader_batch(batch_size, num_vertices=num_vertices, device=dev)
    for _ in range(warmup):
        prepare_batch(batch, cfg, dev, dt)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = prepare_batch(batch, cfg, dev, dt)
    _sync(dev)
    sec = (time.perf_counter() - t0) / iters
    out_bytes = out.tokens.values.numel() * torch.finfo(dt).bits // 8 if cfg.use_heatmaps else 0
    assert out.tokens.shape[0] == batch_size
    return {
        "what": "render+MHM (prepare_batch)",
        "device": str(dev),
        "dtype": str(dt).replace("torch.", ""),
        "batch_size": batch_size,
        "ms_per_batch": 1e3 * sec,
        "samples_per_s": batch_size / sec,
        "gb_per_s": out_bytes / sec / 1e9,
    }


def bench_loader(
    shards: str,
    num_workers: int = 1,
    batch_size: int = 256,
    batches: int = 40,
    split: str = "train",
    allow_unfrozen: bool = False,
    **loader_overrides: Any,
) -> dict[str, Any]:
    """Stream `batches` batches (after one warm-up batch that includes worker start-up) from a store.

    Returns samples_per_s and samples_per_s_per_worker (main process counted as one worker
    when num_workers = 0), with the store's description.
    """
    cfg = LoaderConfig(shards=str(shards), split=split, batch_size=batch_size, num_workers=num_workers,
                       allow_unfrozen=allow_unfrozen, drop_last=False, pin_memory=False)
    cfg = replace(cfg, **loader_overrides)
    loader = PairLoader(cfg)
    available = loader.num_batches(0)
    if available < 2:
        raise ValueError(f"{shards}: {available} batches of {batch_size} in split {split!r}; need at least 2")
    n = min(batches, available - 1)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    samples = 0
    for _ in range(n):
        samples += len(next(it)["key"])
    sec = time.perf_counter() - t0
    del it
    rate = samples / sec
    return {
        "what": "loader",
        "store": loader.reader.describe(),
        "num_workers": num_workers,
        "batch_size": batch_size,
        "batches": n,
        "samples_per_s": rate,
        "samples_per_s_per_worker": rate / max(1, num_workers),
    }


def bench_remote_loader(shards: str, storage_options: dict[str, Any], cache_dir: str | None = None,
                        num_workers: int = 1, batch_size: int = 256, batches: int = 40) -> list[dict[str, Any]]:
    """Loader samples/s per worker from a store on object storage, four ways, each a `bench_loader` result with a
    "source": straight from the store; through a local read cache while it fills (`cache_dir`, or a temporary
    folder), then with it filled (the same batches again); and from a local copy made with `mpt-data copy`."""
    import tempfile

    from mpt_data.transfer import CopyConfig, copy_store

    def run(source: str, url: str, **overrides: Any) -> dict[str, Any]:
        result = bench_loader(url, num_workers=num_workers, batch_size=batch_size, batches=batches, **overrides)
        return result | {"source": source}

    with tempfile.TemporaryDirectory(prefix="mpt-bench-") as tmp:
        cache = cache_dir or f"{tmp}/cache"
        out = [run("object storage, no cache", shards, storage_options=storage_options),
               run("object storage, filling the cache", shards, storage_options=storage_options, cache_dir=cache),
               run("object storage, cache filled", shards, storage_options=storage_options, cache_dir=cache)]
        copy_store(CopyConfig(shards, f"{tmp}/store", storage_options, {}, progress=False))
        out.append(run("local disk (a copy)", f"{tmp}/store"))
    return out


def bench_chunk_checks(shards: str, rounds: int = 3, allow_unfrozen: bool = False) -> dict[str, Any]:
    """The cost of the per-chunk checksum checks of `StoreReader.read_chunk`, over every chunk of a store.

    Per chunk, two timings: the read itself (zarr decode and dequantise, checks off) and the checks alone
    (BLAKE2b of the same arrays as stored, what `read_chunk` adds). Timing the hash on its own is steadier than
    the difference of two noisy reads. Best of `rounds` passes each. Returns meshes_per_s of the unchecked read,
    ms per chunk of each, and check_share = hash / (read + hash).
    """
    from mpt_data import schema
    from mpt_data.integrity import chunk_digest
    from mpt_train.store import open_store

    reader = open_store(shards, allow_unfrozen=allow_unfrozen)
    checked = reader.verified
    paths = [schema.VERTICES, schema.JOINTS2D, schema.VISIBLE] + [f"{schema.JOINTS_GROUP}/{j}" for j in reader.joint_sets]
    best_read, best_hash = float("inf"), float("inf")
    try:
        reader.verified = False
        for _ in range(rounds):
            t_read = t_hash = 0.0
            for i in range(reader.num_chunks):
                t0 = time.perf_counter()
                reader.read_chunk(i)
                t_read += time.perf_counter() - t0
                start, stop = reader.chunk_range(i)
                raw = [reader._array(p)[start:stop] for p in paths]
                t0 = time.perf_counter()
                for a in raw:
                    chunk_digest(a)
                t_hash += time.perf_counter() - t0
            best_read, best_hash = min(best_read, t_read), min(best_hash, t_hash)
    finally:
        reader.verified = checked
    c = reader.num_chunks
    return {"what": "chunk checks", "store": reader.describe(), "chunks": c,
            "unchecked_meshes_per_s": reader.num_meshes / best_read,
            "read_ms_per_chunk": 1e3 * best_read / c, "check_ms_per_chunk": 1e3 * best_hash / c,
            "check_share": best_hash / (best_read + best_hash)}


def bench_projection(batch_size: int = 64, device: torch.device | str | None = None, num_vertices: int = 6890,
                     iters: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Time the on-device view of ``--views random`` (:func:`mpt_train.views.random_views`: the camera
    draw, projection of all vertices and the 17 heatmap joints, crop, visibility, face rule) on a
    batch already on the device. Returns ms_per_batch and samples_per_s."""
    from mpt_train.views import CameraDistribution, random_views

    dev = choose_device(device)
    batch = synthetic_loader_batch(batch_size, num_vertices=num_vertices, device=dev)
    dist = CameraDistribution.photographs()
    for _ in range(warmup):
        random_views(batch, dist, "coco17", dev, joints_key="joints3d")
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = random_views(batch, dist, "coco17", dev, joints_key="joints3d")
    _sync(dev)
    sec = (time.perf_counter() - t0) / iters
    assert out["joints2d"].shape[0] == batch_size
    return {"what": f"on-device projection ({num_vertices} vertices)", "device": str(dev), "dtype": "float32",
            "batch_size": batch_size, "ms_per_batch": 1e3 * sec, "samples_per_s": batch_size / sec, "gb_per_s": 0.0}


def format_result(result: dict[str, Any]) -> str:
    """One printable line per benchmark result."""
    if result["what"] == "chunk checks":
        return (f"read_chunk over {result['chunks']} chunks: {result['read_ms_per_chunk']:.2f} ms per chunk to read "
                f"and decode, {result['check_ms_per_chunk']:.2f} ms to check it against integrity.json = "
                f"{100 * result['check_share']:.1f} % of a checked read")
    if result["what"] == "loader":
        return (f"loader{' from ' + result['source'] if 'source' in result else ''}: "
                f"{result['samples_per_s']:,.0f} samples/s with {result['num_workers']} worker(s) = "
                f"{result['samples_per_s_per_worker']:,.0f} per worker (batch {result['batch_size']}, "
                f"{result['batches']} batches) [{result['store']}]")
    if result["what"].startswith("on-device projection"):
        return (f"{result['what']} on {result['device']}: {result['samples_per_s']:,.0f} samples/s, "
                f"{result['ms_per_batch']:.2f} ms per batch of {result['batch_size']}")
    return (f"{result['what']} on {result['device']} {result['dtype']}: {result['samples_per_s']:,.0f} samples/s, "
            f"{result['ms_per_batch']:.2f} ms per batch of {result['batch_size']}, "
            f"{result['gb_per_s']:.2f} GB/s heatmaps written")


# ---------------------------------------------------------------------------------------------
# The `paper` preset's training step (model, losses, optimiser), in samples/s and TFLOP/s from
# the analytically counted matmul FLOPs, and the device's own bf16 matmul rate for comparison.


def bench_matmul(device: torch.device | str | None = None, n: int = 8192, iters: int = 20) -> dict[str, Any]:
    """The device's dense matmul rate: n x n @ n x n in bf16 on CUDA (fp32 on CPU), TFLOP/s."""
    dev = choose_device(device)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    for _ in range(3):
        a @ b
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(dev)
    sec = (time.perf_counter() - t0) / iters
    return {"what": "matmul", "device": str(dev), "dtype": str(dt).replace("torch.", ""), "n": n,
            "tflop_per_s": 2 * n ** 3 / sec / 1e12}


def bench_paper_step(batch_size: int | None = None, steps: int | None = None,
                     device: torch.device | str | None = None, warmup: int | None = None,
                     compile: bool = False) -> dict[str, Any]:
    """Time full training steps (forward, the four losses, backward, Adam) of the `paper` preset
    on an SMPL-sized mesh (6890 -> 1723 -> 431) with pre-rendered heatmap windows of 17 joints.

    bf16 autocast on CUDA, fp32 on CPU. Achieved TFLOP/s = 3 x counted forward FLOPs / time.
    ``compile``: run the forward through torch.compile (its compilation happens in the warm-up).
    """
    from mpt_train.losses import Criterion, LossConfig
    from mpt_train.inputs import InputConfig, heatmap_windows
    from mpt_train.model import MeshRegressor, ModelConfig, forward_matmul_flops, num_parameters

    dev = choose_device(device)
    cuda = dev.type == "cuda"
    bs = batch_size or (64 if cuda else 1)
    n_steps = steps or (20 if cuda else 1)
    n_warm = (5 if cuda else 0) if warmup is None else warmup
    cfg = ModelConfig.paper()
    torch.manual_seed(0)
    model = MeshRegressor(cfg).to(dev).train()
    crit = Criterion(LossConfig(), model)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    dt = torch.bfloat16 if cuda else torch.float32
    icfg = InputConfig()
    k = cfg.input_token_dim // (icfg.patch * icfg.patch)
    j2d = synthetic_loader_batch(bs, num_joints=k, num_vertices=1, device=dev)["joints2d"]
    tokens = heatmap_windows(j2d, torch.ones(bs, k, dtype=torch.bool, device=dev), icfg.size, icfg.sigma,
                             icfg.patch, dt)
    nv = cfg.level_sizes[-1]
    targets = {"vertices": torch.randn(bs, nv, 3, device=dev) * 0.3,
               "joints3d": torch.randn(bs, cfg.num_joints, 3, device=dev) * 0.3,
               "joints2d": torch.rand(bs, cfg.num_joints, 2, device=dev) * 2 - 1,
               "visible": torch.ones(bs, cfg.num_joints, dtype=torch.bool, device=dev)}

    net = torch.compile(model) if compile else model

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            pred = net(tokens)
        loss, _ = crit(pred, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(n_warm):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    _sync(dev)
    sec = (time.perf_counter() - t0) / n_steps
    flops = 3 * forward_matmul_flops(cfg, bs, window=(k, tokens.window, icfg.patch))
    return {"what": "paper training step" + (" (torch.compile)" if compile else ""), "device": str(dev), "dtype": str(dt).replace("torch.", ""),
            "batch_size": bs, "steps": n_steps, "parameters": num_parameters(model), "ms_per_step": 1e3 * sec,
            "samples_per_s": bs / sec, "gflop_per_sample": flops / bs / 1e9, "tflop_per_s": flops / sec / 1e12}
