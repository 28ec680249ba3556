"""On-device views (mpt_train.views): parity with the builder's stored views, the random-camera draw,
the whole body in every drawn crop, the face rule, and an exact resume of a --views random run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mpt_data import cameras as mcam
from mpt_data import schema
from mpt_train.views import (COCO_FACE_ROWS, CameraDistribution, CameraError, draw_cameras, face_facing,
                             project_batch, random_views)


def _store_meshes(path):
    from mpt_train.store import open_store

    reader = open_store(str(path))
    parts = reader.read_chunks(list(range(reader.num_chunks)), joint_sets=("coco17",))
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    crop = np.asarray(reader.group[schema.CROP][:], np.float32)
    pos = np.asarray(reader.group[schema.CAMERAS].attrs[schema.ATTR_SUBJECT_POSITION], np.float32)
    return reader, data, crop, pos


def test_store_cameras_reproduce_the_stored_views(reference_store):
    """Each mesh's stored 3D (dequantised vertices, stored joints) through the store's own cameras gives
    views/joints2d within 0.05 crop px, views/crop within 0.05 image px and views/visible exactly."""
    reader, data, crop, pos = _store_meshes(reference_store.path)
    cams = reader.cameras
    j = torch.from_numpy(data["joints/coco17"])
    v = torch.from_numpy(data["vertices"])
    n = len(j)
    worst = {"j2d": 0.0, "crop": 0.0}
    for c in range(len(cams.K)):
        ex = [torch.from_numpy(a[c]).expand(n, *a[c].shape) for a in (cams.K, cams.R, cams.t)]
        got = project_batch(j, v, *ex, position=torch.from_numpy(pos), face_rows=COCO_FACE_ROWS)
        worst["j2d"] = max(worst["j2d"], float((got.joints2d - torch.from_numpy(data["joints2d"][:, c])).abs().max()))
        worst["crop"] = max(worst["crop"], float((got.crop - torch.from_numpy(crop[:, c])).abs().max()))
        stored_vis = torch.from_numpy(data["visible"][:, c])
        differ = got.visible != stored_vis
        # The only tolerated disagreement: a joint within 1e-3 px of the crop border (none seen so far).
        near = ((got.joints2d.abs() < 1e-3) | ((got.joints2d - schema.CROP_SIZE).abs() < 1e-3)).any(-1)
        assert not (differ & ~near).any(), (c, int(differ.sum()))
        assert torch.equal(got.camera_R, torch.from_numpy(cams.R[c]).expand(n, 3, 3))
    assert worst["j2d"] < 0.05 and worst["crop"] < 0.05, worst
    # The store's rear views hide some face keypoints, so the face rule was exercised.
    assert not data["visible"][:, :, list(COCO_FACE_ROWS)].all()


def test_face_rule_matches_numpy_and_hides_the_face_from_behind():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(64, 5, 3))
    centres = rng.normal(size=(64, 3)) * 3
    want = mcam.face_facing(pts, centres)
    got = face_facing(torch.from_numpy(pts), torch.from_numpy(centres))
    assert np.array_equal(got.numpy(), want)
    # A head at the origin looking along +x: nose ahead, eyes ahead and apart, ears at the sides.
    head = torch.tensor([[[0.10, 0.0, 0.0], [0.08, 0.03, 0.03], [0.08, -0.03, 0.03], [0.0, 0.08, 0.0],
                          [0.0, -0.08, 0.0]]], dtype=torch.float64)
    front = face_facing(head, torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64))[0]
    back = face_facing(head, torch.tensor([[-3.0, 0.0, 0.0]], dtype=torch.float64))[0]
    assert front.tolist() == [True] * 5
    assert back.tolist() == [False, False, False, True, True]  # nose and eyes hidden, ears seen sideways


def test_camera_draw_is_a_pure_function_of_the_key():
    dist = CameraDistribution.photographs()
    keys = torch.tensor([5, 1 << 40, 123456789, 7, 5], dtype=torch.int64)
    a = draw_cameras(keys, dist)
    b = draw_cameras(keys.flip(0), dist)
    for x, y in zip(a, b):
        assert torch.equal(x, y.flip(0))  # the same camera whatever the batch position
    assert all(torch.equal(x[0], x[4]) for x in a) and not torch.equal(a[1][0], a[1][1])
    K, R, t = (x.double() for x in a)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(R), torch.ones(5, dtype=torch.float64), atol=1e-6)
    centre = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    # The optical axis passes within the look-at jitter of the root; distances and elevations in range.
    axis = R[:, 2]
    miss = (-centre - (-centre * axis).sum(-1, keepdim=True) * axis).norm(dim=-1)
    assert (miss <= math.sqrt(3) * dist.look_at_jitter_m + 1e-5).all()
    dist_m = centre.norm(dim=-1)
    assert ((dist_m > 2.0 - 0.27) & (dist_m < 10.0 + 0.27)).all()
    f_mm = K[:, 0, 0] / dist.image_size[0] * 36.0
    assert ((f_mm >= 35.0 - 1e-3) & (f_mm <= 135.0 + 1e-3)).all()
    # Against the numpy look-at of mpt_data.cameras, roll included: the camera's up stays within 10 deg of z.
    up_img = -R[:, 1]  # camera "up" in world axes
    tilt = torch.rad2deg(torch.atan2(up_img[:, :2].norm(dim=-1), up_img[:, 2]))
    el = torch.rad2deg(torch.asin(-axis[:, 2]))
    assert (tilt <= el.abs() + 10.0 + 1e-3).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_camera_draw_is_the_same_on_cuda():
    keys = torch.arange(0, 1 << 20, 4099, dtype=torch.int64)
    cpu = draw_cameras(keys, CameraDistribution.photographs())
    gpu = draw_cameras(keys.cuda(), CameraDistribution.photographs())
    for x, y in zip(cpu, gpu):
        assert torch.allclose(x, y.cpu(), rtol=1e-5, atol=1e-4)


def test_every_drawn_camera_sees_the_whole_body(reference_store):
    _, data, _, _ = _store_meshes(reference_store.path)
    # The nearest, highest and lowest cameras the distribution allows, and the default one.
    for dist in (CameraDistribution.photographs(), CameraDistribution(distance_m=(2.0, 2.0), elevation_deg=(60.0, 60.0)),
                 CameraDistribution(distance_m=(2.0, 2.0), elevation_deg=(-10.0, -10.0), look_at_jitter_m=0.3)):
        n = len(data["vertices"])
        keys = torch.arange(n, dtype=torch.int64) * 7919 + 3
        K, R, t = draw_cameras(keys, dist)
        v = torch.from_numpy(data["vertices"])
        got = project_batch(v, v, K, R, t)  # the vertices as "joints": each one in crop pixels
        assert (got.depth > 0.3).all()
        assert ((got.joints2d >= 0) & (got.joints2d < schema.CROP_SIZE)).all()
        assert got.visible.all()


def test_a_bad_distribution_is_refused_naming_the_file_and_field(tmp_path):
    with pytest.raises(CameraError, match="distance_m"):
        CameraDistribution(distance_m=(1.0, 5.0))
    bad = tmp_path / "cams.yaml"
    bad.write_text("distance_m: [3, 8]\nfocus: 50\n")
    with pytest.raises(CameraError, match=r"cams\.yaml.*focus"):
        CameraDistribution.load(bad)
    bad.write_text("elevation_deg: [70, 20]\n")
    with pytest.raises(CameraError, match=r"cams\.yaml.*elevation_deg"):
        CameraDistribution.load(bad)
    good = tmp_path / "good.yaml"
    good.write_text("distance_m: [3, 8]\nroll_deg: 5\n")
    d = CameraDistribution.load(good)
    assert d.distance_m == (3.0, 8.0) and d.roll_deg == 5.0 and d.focal_mm == (35.0, 135.0)
    assert CameraDistribution.from_dict(d.to_dict()) == d


def test_random_views_replace_the_stored_view(reference_store):
    from mpt_train.data import LoaderConfig, PairLoader
    from mpt_train.inputs import InputConfig, prepare_batch

    loader = PairLoader(LoaderConfig(shards=str(reference_store.path), batch_size=16, num_workers=0))
    batch = next(iter(loader))
    dist = CameraDistribution.photographs()
    seen = random_views(batch, dist, "coco17", "cpu", joints_key="joints3d")
    K, R, t = draw_cameras(batch["key"], dist)
    assert torch.equal(seen["camera_R"], R)
    assert not torch.allclose(seen["joints2d"], batch["joints2d"])
    mi = prepare_batch(seen, InputConfig.tiny().without_augmentation(), "cpu")
    assert torch.allclose(mi.joints3d, batch["joints3d"] @ R.transpose(1, 2), atol=1e-6)
    # joints2d are the drawn camera's projection (independent numpy path, mpt_data.cameras).
    c = mcam.Camera("x", K[0].double().numpy(), R[0].double().numpy(), t[0].double().numpy(), (1000, 1000))
    views = mcam.project_views(batch["joints3d"][:1].numpy(), batch["vertices"][:1].numpy(), [c], np.zeros(3),
                               face_rows=COCO_FACE_ROWS)
    assert np.abs(views.joints2d[0, 0] - seen["joints2d"][0].numpy()).max() < 0.05
    assert np.array_equal(views.visible[0, 0], seen["visible"][0].numpy())


def _build(store: str, out: Path, cameras, steps: int = 12):
    from mpt_train.data import LoaderConfig
    from mpt_train.inputs import InputConfig
    from mpt_train.losses import LossConfig
    from mpt_train.model import ModelConfig
    from mpt_train.pretrain import build_pretrain_task
    from mpt_train.trainer import TrainConfig

    cfg = TrainConfig(out=str(out), steps=steps, batch_size=8, lr=2e-3, log_every=1, checkpoint_every=6,
                      val_every=0, progress=False, device="cpu")
    task = build_pretrain_task(cfg, ModelConfig.tiny(dropout=0.1, layers_per_block=1), InputConfig(patch=28),
                               LossConfig(), LoaderConfig(shards=store, num_workers=0, cameras=(0,)), cameras=cameras)
    return cfg, task


def _records(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in recs if r["kind"] == "train"]


def test_random_camera_run_resumes_bit_for_bit_and_refuses_another_setting(reference_store, tmp_path):
    from mpt_train.checkpoint import CheckpointError
    from mpt_train.trainer import train

    store, dist = str(reference_store.path), CameraDistribution.photographs()
    cfg, task = _build(store, tmp_path / "full", dist)
    train(cfg, task)
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["cameras"] == {"mode": "random", "distribution": dist.to_dict()}

    cfg, task = _build(store, tmp_path / "cut", dist)
    base, calls = task.criterion, {"n": 0}

    def crash(pred, targets):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("simulated crash")
        return base(pred, targets)

    task.criterion = crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, task)
    cfg, task = _build(store, tmp_path / "cut", dist)
    train(cfg, task, resume=True)
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")

    cfg, task = _build(store, tmp_path / "cut", None, steps=14)
    with pytest.raises(CheckpointError, match="cameras"):
        train(cfg, task, resume=True)


def test_evaluate_rig_on_the_stores_own_rig_matches_the_stored_views(reference_store, tmp_path):
    """evaluate --rig h36m-s1 (the reference store's 4 cameras, projected on the device) gives the figures of
    the stored views' clean evaluation, camera by camera and overall."""
    from click.testing import CliRunner

    from mpt_train.cli import main
    from mpt_train.evaluate import evaluate_checkpoint, evaluate_rig
    from mpt_train.trainer import train

    store = str(reference_store.path)
    cfg, task = _build(store, tmp_path / "run", None, steps=2)
    train(cfg, task)
    ck = str(tmp_path / "run" / "latest")
    res = evaluate_rig(ck, store, "h36m-s1", batch_size=16, device="cpu")
    first = next(k for k in res if k != "overall")
    assert len(res) == 5 and res["overall"]["samples"] == 4 * res[first]["samples"] > 0
    stored = evaluate_checkpoint(ck, store, batch_size=16, baseline=False, device="cpu")["clean"]
    for k in ("mpjpe", "pa_mpjpe", "mpve"):
        assert abs(res["overall"][k] - stored[k]) < 0.05, (k, res["overall"][k], stored[k])
    out = tmp_path / "rig.json"
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", ck, "--shards", store, "--rig", "close-wide",
                                  "--batch-size", "16", "--max-batches", "1", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "overall" in r.output and json.loads(out.read_text())["overall"]["samples"] > 0
