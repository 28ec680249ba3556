"""Fine-tuning model, the full fine-tuning loop on image shards, H36M/3DPW protocols, predict."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch

from numpy_reference import np_procrustes
from mpt_data.images import ImagesConfig, ingest
from mpt_train import checkpoint as ckpt
from mpt_train.backbones import TINY_BACKBONE, PoseFeatureMaps
from mpt_train.finetune import FinetuneConfig, build_finetune_task
from mpt_train.loading import BackboneMPT, load_checkpoint_model
from mpt_train.losses import LossConfig
from mpt_train.model import MeshRegressor, MeshTopology, ModelConfig
from mpt_train import predict as pr
from mpt_train.predict import PredictConfig, read_obj, run
from mpt_train.protocols import h36m_protocol2, pw3d_metrics
from mpt_train.trainer import TrainConfig, train

V, VC = 40, 10


def _topology(seed=0) -> MeshTopology:
    rng = np.random.default_rng(seed)
    template = rng.normal(0, 0.3, (V, 3)).astype(np.float32)
    faces = np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1)
    coarse = np.arange(0, V, 4)
    up = np.zeros((V, VC), np.float32)
    up[np.arange(V), np.arange(V) // 4] = 1.0
    reg = rng.random((17, V)).astype(np.float32)
    reg /= reg.sum(1, keepdims=True)
    h36m = rng.random((17, V)).astype(np.float32)
    h36m /= h36m.sum(1, keepdims=True)
    return MeshTopology(template, faces, (np.arange(V), coarse), (up,), {"coco17": reg, "h36m17": h36m})


def _regressor() -> MeshRegressor:
    cfg = ModelConfig.tiny(hidden_sizes=(32, 16), num_joints=17, level_sizes=(VC, V), num_faces=V - 2,
                           eval_joint_sets=("h36m17",))
    torch.manual_seed(0)
    return MeshRegressor(cfg, _topology())


def _save_model(run_dir, model) -> None:
    ckpt.save(run_dir, 1, {"model": model.state_dict_versioned(), "store_fingerprint": None}, {"rng": {}})


# ------------------------------------------------------------------------------------------
# Protocols against an independent computation


def test_h36m_protocol2_and_3dpw_match_an_independent_computation():
    rng = np.random.default_rng(1)
    b = 4
    verts = rng.normal(0, 0.4, (b, V, 3))
    reg = rng.random((17, V))
    reg /= reg.sum(1, keepdims=True)
    spin = np.concatenate([rng.normal(0, 0.4, (b, 24, 3)), np.ones((b, 24, 1))], -1)
    got = h36m_protocol2(torch.tensor(verts), torch.tensor(spin), torch.tensor(reg))
    # independent: H36M-17 from the mesh; eval joints by name; pelvis = H36M joint 0 / hips midpoint
    h36m_names = ["pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "torso",
                  "neck", "nose", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
                  "right_elbow", "right_wrist"]
    eval_names = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
                  "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck", "head"]
    for i in range(b):
        j17 = reg @ verts[i]
        p = np.stack([j17[h36m_names.index(n)] for n in eval_names]) - j17[0]
        g = spin[i, :14, :3] - (spin[i, 2, :3] + spin[i, 3, :3]) / 2  # SPIN: 2 right hip, 3 left hip
        mpjpe = np.linalg.norm(p - g, axis=1).mean()
        pa = np.linalg.norm(np_procrustes(p, g) - g, axis=1).mean()
        assert abs(float(got["mpjpe"][i]) - mpjpe) < 1e-6
        assert abs(float(got["pa_mpjpe"][i]) - pa) < 1e-6
        assert pa < mpjpe

    gt_verts = verts + rng.normal(0, 0.05, verts.shape) + 1.5  # offset removed by pelvis alignment
    got = pw3d_metrics(torch.tensor(verts), torch.tensor(gt_verts), torch.tensor(reg))
    for i in range(b):
        pp, gp = (reg @ verts[i])[0], (reg @ gt_verts[i])[0]
        mpve = np.linalg.norm((verts[i] - pp) - (gt_verts[i] - gp), axis=1).mean()
        assert abs(float(got["mpve"][i]) - mpve) < 1e-6
        assert float(got["mpjpe"][i]) < 0.2


# ------------------------------------------------------------------------------------------
# Model, checkpoint, predict


def test_backbone_mpt_round_trip_and_predict_writes_obj(tmp_path):
    model = BackboneMPT(PoseFeatureMaps(TINY_BACKBONE), _regressor())
    out = model(torch.rand(2, 3, 224, 224))
    assert out["vertices"].shape == (2, V, 3) and out["maps"].shape == (2, 17, 224, 224)
    _save_model(tmp_path / "run", model)
    again = load_checkpoint_model(tmp_path / "run")
    assert isinstance(again, BackboneMPT)
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k

    img = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "person.png"), img)
    info = run(PredictConfig(str(tmp_path / "run"), str(tmp_path / "person.png"), str(tmp_path / "pred")))
    verts, faces = read_obj(tmp_path / "pred" / "mesh.obj")
    assert verts.shape == (V, 3) == (info["num_vertices"], 3)
    camera_verts, _ = read_obj(tmp_path / "pred" / "mesh_camera.obj")  # the same mesh, y and z flipped
    np.testing.assert_allclose(verts, camera_verts * [1, -1, -1], atol=1e-6)
    assert np.array(info["keypoints2d_coco17"]).shape == (17, 2)
    assert faces.shape == (V - 2, 3) and faces.min() == 0 and faces.max() == V - 1
    assert info["crop_box"] == [-0.5, -25.5, 200.0]  # whole image (pixel centres at integers): longer side
    pic = cv2.imread(str(tmp_path / "pred" / "overlay.png"))
    assert pic.shape == (pr.CAPTION_PX + 3 * 150, 2 * 3 * 200, 3)  # enlarged 3x to reach OVERLAY_MIN_PX
    info = run(PredictConfig(str(tmp_path / "run"), str(tmp_path / "person.png"), str(tmp_path / "pred2"),
                             bbox=(50, 40, 60, 80)))
    assert np.allclose(info["crop_box"], [80 - 48, 80 - 48, 96])


# ------------------------------------------------------------------------------------------
# The fine-tuning Task through the shared training loop


def _image_shards(root, n=16):
    rng = np.random.default_rng(2)
    (root / "img").mkdir(parents=True)
    names = []
    for i in range(n):
        cv2.imwrite(str(root / "img" / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        names.append(f"{i}.png")
    part = np.concatenate([rng.uniform(10, 54, (n, 24, 2)), np.ones((n, 24, 1))], -1)
    s = np.concatenate([rng.normal(0, 0.3, (n, 24, 3)), np.ones((n, 24, 1))], -1)
    verts = rng.normal(0, 0.3, (n, V, 3))
    np.savez(root / "toy.npz", imgname=np.array(names), center=np.full((n, 2), 32.0), scale=np.full(n, 0.25),
             part=part, S=s, vertices=verts)
    ingest(ImagesConfig(str(root / "toy.npz"), str(root / "img"), str(root / "shards"), context=1.2, crop_px=64,
                        rows_per_group=4))
    (root / "mix.yaml").write_text("datasets:\n  - {name: toy, shards: shards/toy, weight: 1}\n")


def test_finetune_task_trains_with_the_shared_loop_and_frozen_backbone_stays_fixed(tmp_path):
    _image_shards(tmp_path)
    pre = BackboneMPT(PoseFeatureMaps(TINY_BACKBONE), _regressor()).regressor
    _save_model(tmp_path / "pre", pre)
    tc = TrainConfig(out=str(tmp_path / "ft"), steps=3, batch_size=4, log_every=1, checkpoint_every=3,
                     val_every=0, progress=False)
    ft = FinetuneConfig(init=str(tmp_path / "pre"), data=str(tmp_path / "mix.yaml"),
                        val=(str(tmp_path / "shards" / "toy"),), backbone=TINY_BACKBONE, freeze_backbone=True)
    task = build_finetune_task(tc, ft, LossConfig())
    before = {k: v.clone() for k, v in task.model.backbone.net.state_dict().items()}
    reg_before = task.model.regressor.coord_head.weight.clone()
    res = train(tc, task)
    assert res["samples"] == 16.0 and res["mpjpe"] > 0 and "mpve" in res
    for k, v in task.model.backbone.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(task.model.regressor.coord_head.weight, reg_before)
    again = load_checkpoint_model(tmp_path / "ft")
    assert isinstance(again, BackboneMPT)

    trainable = build_finetune_task(dataclasses.replace(tc, out=str(tmp_path / "ft2"), steps=2),
                                    dataclasses.replace(ft, freeze_backbone=False, val=()), LossConfig())
    w0 = trainable.model.backbone.net.conv1.weight.clone()
    train(dataclasses.replace(tc, out=str(tmp_path / "ft2"), steps=2), trainable)
    assert not torch.equal(trainable.model.backbone.net.conv1.weight, w0)


def test_overlay_camera_puts_points_where_the_weak_perspective_crop_projection_does():
    """K @ (X + t) in image pixels equals: weak perspective → [-1, 1] crop units → crop pixels
    (finetune's unit, centres at integers) → image pixels through the crop box."""
    from mpt_data.images import image_to_crop
    from mpt_train.predict import perspective_from_weak

    rng = np.random.default_rng(4)
    pts = rng.normal(0, 0.3, (50, 3))
    pts[:, 2] = 0.0  # at the root's depth perspective and weak perspective agree exactly
    cam = np.array([0.8, 0.1, -0.2])
    box = (37.0, -12.0, 180.0)  # x0, y0, side in image pixels
    unit = cam[0] * pts[:, :2] + cam[1:]
    crop_px = (unit + 1) * 224 / 2 - 0.5  # inverse of crop_pixels_to_unit
    image_px = crop_px * 180.0 / 224 + np.array(box[:2])
    assert np.allclose(image_to_crop(image_px, box, 224), crop_px, atol=1e-3)  # the shards' rule, inverted
    K, t = perspective_from_weak(cam, box)
    p = (pts + t) @ K.T
    uv = p[:, :2] / p[:, 2:]
    assert np.abs(uv - image_px).max() < 1e-6  # pixels; 0.4 px off everywhere with the pixel centre dropped


# ------------------------------------------------------------------------------------------
# Channel order: every image path into a backbone, per checkpoint family


def test_simplebaseline_reads_bgr_and_hrnet_rgb_on_every_image_path(tmp_path):
    """A blue-dominated picture goes through the real paths (training stream + prepare, evaluation
    batches, predict) into BackboneMPT; the pose network's first layer sees its channels B, G, R
    for a SimpleBaseline family backbone and R, G, B for an HRNet one."""
    from test_backbones import network_input

    from mpt_train.backbones import hrnet
    from mpt_train.images import ImageEvalBatches, image_prepare
    from mpt_train.images import ImageBatches, ImageStream, read_mixture
    from mpt_train.augment import AugmentConfig
    from mpt_train.predict import predict

    bgr = np.array([200, 90, 20])  # OpenCV order: strong blue, little red
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    n = 4
    for i in range(n):
        pic = np.clip(bgr + rng.integers(-8, 9, (64, 64, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), pic)
    part = np.concatenate([rng.uniform(10, 54, (n, 24, 2)), np.ones((n, 24, 1))], -1)
    np.savez(tmp_path / "c.npz", imgname=np.array([f"{i}.png" for i in range(n)]), center=np.full((n, 2), 32.0),
             scale=np.full(n, 0.25), part=part)
    ingest(ImagesConfig(str(tmp_path / "c.npz"), str(tmp_path / "img"), str(tmp_path / "shards"), context=1.0,
                        crop_px=64, rows_per_group=2))  # context 1: the crop is all picture, no black border
    (tmp_path / "mix.yaml").write_text("datasets:\n  - {name: c, shards: shards/c, weight: 1}\n")
    mix = read_mixture(tmp_path / "mix.yaml", augment=AugmentConfig(enabled=False), num_vertices=V)
    prepare = image_prepare(torch.device("cpu"))
    train_images, _ = prepare(next(iter(ImageBatches(ImageStream(mix), batch_size=2))))
    eval_images, _ = prepare(next(iter(ImageEvalBatches([str(tmp_path / "shards" / "c")], 2, V))))
    photo = np.clip(bgr + rng.integers(-8, 9, (72, 72, 3)), 0, 255).astype(np.uint8)  # square: no border

    seen = {}
    for cfg in (TINY_BACKBONE, hrnet(8)):
        model = BackboneMPT(PoseFeatureMaps(cfg), _regressor()).eval()
        with torch.no_grad():
            seen[cfg.kind] = [network_input(model.backbone, lambda: model(train_images)),
                              network_input(model.backbone, lambda: model(eval_images)),
                              network_input(model.backbone, lambda: predict(model, photo))]
    for sb, hr in zip(seen["pose_resnet"], seen["pose_hrnet"]):
        sb_means = sb.mean(dim=(0, 2, 3)) * 255
        hr_means = hr.mean(dim=(0, 2, 3)) * 255
        assert torch.allclose(sb_means, torch.tensor(bgr, dtype=torch.float32), atol=6)  # B, G, R
        assert torch.allclose(hr_means, torch.tensor(bgr[::-1].copy(), dtype=torch.float32), atol=6)  # R, G, B
    # HRNet reads the image at its size, pixel for pixel: exactly the stream's RGB crop
    assert torch.allclose(seen["pose_hrnet"][0], train_images, atol=1e-5)


def test_a_checkpoint_fine_tuned_with_another_channel_order_is_refused(tmp_path):
    import pytest

    from mpt_train.backbones import hrnet
    from mpt_train.loading import ChannelOrderMismatch

    for cfg, refused in ((TINY_BACKBONE, True), (hrnet(8), False)):
        model = BackboneMPT(PoseFeatureMaps(cfg), _regressor())
        blob = model.state_dict_versioned()
        assert blob["channel_order"] == ("BGR" if refused else "RGB")
        del blob["channel_order"]
        blob["version"] = 1  # written before the order was per family: every backbone was fed RGB
        run_dir = tmp_path / cfg.kind
        ckpt.save(run_dir, 1, {"model": blob, "store_fingerprint": None}, {"rng": {}})
        if refused:
            with pytest.raises(ChannelOrderMismatch, match=f"{run_dir}: fine-tuned with RGB input to its pose_resnet "
                                                           "backbone, but pose_resnet reads BGR"):
                load_checkpoint_model(run_dir)
        else:
            assert isinstance(load_checkpoint_model(run_dir), BackboneMPT)
