"""The image evaluation's baselines: the oracle path against the store path, the table."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from mpt_data.conventions import SPIN_JOINTS, SPIN_TO_COCO


def _store_batch(path: str, n: int = 6) -> dict:
    from mpt_train.data import LoaderConfig, PairLoader

    loader = PairLoader(LoaderConfig(shards=path, split="val", batch_size=n, num_workers=0, shuffle=False,
                                     drop_last=False))
    return next(iter(loader))


def _regressor_on(path: str, patch: int = 16):
    from mpt_train.model import MeshRegressor, ModelConfig, config_for_topology, topology_from_store
    from mpt_train.store import open_store

    topo = topology_from_store(open_store(path).topology())
    cfg = config_for_topology(ModelConfig.tiny(), topo, num_input_tokens=(224 // patch) ** 2,
                              input_token_dim=patch * patch * 17)
    torch.manual_seed(0)
    return MeshRegressor(cfg, topo).eval()


def _as_spin_images(batch: dict, root, context: float, crop_px: int) -> str:
    """The store samples as an image dataset: each sample's 224 px crop placed in a 320 px picture as a
    person box of its own size and place, its 2D joints mapped there, ingested by `mpt-data images`."""
    from mpt_data.images import ImagesConfig, ingest

    n = len(batch["key"])
    (root / "img").mkdir(parents=True)
    part = np.zeros((n, len(SPIN_JOINTS), 3), np.float32)
    s = np.zeros((n, len(SPIN_JOINTS), 4), np.float32)
    centers, scales, names = [], [], []
    j3 = torch.einsum("bij,bkj->bki", batch["camera_R"], batch["joints3d"]).numpy()
    for i in range(n):
        side, x0, y0 = 150.0 + 17 * i, 40.0 + 9 * i, 30.0 - 3 * i  # person box in image pixels
        u = batch["joints2d"][i].numpy().astype(np.float64)  # crop pixels of the store, centres at i + 0.5
        vis = batch["visible"][i].numpy()
        # image pixels (centres at integers): the box's crop pixel u lies at x0 + u * side / 224
        part[i, list(SPIN_TO_COCO), :2] = np.where(vis[:, None], np.array([x0, y0]) + u * side / 224, 0)
        part[i, list(SPIN_TO_COCO), 2] = vis
        s[i, list(SPIN_TO_COCO), :3] = j3[i]
        s[i, list(SPIN_TO_COCO), 3] = 1
        s[i, SPIN_JOINTS.index("pelvis")] = [*(j3[i, 11] + j3[i, 12]) / 2, 1]  # mid-hip
        centers.append([x0 + side / 2, y0 + side / 2])
        scales.append(side / 200)
        names.append(f"{i}.jpg")
        cv2.imwrite(str(root / "img" / names[-1]), np.full((320, 320, 3), 90, np.uint8))
    npz = root / "store_as_images.npz"
    np.savez(npz, imgname=np.array(names), center=np.array(centers, np.float32), scale=np.array(scales, np.float32),
             part=part, S=s)
    ingest(ImagesConfig(annotations=str(npz), image_root=str(root / "img"), out=str(root / "shards"),
                        context=context, crop_px=crop_px))
    return str(root / "shards" / "store_as_images")


@pytest.mark.parametrize("context, crop_px", [(1.5, 336), (1.25, 256)])
def test_oracle_on_images_of_store_samples_predicts_what_the_store_path_does(reference_store, tmp_path, context,
                                                                              crop_px):
    """Same 2D joints -> same heatmaps -> same prediction: the store's crop rule and pixel convention and the
    image path's (person box, stored crop with context, centred 224 crop) place every joint alike."""
    from mpt_train.baselines import oracle_prepare
    from mpt_train.images import ImageEvalBatches
    from mpt_train.inputs import InputConfig, prepare_batch

    batch = _store_batch(str(reference_store.path))
    model = _regressor_on(str(reference_store.path))
    inputs = InputConfig.tiny().without_augmentation()
    store_in = prepare_batch(batch, inputs, "cpu")
    folder = _as_spin_images(batch, tmp_path, context, crop_px)
    image_batch = next(iter(ImageEvalBatches([folder], 64, model.cfg.level_sizes[-1])))
    assert torch.equal(image_batch["visible"], batch["visible"])
    tokens, targets = oracle_prepare(torch.device("cpu"), inputs)(image_batch)
    # joints agree to float rounding (1e-3 px), so the heatmaps agree to ~1e-4 of their peak
    assert torch.allclose(tokens.dense(), store_in.tokens.dense(), atol=2e-4)
    with torch.no_grad():
        a, b = model(store_in.tokens), model(tokens)
    assert torch.allclose(a["vertices"], b["vertices"], atol=1e-4)
    assert torch.allclose(a["joints"], b["joints"], atol=1e-4)
    # and the 3D truth arrives in the camera frame of the store path, root-centred at mid-hip here
    hips = store_in.joints3d[:, 11:13].mean(1, keepdim=True)
    assert torch.allclose(targets["joints3d"], store_in.joints3d - hips, atol=1e-5)


def test_oracle_heatmaps_leave_out_invisible_joints_and_peak_at_the_joint():
    from mpt_train.baselines import oracle_prepare
    from mpt_train.inputs import InputConfig

    j2d = torch.tensor([[[10.0, 20.0]] * 17])  # crop pixels, centres at integers
    vis = torch.ones(1, 17, dtype=torch.bool)
    vis[0, 3] = False
    batch = {"image": torch.zeros(1, 3, 224, 224), "joints2d": j2d, "visible": vis}
    inputs = InputConfig(patch=8)
    tokens, _ = oracle_prepare(torch.device("cpu"), inputs)(batch)
    maps = tokens.dense().reshape(1, 28, 28, 17, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(1, 17, 224, 224)
    assert float(maps[0, 3].abs().max()) == 0.0
    peak = int(maps[0, 0].argmax())
    assert (peak % 224, peak // 224) == (10, 20)  # pixel (10, 20) has its centre on the joint
    assert math.isclose(float(maps[0, 0, 20, 10]), 1.0, rel_tol=1e-6)


def test_results_table_lists_every_row_and_marks_missing_columns():
    from mpt_train.baselines import results_table

    table = results_table({"mean pose (train images)": {"mpjpe": 300.04, "pa_mpjpe": 88.26},
                           "ft": {"mpjpe": 120.0, "pa_mpjpe": 60.55, "mpve": 130.0}})
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "model" and "mpve (mm)" in lines[0]
    assert [c.strip() for c in lines[2].split("|")[2:5]] == ["300.0", "88.3", "–"]
    assert [c.strip() for c in lines[3].split("|")[2:5]] == ["120.0", "60.5", "130.0"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
