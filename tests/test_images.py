"""`mpt-data images` ingestion (bad input skipped or refused) and the mixture image stream."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from mpt_data.conventions import COCO_JOINTS, SPIN_JOINTS
from mpt_data.images import AnnotationError, ImagesConfig, ingest
from mpt_train.augment import AugmentConfig
from mpt_train.images import ImageBatches, ImageStream, read_mixture


def _spin_dataset(root, n=12, size=96, bad=True, with_3d=True, seed=0):
    """A small SPIN-format dataset; with ``bad`` rows 0-3 are broken in four different ways."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    names, centers = [], []
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        name = f"im{i:03d}.jpg"
        cv2.imwrite(str(img_dir / name), img)
        names.append(name)
        centers.append([size / 2, size / 2])
    part = np.zeros((n, 24, 3), np.float32)
    part[:, :, :2] = rng.uniform(20, 76, (n, 24, 2))
    part[:, :, 2] = 1
    data = dict(imgname=np.array(names), center=np.array(centers, np.float32),
                scale=np.full(n, 0.3, np.float32), part=part)
    if with_3d:
        s = np.zeros((n, 24, 4), np.float32)
        s[:, :, :3] = rng.normal(0, 0.3, (n, 24, 3))
        s[:, :, 2] += 4.0
        s[:, :, 3] = 1
        data["S"] = s
    if bad:
        (img_dir / names[0]).unlink()  # missing image
        (img_dir / names[1]).write_bytes(b"not a jpeg")  # corrupt image
        data["center"][2] = [-500, -500]  # box outside the image
        data["part"][3, 5, 0] = np.nan  # non-finite label
    npz = root / "ds.npz"
    np.savez(npz, **data)
    return npz, img_dir, data


def test_ingest_writes_crops_and_labels_and_counts_skips(tmp_path):
    npz, img_dir, data = _spin_dataset(tmp_path)
    cfg = ImagesConfig(str(npz), str(img_dir), str(tmp_path / "out"), dataset="toy", context=1.5, crop_px=90,
                       rows_per_shard=5, rows_per_group=2)
    summary = ingest(cfg)
    assert summary.skipped == {"missing image": 1, "corrupt image": 1, "box outside the image": 1,
                               "non-finite or non-positive label": 1}
    assert summary.written == 8 and len(summary.shards) == 2
    saved = json.loads((tmp_path / "out" / "toy" / "summary.json").read_text())
    assert saved["written"] == 8

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "toy" / "part-00000.parquet")
    row = table.slice(0, 1).to_pylist()[0]
    i = row["index"]
    assert i == 4
    # crop: side 200 * 0.3 * 1.5 = 90 px around the centre (48, 48) -> scale 1, offset 3
    x0, y0, side = row["crop_box"]
    assert np.allclose([x0, y0, side], [3, 3, 90])
    j2 = np.asarray(row["joints2d"]).reshape(17, 3)
    lw = SPIN_JOINTS.index("left_wrist")
    assert np.allclose(j2[COCO_JOINTS.index("left_wrist"), :2], data["part"][i, lw, :2] - 3, atol=1e-4)
    j3 = np.asarray(row["joints3d"]).reshape(17, 4)
    assert np.allclose(j3[COCO_JOINTS.index("left_wrist"), :3], data["S"][i, lw, :3])
    crop = cv2.imdecode(np.frombuffer(row["jpeg"], np.uint8), cv2.IMREAD_COLOR)
    src = cv2.imread(str(img_dir / row["imgname"]))
    assert crop.shape == (90, 90, 3)
    assert np.abs(crop[10:80, 10:80].astype(int) - src[13:83, 13:83].astype(int)).mean() < 12  # JPEG twice


def test_ingest_refuses_arrays_of_different_lengths_and_missing_keys(tmp_path):
    npz, img_dir, data = _spin_dataset(tmp_path, bad=False)
    bad = dict(data)
    bad["scale"] = bad["scale"][:-1]
    np.savez(tmp_path / "short.npz", **bad)
    with pytest.raises(AnnotationError, match="disagree in length.*scale"):
        ingest(ImagesConfig(str(tmp_path / "short.npz"), str(img_dir), str(tmp_path / "o")))
    nokey = {k: v for k, v in data.items() if k != "center"}
    np.savez(tmp_path / "nokey.npz", **nokey)
    with pytest.raises(AnnotationError, match="missing required key 'center'"):
        ingest(ImagesConfig(str(tmp_path / "nokey.npz"), str(img_dir), str(tmp_path / "o")))
    (tmp_path / "trunc.npz").write_bytes(npz.read_bytes()[:100])
    with pytest.raises(AnnotationError, match="trunc.npz"):
        ingest(ImagesConfig(str(tmp_path / "trunc.npz"), str(img_dir), str(tmp_path / "o")))


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for k, (n, with_3d) in enumerate([(14, True), (9, False)]):
        d = root / f"d{k}"
        npz, img_dir, _ = _spin_dataset(d, n=n, bad=False, with_3d=with_3d, seed=k)
        ingest(ImagesConfig(str(npz), str(img_dir), str(root / "shards"), dataset=f"d{k}", context=1.5, crop_px=64,
                            rows_per_shard=8, rows_per_group=3))
    (root / "mix.yaml").write_text("seed: 3\ndatasets:\n  - {name: d0, shards: shards/d0, weight: 2}\n"
                                   "  - {name: d1, shards: shards/d1, weight: 1}\n")
    return root


