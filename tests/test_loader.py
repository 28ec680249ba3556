"""Store reader and streaming loader: sharding, completeness, order, resume, content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from mpt_data import schema
from mpt_train.data import LoaderConfig, PairLoader, interleave, sample_keys
from mpt_train.store import StoreError, open_store

from store_builds import CAMERAS as N_CAMS, CHUNK


@pytest.fixture
def store(reference_store):
    """The reference store's path as LoaderConfig.shards takes it."""
    return str(reference_store.path)


def _cfg(store, **kw) -> LoaderConfig:
    base = dict(shards=store, batch_size=16, num_workers=0, pin_memory=False, shuffle_buffer_chunks=3)
    base.update(kw)
    return LoaderConfig(**base)


def _pairs(batches) -> list[tuple[int, int]]:
    return [(int(m), int(c)) for b in batches for m, c in zip(b["mesh"], b["camera"])]


def _split_pairs(store, split: str) -> set[tuple[int, int]]:
    sp = zarr.open_group(store, mode="r")[schema.SPLIT][:]
    return {(int(m), c) for m in np.flatnonzero(sp == schema.SPLITS[split]) for c in range(N_CAMS)}


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


# -- store reader -----------------------------------------------------------------------


def test_reader_matches_raw_arrays(store):
    r = open_store(store)
    raw = zarr.open_group(store, mode="r")
    n = raw[schema.SPLIT].shape[0]
    assert (r.num_meshes, r.num_cameras, r.chunk_size, r.num_chunks) == (n, N_CAMS, CHUNK, -(-n // CHUNK))
    assert r.fingerprint == raw.attrs[schema.ATTR_FINGERPRINT] and len(r.fingerprint) == 64
    assert r.joint_sets == ("coco17", "smpl24") and r.num_heatmap_joints == 17
    start = (r.num_chunks - 1) * CHUNK
    last = r.read_chunk(r.num_chunks - 1)  # the last chunk, partial when n is not a multiple of CHUNK
    assert last["mesh"].tolist() == list(range(start, n))
    expect = raw[schema.VERTICES][start:n].astype(np.float64) * schema.VERTEX_SCALE_M
    assert last["vertices"].dtype == np.float32
    np.testing.assert_allclose(last["vertices"], expect, atol=1e-7)
    np.testing.assert_array_equal(last["joints2d"], raw[schema.JOINTS2D][start:n])
    np.testing.assert_array_equal(last["joints/smpl24"], raw[f"{schema.JOINTS_GROUP}/smpl24"][start:n])
    split = raw[schema.SPLIT][:]
    assert set(np.unique(split).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(r.split_counts(1), [np.sum(split[i:i + CHUNK] == 1) for i in range(0, n, CHUNK)])
    topo = r.topology()
    v = r.num_vertices
    assert topo["template"].shape == (v, 3) and topo["level1/up_weight"].shape == (v, 3)
    assert set(r.regressors()) == {"coco17", "smpl24"}
    np.testing.assert_allclose(r.regressors()["smpl24"].sum(1), 1.0, rtol=1e-5)
    assert r.cameras.R.shape == (N_CAMS, 3, 3)
    np.testing.assert_allclose(r.cameras.R @ r.cameras.R.transpose(0, 2, 1), np.tile(np.eye(3), (N_CAMS, 1, 1)), atol=1e-5)
    with pytest.raises(StoreError, match="no joint set 'h36m17'"):
        r.read_chunk(0, joint_sets=("h36m17",))


def test_reader_refuses_unfrozen_and_wrong_schema(unfrozen_store, tmp_path):
    with pytest.raises(StoreError, match="not 'frozen'.*mpt-data freeze"):
        open_store(str(unfrozen_store))
    r = open_store(str(unfrozen_store), allow_unfrozen=True)
    assert r.num_meshes > 0 and r.fingerprint is None
    copy = tmp_path / "copy"
    shutil.copytree(unfrozen_store, copy)
    zarr.open_group(str(copy), mode="r+").attrs[schema.ATTR_SCHEMA] = 99
    with pytest.raises(StoreError, match="schema 99"):
        open_store(str(copy), allow_unfrozen=True)
    with pytest.raises(StoreError, match="no Zarr store|cannot open"):
        open_store(str(tmp_path / "absent"))


# -- sharding and order -----------------------------------------------------------------


def test_ranks_and_workers_disjoint_and_complete(store):
    """2 ranks x 2 real DataLoader workers: every train pair exactly once; each slot reads a contiguous
    span of the epoch's windows, so slots share chunks only in the window on a border between two."""
    seen, chunks_by_slot = [], {}
    for rank in range(2):
        loader = PairLoader(_cfg(store, num_workers=2, rank=rank, world_size=2, drop_last=False))
        batches = list(loader)
        assert len(batches) == loader.num_batches(0)
        plan = loader.dataset.rank_plan(0)
        for (worker, _), b in zip(plan, batches):
            chunks_by_slot.setdefault((rank, worker), set()).update((b["mesh"] // CHUNK).tolist())
        seen += _pairs(batches)
    assert len(seen) == len(set(seen))
    assert set(seen) == _split_pairs(store, "train")
    slots = list(chunks_by_slot.values())
    assert len(slots) == 4
    window = 3  # shuffle_buffer_chunks of _cfg
    assert sum(len(c) for c in slots) <= len(set().union(*slots)) + (len(slots) - 1) * window


def test_drop_last_gives_equal_full_batches_per_rank(store):
    counts, seen = [], []
    for rank in range(2):
        loader = PairLoader(_cfg(store, num_workers=2, rank=rank, world_size=2, batch_size=10))
        batches = list(loader)
        assert all(len(b["mesh"]) == 10 for b in batches)
        counts.append(len(batches))
        seen += _pairs(batches)
    assert counts[0] == counts[1] > 0
    assert len(seen) == len(set(seen)) and set(seen) <= _split_pairs(store, "train")


def test_order_is_function_of_seed_and_epoch(store):
    a = PairLoader(_cfg(store, drop_last=False))
    e0, e1 = _pairs(list(a)), _pairs(list(a))  # iteration advances the epoch
    b = PairLoader(_cfg(store, drop_last=False))
    b.set_epoch(1)
    assert _pairs(list(b)) == e1
    assert e0 != e1 and sorted(e0) == sorted(e1)
    c = PairLoader(_cfg(store, drop_last=False, seed=7))
    assert _pairs(list(c)) != e0
    # the shuffle mixes pairs across the chunks of a window, not just chunk order
    meshes = [m for m, _ in e0]
    assert any(abs(meshes[i + 1] // CHUNK - meshes[i] // CHUNK) > 0 for i in range(20))


def test_resume_mid_epoch_gives_the_same_next_batches(store):
    cfg = _cfg(store, num_workers=2, batch_size=12)
    full = PairLoader(cfg)
    ref = list(full) + list(full)  # two epochs
    n0 = full.num_batches(0)
    for stop in (3, n0 + 2):  # inside epoch 0 and inside epoch 1
        first = PairLoader(cfg)
        got = []
        it = iter(first)
        for _ in range(stop):
            if len(got) == n0:
                it = iter(first)  # the epoch ended: start the next one
            got.append(next(it))
        state = first.state_dict()
        assert (state["epoch"], state["batches_done"]) == ((0, stop) if stop < n0 else (1, stop - n0))
        resumed = PairLoader(cfg)
        resumed.load_state_dict(state)
        rest = list(resumed)
        if stop < n0:
            rest += list(resumed)
        _same(got + rest, ref)


def test_loader_leaves_the_global_rng_alone(store):
    """Starting and running an epoch (workers too) draws nothing from the global torch RNG, so a
    resumed process, which starts a loader where the uninterrupted one did not, stays in step."""
    for workers in (0, 2):
        loader = PairLoader(_cfg(store, num_workers=workers))
        torch.manual_seed(5)
        before = torch.get_rng_state()
        assert len(list(loader)) == loader.num_batches(0) > 0
        assert torch.equal(torch.get_rng_state(), before), workers


def test_resume_refuses_other_layout_or_store(unfrozen_store, store):
    state = PairLoader(_cfg(store, batch_size=16)).state_dict()
    with pytest.raises(ValueError, match="per-rank batch of 8 on 1 rank.*change the global batch of 16"):
        PairLoader(_cfg(store, batch_size=8)).load_state_dict(state)
    other = PairLoader(_cfg(str(unfrozen_store), batch_size=16, allow_unfrozen=True))
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_state_dict(state)
    other.load_state_dict(state, allow_other_store=True)  # --force
    assert (other.epoch, other.batches_done) == (state["epoch"], state["batches_done"])
    with pytest.raises(ValueError, match="version"):
        PairLoader(_cfg(store)).load_state_dict({**state, "version": 0})


# -- content ------------------------------------------------------------------------------


def test_batch_content_matches_store(store):
    raw = zarr.open_group(store, mode="r")
    loader = PairLoader(_cfg(store, cameras=(2, 0), extra_joint_sets=("smpl24",), split="test", batch_size=64, drop_last=False))
    batches = list(loader)
    assert len(batches) == 1
    b = batches[0]
    m, c = b["mesh"].numpy(), b["camera"].numpy()
    assert set(c.tolist()) <= {0, 2}
    np.testing.assert_array_equal(b["joints2d"].numpy(), raw[schema.JOINTS2D][:][m, c])
    np.testing.assert_array_equal(b["visible"].numpy(), raw[schema.VISIBLE][:][m, c])
    np.testing.assert_array_equal(b["joints3d"].numpy(), raw[f"{schema.JOINTS_GROUP}/coco17"][:][m])
    np.testing.assert_array_equal(b["joints3d_smpl24"].numpy(), raw[f"{schema.JOINTS_GROUP}/smpl24"][:][m])
    np.testing.assert_allclose(b["vertices"].numpy(), raw[schema.VERTICES][:][m] * schema.VERTEX_SCALE_M, atol=1e-7)
    np.testing.assert_array_equal(b["camera_R"].numpy(), raw[schema.CAMERA_R][:][c])
    assert b["vertices"].dtype == torch.float32 and b["visible"].dtype == torch.bool
    np.testing.assert_array_equal(b["key"].numpy(), sample_keys(0, 0, m * N_CAMS + c))
    assert (raw[schema.SPLIT][:][m] == schema.SPLITS["test"]).all()


def test_keys_depend_on_pair_and_epoch_only():
    k = sample_keys(3, 0, np.arange(1000))
    assert len(set(k.tolist())) == 1000 and (k >= 0).all()
    np.testing.assert_array_equal(sample_keys(3, 0, np.array([17, 5])), k[[17, 5]])
    assert not np.intersect1d(sample_keys(3, 1, np.arange(1000)), k).size


def test_val_pass_finite_deterministic_complete(store):
    cfg = _cfg(store, num_workers=2, batch_size=7).for_eval("val")
    loader = PairLoader(cfg)
    a, b = list(loader), list(loader)
    _same(a, b)  # epochs do not change an unshuffled pass
    pairs = _pairs(a)
    assert len(pairs) == len(set(pairs)) and set(pairs) == _split_pairs(store, "val")
    assert len(a) == loader.num_batches(0) and any(len(x["mesh"]) < 7 for x in a)  # partial batches kept


def test_interleave_is_dataloader_round_robin():
    assert interleave([2, 0, 3]) == [(0, 0), (2, 0), (0, 1), (2, 1), (2, 2)]


def test_clear_errors_for_impossible_requests(store):
    with pytest.raises(ValueError, match="no batch of 100000"):
        list(PairLoader(_cfg(store, batch_size=100000)))
    with pytest.raises(ValueError, match="joint set 'h36m17' not in the store"):
        PairLoader(_cfg(store, joint_set="h36m17"))
    with pytest.raises(ValueError, match="cameras"):
        PairLoader(_cfg(store, cameras=(0, 9)))
    big_eval = PairLoader(_cfg(store, batch_size=100000).for_eval("val"))
    assert sum(len(b["key"]) for b in big_eval) == len(_split_pairs(store, "val"))


def test_empty_split_streams_nothing(unfrozen_store):
    # the unfrozen store was built without the test subset
    cfg = _cfg(str(unfrozen_store), allow_unfrozen=True, split="test")
    assert PairLoader(cfg.for_eval("test")).num_batches() == 0
    assert list(PairLoader(cfg.for_eval("test"))) == []
    with pytest.raises(ValueError, match="'test': 0"):
        list(PairLoader(cfg))


def test_fsspec_url_streams_the_same_batches_as_the_path(store):
    # A store named by URL goes through zarr's fsspec store; worker processes re-open it by URL.
    url = Path(store).resolve().as_uri()
    assert url.startswith("file://")
    by_url_reader, by_path_reader = open_store(url), open_store(store)
    assert (by_url_reader.fingerprint, by_url_reader.num_meshes) == (by_path_reader.fingerprint, by_path_reader.num_meshes)
    by_path = list(PairLoader(_cfg(store, num_workers=1)))
    by_url = list(PairLoader(_cfg(url, num_workers=1)))
    assert len(by_path) > 1
    _same(by_url, by_path)
    with pytest.raises(StoreError, match="memory://nothing-here"):
        open_store("memory://nothing-here")
