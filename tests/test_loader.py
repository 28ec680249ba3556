"""Store reader and streaming loader: sharding, completeness, order, resume, content."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from mpt_data import schema
from mpt_train.data import LoaderConfig, PairLoader, interleave, sample_keys
from mpt_train.store import StoreError, open_store

from _helpers_c1 import write_test_store

N_MESHES, N_CAMS, CHUNK = 150, 3, 8


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return str(write_test_store(tmp_path_factory.mktemp("c1") / "store", N_MESHES, N_CAMS, chunk=CHUNK))


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
    assert (r.num_meshes, r.num_cameras, r.chunk_size, r.num_chunks) == (N_MESHES, N_CAMS, CHUNK, 19)
    assert r.fingerprint == f"test-0-{N_MESHES}" and r.joint_sets == ("coco17", "smpl24")
    last = r.read_chunk(r.num_chunks - 1)  # the partial last chunk
    assert last["mesh"].tolist() == list(range(144, 150))
    expect = raw[schema.VERTICES][144:150].astype(np.float64) * schema.VERTEX_SCALE_M
    assert last["vertices"].dtype == np.float32
    np.testing.assert_allclose(last["vertices"], expect, atol=1e-7)
    np.testing.assert_array_equal(last["joints2d"], raw[schema.JOINTS2D][144:150])
    np.testing.assert_array_equal(last["joints/smpl24"], raw[f"{schema.JOINTS_GROUP}/smpl24"][144:150])
    np.testing.assert_array_equal(r.split_counts(1), [np.sum(raw[schema.SPLIT][i:i + CHUNK] == 1) for i in range(0, N_MESHES, CHUNK)])
    topo = r.topology()
    assert topo["level1/up_weight"].shape == (40, 3) and set(r.regressors()) == {"coco17", "smpl24"}
    np.testing.assert_allclose(r.regressors()["coco17"].sum(1), 1.0, rtol=1e-5)
    assert r.cameras.R.shape == (N_CAMS, 3, 3)
    with pytest.raises(StoreError, match="no joint set 'h36m17'"):
        r.read_chunk(0, joint_sets=("h36m17",))


def test_reader_refuses_unfrozen_and_wrong_schema(tmp_path):
    path = write_test_store(tmp_path / "building", 20, 2, state="building")
    with pytest.raises(StoreError, match="not 'frozen'.*mpt-data freeze"):
        open_store(str(path))
    assert open_store(str(path), allow_unfrozen=True).num_meshes == 20
    zarr.open_group(str(path), mode="r+").attrs[schema.ATTR_SCHEMA] = 99
    with pytest.raises(StoreError, match="schema 99"):
        open_store(str(path), allow_unfrozen=True)
    with pytest.raises(StoreError, match="no Zarr store|cannot open"):
        open_store(str(tmp_path / "absent"))


# -- sharding and order -----------------------------------------------------------------


def test_ranks_and_workers_disjoint_and_complete(store):
    """2 ranks x 2 real DataLoader workers: every train pair exactly once, chunks disjoint."""
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
    for i in range(4):
        for j in range(i + 1, 4):
            assert not slots[i] & slots[j]


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


def test_resume_refuses_other_layout_or_store(store, tmp_path):
    state = PairLoader(_cfg(store, batch_size=16)).state_dict()
    with pytest.raises(ValueError, match="batch_size=16 vs 8"):
        PairLoader(_cfg(store, batch_size=8)).load_state_dict(state)
    other = write_test_store(tmp_path / "other", 60, N_CAMS, chunk=CHUNK, seed=1)
    with pytest.raises(ValueError, match="fingerprint"):
        PairLoader(_cfg(str(other), batch_size=16)).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        PairLoader(_cfg(store)).load_state_dict({**state, "version": 0})


# -- content ------------------------------------------------------------------------------


def test_batch_content_matches_store(store):
    raw = zarr.open_group(store, mode="r")
    loader = PairLoader(_cfg(store, cameras=(2, 0), extra_joint_sets=("smpl24",), split="test"))
    batches = list(loader)
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