def _keys(stream, slot, slots, n, start=0):
    it = stream.samples(slot, slots, start)
    return [(int(s["dataset"]), float(s["joints2d"][0, 0])) for s in (next(it) for _ in range(n))]


def test_stream_slots_are_disjoint_within_a_pass_and_complete(two_datasets):
    cfg = read_mixture(two_datasets / "mix.yaml", augment=AugmentConfig(enabled=False), num_vertices=5)
    stream = ImageStream(cfg)
    # 2 ranks x 2 workers: one pass over d0's 5 row groups (14 rows) splits among 4 slots
    seen = []
    for slot in range(4):
        units = [stream._unit(0, slot, 4, t) for t in range(2) if slot + 4 * t < 5]
        seen += units
    assert sorted(seen) == list(range(5))
    s = next(iter(stream.samples(0, 4)))
    assert s["image"].shape == (3, 224, 224) and s["vertices"].shape == (5, 3)
    assert s["image"].dtype == torch.float32 and 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1


def test_stream_resume_continues_exactly_and_labels_masks(two_datasets):
    cfg = read_mixture(two_datasets / "mix.yaml", num_vertices=5)
    a = ImageStream(cfg)
    full = _keys(a, 1, 2, 30)
    resumed = _keys(ImageStream(cfg), 1, 2, 10, start=20)
    assert resumed == full[20:]
    assert {d for d, _ in full} == {0, 1}
    it = a.samples(0, 1)
    for s in (next(it) for _ in range(20)):
        assert bool(s["has_joints3d"]) == (int(s["dataset"]) == 0)
        assert not bool(s["has_vertices"])

    batches = ImageBatches(ImageStream(cfg), batch_size=4)
    it = iter(batches)
    first = [next(it) for _ in range(3)]
    state = batches.state_dict()
    nxt = next(it)
    again = ImageBatches(ImageStream(cfg), batch_size=4)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))["image"], nxt["image"])
    assert first[0]["joints2d"].shape == (4, 17, 2)


def test_image_batches_leave_the_global_rng_alone(two_datasets):
    """Starting the image loader (workers too) draws nothing from the global torch RNG, so a resumed
    fine-tuning process, which starts a loader where the uninterrupted one did not, stays in step."""
    cfg = read_mixture(two_datasets / "mix.yaml", num_vertices=5)
    for workers in (0, 2):
        batches = ImageBatches(ImageStream(cfg), batch_size=4, num_workers=workers)
        torch.manual_seed(5)
        before = torch.get_rng_state()
        it = iter(batches)
        assert next(it)["image"].shape[0] == 4
        del it
        assert torch.equal(torch.get_rng_state(), before), workers


def test_fraction_keeps_that_share_of_rows_not_of_row_groups(two_datasets):
    from mpt_train.images import keep_units

    cfg = read_mixture(two_datasets / "mix.yaml", augment=AugmentConfig(enabled=False), num_vertices=5)
    full = ImageStream(cfg)
    everything = {(int(s["dataset"]), float(s["joints2d"][0, 0])) for s in
                  (next(it) for it in [iter(full.samples(0, 1))] for _ in range(60))}
    stream = ImageStream(cfg)
    keep_units(stream, 0.2, seed=0)
    # d0: 14 rows in groups of 3 → round(2.8) = 3 rows; d1: 9 rows → round(1.8) = 2 (not 1 group each)
    assert [sum(r for _, _, r in ds.units) for ds in stream.datasets] == [3, 2]
    seen = _keys(stream, 0, 1, 60)
    per = {d: {x for dd, x in seen if dd == d} for d in (0, 1)}
    assert len(per[0]) == 3 and len(per[1]) == 2  # every sample comes from the kept rows, all of them used
    assert set(seen) <= everything
    again = ImageStream(cfg)
    keep_units(again, 0.2, seed=0)
    assert _keys(again, 0, 1, 60) == seen  # seeded: the same subset and order
    with pytest.raises(ValueError, match="fraction"):
        keep_units(ImageStream(cfg), 0.0, seed=0)


