"""`mpt-data synth-images`: SPIN-format files, joints on the rendered body, ingestion, determinism;
and the heatmap training of the 2D pose network on the result."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mpt_data import conventions as cv
from mpt_data.images import ImagesConfig, ingest
from mpt_data.synth.images import (REGION_NAMES, SynthImagesConfig, SynthImagesError, background, place_person,
                                   write_synth_images)

SIZE = 128
SPIN_KEYS = ("imgname", "center", "scale", "part", "S", "pose", "shape", "has_smpl", "gender", "vertices")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small synthetic body model, three short motions (CMU train, HumanEva val) and a dataset."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from motion_files import motion_arrays

    from body_model_files import write_body_models

    root = tmp_path_factory.mktemp("synth_images")
    write_body_models(root / "body", seed=0, num_vertices=1500)
    for i, (subset, name, gender) in enumerate((("CMU", "walk", "male"), ("CMU", "wave", "female"),
                                                ("HumanEva", "jog", "neutral"))):
        d = root / "amass" / subset / "s1"
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / f"{name}_poses.npz", **motion_arrays(40, 60.0, gender, seed=i))
    cfg = SynthImagesConfig(str(root / "amass"), str(root / "body"), str(root / "out"), train=10, val=4,
                            image_size=SIZE, seed=3, block=4, manifest=str(Path(__file__).parents[1] / "data_manifest.yaml"))
    summary = write_synth_images(cfg)
    return root, cfg, summary


def test_annotation_files_have_spin_keys_with_consistent_lengths(inputs):
    root, cfg, summary = inputs
    assert summary["files"] == {"train": "synth_train.npz", "val": "synth_val.npz"}
    for split, n in (("train", 10), ("val", 4)):
        z = np.load(root / "out" / f"synth_{split}.npz")
        assert set(SPIN_KEYS) <= set(z.files)
        assert all(len(z[k]) == n for k in SPIN_KEYS)
        assert z["part"].shape == (n, 24, 3) and z["S"].shape == (n, 24, 4)
        assert z["pose"].shape == (n, 72) and z["shape"].shape == (n, 10) and z["vertices"].shape == (n, 1500, 3)
        assert np.all(z["S"][..., 3] == 1) and np.all(z["has_smpl"] == 1)
        assert set(z["gender"]) <= {"m", "f", "n"}
        for name in z["imgname"]:
            img = cv2.imread(str(root / "out" / name))
            assert img is not None and img.shape == (SIZE, SIZE, 3)
        assert np.all(z["scale"] > 0) and np.all(np.isfinite(z["center"]))
        # val frames come from the val subset (HumanEva: the neutral motion), train from CMU
        if split == "val":
            assert set(z["gender"]) == {"n"}
        else:
            assert "n" not in set(z["gender"])


def test_projected_joints_land_on_the_rendered_body(inputs):
    """Each visible torso joint (part) lies inside the silhouette of the stored mesh, drawn with a
    pinhole camera fitted to part vs S alone (so 2D joints, 3D joints and mesh agree)."""
    root, cfg, _ = inputs
    z = np.load(root / "out" / "synth_train.npz")
    torso = [cv.SPIN_JOINTS.index(n) for n in ("pelvis", "thorax", "spine", "left_hip", "right_hip")]
    total = 0
    for i in range(len(z["imgname"])):
        mask = _silhouette(z, i, cfg)
        assert mask.mean() > 0.02  # the person covers part of the frame
        for j in torso:
            x, y, ok = z["part"][i, j]
            if ok:
                total += 1
                assert mask[int(round(y)), int(round(x))], (i, cv.SPIN_JOINTS[j])
    assert total >= 30


def _silhouette(z, i, cfg) -> np.ndarray:
    """(H, W) bool: pixels covered by the stored camera-frame mesh of sample i, projected with
    u = f x / z + c where f, cx, cy are fitted by least squares to the 24 (S, part) pairs."""
    from mpt_data.raster import render_mesh

    s = z["S"][i, :, :3].astype(np.float64)
    uv = z["part"][i, :, :2].astype(np.float64)
    rows = np.zeros((48, 3))
    rows[:24, 0], rows[24:, 0] = s[:, 0] / s[:, 2], s[:, 1] / s[:, 2]
    rows[:24, 1], rows[24:, 2] = 1, 1
    (f, cx, cy), res, *_ = np.linalg.lstsq(rows, np.concatenate([uv[:, 0], uv[:, 1]]), rcond=None)
    assert res.size == 0 or res[0] < 1e-3  # part is exactly the pinhole projection of S
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    mask = render_mesh(np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8), z["vertices"][i], _faces(cfg), K,
                       color=(255, 255, 255), ambient=1.0)
    return mask.max(-1) > 0


_FACES = {}


def _faces(cfg):
    if cfg.body_models not in _FACES:
        from mpt_data.body import BodyModel, BodyModelConfig

        _FACES[cfg.body_models] = BodyModel.load(BodyModelConfig(cfg.body_models), "neutral").faces.astype(np.int64)
    return _FACES[cfg.body_models]


def test_ingest_accepts_the_dataset_and_labels_line_up(inputs, tmp_path):
    root, cfg, _ = inputs
    summary = ingest(ImagesConfig(str(root / "out" / "synth_train.npz"), str(root / "out"), str(tmp_path),
                                  dataset="synth_train", crop_px=96, rows_per_group=4))
    assert summary.written == 10 and summary.skipped == {}
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "synth_train" / summary.shards[0]).slice(0, 1).to_pylist()[0]
    z = np.load(root / "out" / "synth_train.npz")
    i = row["index"]
    assert row["has_vertices"] and len(row["vertices"]) == 1500 * 3 and row["has_smpl"] and row["has_joints3d"]
    # COCO left wrist in the crop = SPIN left wrist in the image, mapped by the crop box
    x0, y0, side = row["crop_box"]
    lw = cv.SPIN_JOINTS.index("left_wrist")
    j2 = np.asarray(row["joints2d"]).reshape(17, 3)
    want = (z["part"][i, lw, :2] - [x0, y0]) * 96 / side
    assert np.allclose(j2[cv.COCO_JOINTS.index("left_wrist"), :2], want, atol=1e-3)


def test_same_seed_same_bytes_whatever_the_block_size(inputs, tmp_path):
    root, cfg, _ = inputs
    import dataclasses

    again = dataclasses.replace(cfg, out=str(tmp_path), train=5, val=0, block=2)
    write_synth_images(again)
    a, b = np.load(root / "out" / "synth_train.npz"), np.load(tmp_path / "synth_train.npz")
    for k in SPIN_KEYS:
        assert np.array_equal(a[k][:5], b[k]), k
    for name in b["imgname"]:
        assert (root / "out" / name).read_bytes() == (tmp_path / name).read_bytes()


def test_placement_and_backgrounds_and_bad_settings(tmp_path):
    rng = np.random.default_rng(0)
    verts = rng.normal(0, 0.3, (200, 3)) * [0.5, 1.0, 0.3]
    t = place_person(verts, 300.0, 200, 0.5, np.array([80.0, 120.0]))
    p = verts + t
    uv = 300.0 * p[:, :2] / p[:, 2:] + 99.5
    lo, hi = uv.min(0), uv.max(0)
    assert np.allclose((lo + hi) / 2, [80, 120], atol=3)  # perspective: close to the requested centre
    assert abs(max(hi - lo) - 100) < 8
    imgs = [background(np.random.default_rng(s), 64) for s in range(6)]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in imgs)
    assert len({im.tobytes() for im in imgs}) == 6
    assert "shirt" not in REGION_NAMES and "torso" in REGION_NAMES
    with pytest.raises(SynthImagesError):
        SynthImagesConfig("a", "b", "c", train=0, val=0)
    empty = tmp_path / "amass"
    empty.mkdir()
    with pytest.raises(SynthImagesError, match="no readable AMASS motion"):
        write_synth_images(SynthImagesConfig(str(empty), str(tmp_path), str(tmp_path / "o"), train=1, val=0))


def test_heatmap_training_step_lowers_the_loss(inputs, tmp_path):
    """The pose network's heatmap objective: targets peak at the joints, a few Adam steps reduce it."""
    from mpt_train.backbones import BackboneConfig, PoseFeatureMaps
    from mpt_train.images import ImageEvalBatches
    from mpt_train.posenet import HeatmapCriterion, argmax_joints, heatmap_prepare

    root, cfg, _ = inputs
    ingest(ImagesConfig(str(root / "out" / "synth_train.npz"), str(root / "out"), str(tmp_path),
                        dataset="tr", crop_px=96, rows_per_group=4))
    batch = next(iter(ImageEvalBatches([str(tmp_path / "tr")], 4, 0)))
    prep = heatmap_prepare(torch.device("cpu"), 3.0, 224)
    images, targets = prep(batch)
    peaks = argmax_joints(targets["heatmaps"])
    vis = targets["visible"]
    # pixel centres: heatmaps use i + 0.5, the shard joints integers; the peak is the nearest pixel
    assert (peaks - targets["joints2d"]).abs()[vis].max() <= 0.5 + 1e-4
    crit = HeatmapCriterion(3.0)
    zero, _ = crit(torch.zeros_like(targets["heatmaps"]), targets)
    assert abs(float(zero) - 1.0) < 0.05  # Σ target² = π σ² / 2 per visible joint
    exact, _ = crit(targets["heatmaps"], targets)
    assert float(exact) == 0.0
    torch.manual_seed(0)
    net = PoseFeatureMaps(BackboneConfig(kind="pose_resnet", depth=18, width=8, deconv_filters=16))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(6):
        loss, _ = crit(net(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_heatmap_targets_on_the_networks_own_grid_peak_at_the_joints():
    from mpt_train.posenet import argmax_joints, heatmap_prepare

    rng = np.random.default_rng(1)
    j2d = torch.tensor(rng.uniform(5, 218, (3, 17, 2)), dtype=torch.float32)
    batch = {"image": torch.zeros(3, 3, 224, 224), "joints2d": j2d, "visible": torch.ones(3, 17, dtype=torch.bool)}
    _, t32 = heatmap_prepare(torch.device("cpu"), 8.0, 32)(batch)
    assert t32["heatmaps"].shape == (3, 17, 32, 32)
    # a map pixel is 7 crop pixels: the peak is the map pixel holding the joint
    err = (argmax_joints(t32["heatmaps"], 224) - j2d).abs()
    assert float(err.max()) <= 3.5 + 1e-4
    # σ scales with the grid: the 32 px target is the 224 px one sampled at map-pixel centres
    _, t224 = heatmap_prepare(torch.device("cpu"), 8.0, 224)(batch)
    centres = torch.arange(32) * 7 + 3  # crop pixel whose centre (i + 0.5) is the map pixel's centre
    assert torch.allclose(t32["heatmaps"], t224["heatmaps"][..., centres[:, None], centres[None, :]], atol=1e-5)
