"""Elastic resume: a run checkpointed on W ranks x K loader workers goes on with W' x K' and the
epoch still consumes each of its pairs exactly once, the global batch kept.

Three levels: the pure partition functions (any chain of layouts, checked against the sets they
must produce, not against a second implementation), the store loader (ranks simulated by
``rank``/``world_size``, real DataLoader workers) and real training runs (2 gloo ranks -> 1 and
1 -> 2) that record every (mesh, camera) pair each step trained on.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import zarr

from mpt_data import schema
from mpt_train.checkpoint import CheckpointError
from mpt_train.data import LoaderConfig, PairLoader
from mpt_train.order import (Layout, Segment, consumed_spans, remainder, resumed_batch_size, size, take,
                             train_spans, window_offsets, window_pieces)

from store_builds import CAMERAS as N_CAMS

sys.path.insert(0, str(Path(__file__).parent))


# -- the partition, as pure functions ----------------------------------------------------------


def _positions(intervals: np.ndarray) -> list[int]:
    return [p for a, b in intervals.tolist() for p in range(a, b)]


def test_take_and_window_pieces_on_a_hand_made_sequence():
    iv = np.array([[2, 5], [9, 12], [20, 21]])
    assert _positions(take(iv, 1, 5)) == [3, 4, 9, 10]
    assert _positions(take(iv, 0, 7)) == [2, 3, 4, 9, 10, 11, 20]
    offsets = window_offsets(np.array([3, 3, 4, 1]), 2)  # windows of 2 chunks: 6 and 5 pairs
    assert offsets.tolist() == [0, 6, 11]
    assert window_pieces(np.array([[4, 8], [10, 11]]), offsets) == [(0, 4, 6), (1, 0, 2), (1, 4, 5)]


def _chain_consumption(n: int, chain: list[tuple[Layout, int]]) -> list[list[int]]:
    """Positions each step took (all ranks) through a chain of (layout, batches) segments, the last
    one run to the end of the epoch; checks as it goes that each slot reads one contiguous run of
    its segment's remainder and that every rank takes a full batch every step."""
    steps, earlier = [], ()
    for i, (lay, batches) in enumerate(chain):
        rest = remainder(n, earlier)
        per_rank, spans = train_spans(size(rest), lay)
        if i == len(chain) - 1:
            batches = per_rank
        for s in range(batches):
            k = s % lay.num_workers
            got = []
            for r in range(lay.world_size):
                lo = int(spans[r * lay.num_workers + k, 0]) + (s // lay.num_workers) * lay.batch_size
                got += _positions(take(rest, lo, lo + lay.batch_size))
            assert len(got) == lay.global_batch
            steps.append(got)
        used = consumed_spans(size(rest), Segment(lay, batches))
        assert (used[:, 0] == spans[:, 0]).all() and (used[:, 1] <= spans[:, 1]).all()
        earlier = (*earlier, Segment(lay, batches))
    return steps


@pytest.mark.parametrize("n", [312, 301, 96])
def test_any_chain_of_layouts_consumes_the_same_pairs_once(n):
    g = 24
    layouts = [Layout(w, k, g // w) for w in (1, 2, 3, 4, 6) for k in (1, 2, 3)]
    rng = np.random.default_rng(n)
    whole = set(range((n // g) * g))  # the first (N // G) G positions of the epoch order
    for _ in range(25):
        chain = [(layouts[i], 0) for i in rng.choice(len(layouts), size=int(rng.integers(1, 5)))]
        left = n // g
        for j in range(len(chain) - 1):  # stop each segment but the last somewhere in the epoch
            b = int(rng.integers(0, left + 1))
            chain[j] = (chain[j][0], b)
            left -= b
        steps = _chain_consumption(n, chain)
        seen = [p for step in steps for p in step]
        assert len(steps) == n // g
        assert len(seen) == len(set(seen)) and set(seen) == whole, [(lay, b) for lay, b in chain]


def test_one_layout_is_one_segment_and_a_stop_changes_nothing():
    """Stopping and going on with the same layout is the uninterrupted order, batch for batch."""
    lay = Layout(2, 3, 4)
    uninterrupted = _chain_consumption(200, [(lay, 0)])
    rest = remainder(200, (Segment(lay, 5),))
    # the same layout continuing: slot prefixes of 5 rank batches are gone, the rest is unchanged
    assert size(rest) == 200 - 5 * lay.global_batch
    assert set(_positions(rest)) == set(range(200)) - {p for s in uninterrupted[:5] for p in s}


def test_resumed_batch_size_keeps_the_global_batch():
    assert resumed_batch_size(2, 8, 1, 8) == 16  # the original run's flags: adjusted
    assert resumed_batch_size(2, 8, 4, 4) == 4  # the right per-rank batch given
    assert resumed_batch_size(2, 8, 2, 8) == 8
    with pytest.raises(ValueError, match=r"global batch of 16 pairs \(2 rank\(s\) x 8\) does not divide over 3 "
                                         r"ranks; resume on one of \[1, 2, 4, 8, 16\]"):
        resumed_batch_size(2, 8, 3, 8)
    with pytest.raises(ValueError, match="per-rank batch of 32 on 1 rank.*would change the global batch of 16.*give 16"):
        resumed_batch_size(2, 8, 1, 32)


# -- the store loader ----------------------------------------------------------------------------


@pytest.fixture
def store(reference_store):
    return str(reference_store.path)


def _cfg(store, **kw) -> LoaderConfig:
    base = dict(shards=store, num_workers=0, pin_memory=False, shuffle_buffer_chunks=2)
    base.update(kw)
    return LoaderConfig(**base)


def _train_pairs(store) -> set[tuple[int, int]]:
    sp = zarr.open_group(store, mode="r")[schema.SPLIT][:]
    return {(int(m), c) for m in np.flatnonzero(sp == schema.SPLITS["train"]) for c in range(N_CAMS)}


def _pairs(batch) -> list[tuple[int, int]]:
    return [(int(m), int(c)) for m, c in zip(batch["mesh"], batch["camera"])]


def _run(store, world: int, workers: int, batch: int, steps: int | None = None, states: list | None = None):
    """Steps of `world` simulated ranks (each rank a loader; ranks step together): the pairs of each
    step (all ranks) and each rank's state after the last one. `states`: rank 0's state to resume from
    on every rank (as the trainer does), or None for a fresh epoch."""
    loaders = [PairLoader(_cfg(store, num_workers=workers, batch_size=batch, rank=r, world_size=world))
               for r in range(world)]
    for loader in loaders:
        if states is not None:
            loader.load_state_dict(states[0])
    epoch = loaders[0].epoch
    its = [iter(loader) for loader in loaders]
    out = []
    for _ in range(loaders[0].num_batches() - loaders[0].batches_done if steps is None else steps):
        out.append([p for it in its for p in _pairs(next(it))])
    for loader in loaders:
        assert loader.epoch == epoch  # (the steps stay inside the epoch)
    return out, [loader.state_dict() for loader in loaders], loaders


@pytest.mark.parametrize("before, after", [((2, 2, 12), (1, 0, 24)), ((1, 2, 24), (2, 0, 12)),
                                           ((1, 2, 24), (1, 1, 24)), ((2, 0, 12), (3, 2, 8))])
def test_loader_resumed_on_other_ranks_and_workers_sees_every_pair_once(store, before, after):
    """(ranks, workers, per-rank batch) before -> after, global batch 24: 312 train pairs = 13 steps."""
    first, states, _ = _run(store, *before, steps=5)
    assert len({json.dumps(s["earlier"]) for s in states}) == 1 and states[0]["batches_done"] == 5
    rest, _, loaders = _run(store, *after, states=states)
    assert len(rest) == 8 and all(len(s) == 24 for s in first + rest)
    seen = [p for step in first + rest for p in step]
    assert len(seen) == len(set(seen)) and set(seen) == _train_pairs(store)
    # the resumed state carries the first layout's segment; the next epoch starts on the new layout alone
    assert loaders[0].state_dict()["earlier"] == [[before[0], max(before[1], 1), before[2], 5]]
    nxt = list(loaders[0])
    assert loaders[0].earlier == () and len(nxt) == 312 // 24


def test_loader_resume_keeps_the_epoch_set_when_the_batch_does_not_divide_it(store):
    """Global batch 20: 15 steps of 312 pairs; the 12 left over are the same ones whatever the layouts."""
    full, _, _ = _run(store, 1, 0, 20)
    first, states, _ = _run(store, 2, 2, 10, steps=6)
    rest, _, _ = _run(store, 4, 1, 5, states=states)
    assert len(full) == 15 and len(first) + len(rest) == 15
    seen = [p for step in first + rest for p in step]
    assert len(seen) == len(set(seen)) == 300 and set(seen) == {p for step in full for p in step}
    # a second stop, on the same layout: the resumed segment goes on batch for batch
    part, states, _ = _run(store, 4, 1, 5, steps=3, states=states)
    tail, _, _ = _run(store, 4, 1, 5, states=states)
    assert part + tail == rest


def test_loader_refuses_an_elastic_resume_it_cannot_make_exact(store):
    state = PairLoader(_cfg(store, batch_size=12, rank=0, world_size=2)).state_dict()
    with pytest.raises(ValueError, match=r"global batch of 24 pairs \(2 rank\(s\) x 12\) does not divide over 5"):
        PairLoader(_cfg(store, batch_size=12, rank=0, world_size=5)).load_state_dict(state)
    with pytest.raises(ValueError, match="per-rank batch of 6 on 1 rank.*give 24"):
        PairLoader(_cfg(store, batch_size=6)).load_state_dict(state)
    adjusted = PairLoader(_cfg(store, batch_size=12))  # the original run's per-rank batch: takes the global one
    adjusted.load_state_dict(state)
    assert adjusted.batch_size == 24 and len(next(iter(adjusted))["mesh"]) == 24
    evaluation = PairLoader(_cfg(store, batch_size=12, rank=0, world_size=2).for_eval("train")).state_dict()
    with pytest.raises(ValueError, match="keeps partial batches resumes only on the same ranks and workers"):
        PairLoader(_cfg(store, batch_size=12).for_eval("train")).load_state_dict(evaluation)
    with pytest.raises(ValueError, match="shuffle_buffer_chunks=2 vs 3"):
        PairLoader(_cfg(store, batch_size=24, shuffle_buffer_chunks=3)).load_state_dict(state)
    with pytest.raises(ValueError, match="version 1 states follow an earlier data order"):
        PairLoader(_cfg(store, batch_size=24)).load_state_dict({**state, "version": 1})


# -- real training runs over gloo ------------------------------------------------------------------

STEPS_PER_EPOCH = 13  # 78 train meshes seen by camera 0, a global batch of 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(store: str, out: str, steps: int, per_rank: int, resume: bool, tag: str, rank: int = 0) -> None:
    """A tiny pre-training run that writes the (mesh, camera) pairs of every training step to
    `out/seen-<tag>-<rank>.json`."""
    from mpt_train.inputs import InputConfig
    from mpt_train.losses import LossConfig
    from mpt_train.model import ModelConfig
    from mpt_train.pretrain import build_pretrain_task
    from mpt_train.trainer import TrainConfig, train

    cfg = TrainConfig(out=out, steps=steps, batch_size=per_rank, lr=2e-3, log_every=1, checkpoint_every=5,
                      val_every=0, val_batches=1, progress=False, device="cpu")
    task = build_pretrain_task(cfg, ModelConfig.tiny(layers_per_block=1), InputConfig(patch=28), LossConfig(),
                               LoaderConfig(shards=store, num_workers=0, cameras=(0,)))
    seen, prepare = [], task.prepare

    def recording(batch, is_train):
        if is_train:
            seen.append(_pairs(batch))
        return prepare(batch, is_train)

    task.prepare = recording
    train(cfg, task, resume=resume)
    Path(out, f"seen-{tag}-{rank}.json").write_text(json.dumps(seen))


def _rank(rank: int, world: int, port: int, store: str, out: str, steps: int, per_rank: int, resume: bool,
          tag: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from mpt_train.runtime import cleanup_distributed

    try:
        _train(store, out, steps, per_rank, resume, tag, rank)
    finally:
        cleanup_distributed()


def _gloo(world: int, store: str, out: Path, steps: int, per_rank: int, resume: bool, tag: str) -> None:
    mp.spawn(_rank, args=(world, _free_port(), store, str(out), steps, per_rank, resume, tag), nprocs=world,
             join=True)


def _seen(out: Path) -> list[tuple[int, int]]:
    """Every pair the run's steps trained on, all phases and ranks."""
    return [tuple(p) for f in sorted(out.glob("seen-*.json")) for step in json.loads(f.read_text()) for p in step]


def _epoch_pairs(store: str) -> set[tuple[int, int]]:
    sp = zarr.open_group(store, mode="r")[schema.SPLIT][:]
    return {(int(m), 0) for m in np.flatnonzero(sp == schema.SPLITS["train"])}


def _steps(out: Path) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "train"]


@pytest.mark.slow
def test_two_gloo_ranks_checkpointed_mid_epoch_resume_on_one(store, tmp_path, capfd):
    """2 ranks x 3 stop after 5 of 13 steps (a checkpoint mid-epoch); 1 rank x 6 finishes the epoch."""
    _gloo(2, store, tmp_path, steps=5, per_rank=3, resume=False, tag="a")
    with pytest.raises(CheckpointError, match=r"step-00000005: a per-rank batch of 4 on 1 rank.*give 6"):
        _train(store, str(tmp_path), STEPS_PER_EPOCH, per_rank=4, resume=True, tag="x")
    _train(store, str(tmp_path), STEPS_PER_EPOCH, per_rank=3, resume=True, tag="b")  # the original flags
    assert "resuming on 1 x 6 (the same global batch)" in capfd.readouterr().err
    seen = _seen(tmp_path)
    assert len(seen) == len(set(seen)) == 78 and set(seen) == _epoch_pairs(store)
    recs = _steps(tmp_path)
    assert [r["step"] for r in recs] == list(range(1, STEPS_PER_EPOCH + 1)) and recs[-1]["samples"] == 78
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (cfg["world_size"], cfg["train"]["batch_size"]) == (1, 6)


@pytest.mark.slow
def test_one_rank_checkpointed_mid_epoch_resumes_on_two_gloo_ranks(store, tmp_path):
    """1 rank x 6 stops after 5 of 13 steps; 2 gloo ranks x 3 (rank 1 new to the run) finish the epoch."""
    _train(store, str(tmp_path), 5, per_rank=6, resume=False, tag="a")
    _gloo(2, store, tmp_path, steps=STEPS_PER_EPOCH, per_rank=3, resume=True, tag="b")
    seen = _seen(tmp_path)
    assert len(seen) == len(set(seen)) == 78 and set(seen) == _epoch_pairs(store)
    per_rank = [json.loads((tmp_path / f"seen-b-{r}.json").read_text()) for r in (0, 1)]
    assert [len(s) for s in per_rank] == [8, 8] and all(len(b) == 3 for s in per_rank for b in s)
    recs = _steps(tmp_path)
    assert [r["step"] for r in recs] == list(range(1, STEPS_PER_EPOCH + 1)) and recs[-1]["samples"] == 78