@pytest.fixture(scope="module")
def bad_row_mixture(tmp_path_factory):
    """One dataset of 10 rows (row groups of 3) where file row 4 holds a truncated JPEG and row 7
    bytes OpenCV refuses (with a valid end marker): the stream must skip both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("badrows")
    npz, img_dir, _ = _spin_dataset(root / "src", n=10, bad=False, seed=5)
    ingest(ImagesConfig(str(npz), str(img_dir), str(root / "shards"), dataset="b", crop_px=48, rows_per_group=3))
    shard = root / "shards" / "b" / "part-00000.parquet"
    table = pq.read_table(shard)
    jpegs = table.column("jpeg").to_pylist()
    jpegs[4] = jpegs[4][: len(jpegs[4]) // 2]
    jpegs[7] = b"\xff\xd8 not image data \xff\xd9"
    table = table.set_column(table.schema.get_field_index("jpeg"), "jpeg",
                             pa.array(jpegs, type=table.schema.field("jpeg").type))
    pq.write_table(table, shard, row_group_size=3)
    (root / "mix.yaml").write_text("seed: 1\ndatasets:\n  - {name: b, shards: shards/b, weight: 1}\n")
    bad_x = {float(np.asarray(table.column("joints2d")[i].as_py())[0]) for i in (4, 7)}
    return root, str(shard), bad_x


def test_stream_skips_undecodable_rows_names_and_counts_them_and_resumes_exactly(bad_row_mixture):
    import warnings

    from mpt_train.images import ImageEvalBatches
    from mpt_train.images import BadRowWarning

    root, shard, bad_x = bad_row_mixture
    cfg = read_mixture(root / "mix.yaml", augment=AugmentConfig(enabled=False), num_vertices=5)
    stream = ImageStream(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        it = stream.samples(0, 1)
        full = [next(it) for _ in range(20)]  # 2.5 passes over the 8 good rows
    msgs = [str(w.message) for w in caught if issubclass(w.category, BadRowWarning)]
    assert sorted(m.split("; ")[0] for m in msgs) == [
        f"{shard}: row 4 (key b/4) skipped: JPEG without its end-of-image marker (truncated)",
        f"{shard}: row 7 (key b/7) skipped: OpenCV cannot decode the JPEG"]
    assert all(m.endswith("bad row(s) skipped so far by this reader") for m in msgs)
    assert len(msgs) == 2  # once per bad row, not once per pass
    xs = [float(s["joints2d"][0, 0]) for s in full]
    assert not bad_x & set(xs) and len(set(xs[:8])) == 8  # each pass: the 8 good rows, never a bad one
    counts = [int(s["skipped_rows"][0]) for s in full]
    assert counts == sorted(counts) and counts[7] == 2 and 4 <= counts[-1] <= 6  # every encounter counted

    for start in (3, 9, 14, 17):  # resume after skips: the same samples, the same counts
        again = ImageStream(cfg).samples(0, 1, start, skipped=full[start - 1]["skipped_rows"].tolist())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadRowWarning)
            tail = [next(again) for _ in range(20 - start)]
        assert [float(s["joints2d"][0, 0]) for s in tail] == xs[start:]
        assert [int(s["skipped_rows"][0]) for s in tail] == counts[start:]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(tail, full[start:]))
    naive = ImageStream(cfg).samples(0, 1, 9)  # the same resume without the skip counts would shift
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRowWarning)
        assert [float(next(naive)["joints2d"][0, 0]) for _ in range(5)] != xs[9:14]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRowWarning)
        batches = ImageBatches(ImageStream(cfg), batch_size=3)
        it = iter(batches)
        first = [next(it) for _ in range(4)]
        assert "skipped_rows" not in first[0]  # the count stays in the loader, not in the trainer's batch
        state = batches.state_dict()
        nxt = next(it)
        again = ImageBatches(ImageStream(cfg), batch_size=3)
        again.load_state_dict(state)
        assert torch.equal(next(iter(again))["image"], nxt["image"])
        assert state["skipped_rows"] == counts[11] == 2 and state["stream"]["skipped"] == {0: [2]}
        old = {**state, "version": 1, "stream": {**state["stream"], "version": 1}}
        del old["stream"]["skipped"]
        ImageBatches(ImageStream(cfg), batch_size=3).load_state_dict(old)  # version 1: no skips recorded

        ev = ImageEvalBatches([str(root / "shards" / "b")], 4, 5)
        assert sum(len(b["image"]) for b in ev) == 8 and ev.skipped_rows == 2


def test_two_worker_batches_resume_exactly_after_an_odd_number_of_batches_with_bad_rows(bad_row_mixture):
    """Workers take turns; a loader resumed after 3 batches must start with the second worker's slot
    (and its skip count), not the first's."""
    import warnings

    root, _, _ = bad_row_mixture
    cfg = read_mixture(root / "mix.yaml", augment=AugmentConfig(enabled=False), num_vertices=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = ImageBatches(ImageStream(cfg), batch_size=3, num_workers=2)
        it = iter(batches)
        for _ in range(3):
            next(it)
        state = batches.state_dict()
        expected = [next(it) for _ in range(3)]
        again = ImageBatches(ImageStream(cfg), batch_size=3, num_workers=2)
        again.load_state_dict(state)
        got = [b for _, b in zip(range(3), again)]
    assert state["stream"]["produced"] == {0: 6, 1: 3} and sum(state["stream"]["skipped"][0]) >= 1
    for g, e in zip(got, expected):
        assert torch.equal(g["image"], e["image"]) and torch.equal(g["joints2d"], e["joints2d"])
    assert again.skipped == batches.skipped
