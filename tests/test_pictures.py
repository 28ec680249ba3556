"""The pictures people look at: evaluate's comparison picture (varied samples, per-sample PA-MPJPE, labelled
rows) and synth's body.png (a legend for its colours and rows)."""

from __future__ import annotations

import numpy as np
import torch

from numpy_reference import np_procrustes
from mpt_train import evaluate as ev


def test_varied_samples_spread_over_meshes_and_cameras_and_follow_the_seed():
    pairs = [(m, c) for m in range(100) for c in range(4)]
    a = ev.varied_samples(pairs, 6, seed=0)
    assert a == ev.varied_samples(list(reversed(pairs)), 6, seed=0)  # a function of the set and the seed
    assert a != ev.varied_samples(pairs, 6, seed=1)
    assert len(a) == 6 and a == sorted(a)
    # one sample in each sixth of the meshes, the cameras in turn
    assert [m * 6 // 100 for m, _ in a] == list(range(6))
    cams = [c for _, c in a]
    assert all((cams[i + 1] - cams[i]) % 4 == 1 for i in range(5))
    assert ev.varied_samples(pairs[:3], 6) == pairs[:3]  # fewer pairs than asked: all of them
    assert ev.varied_samples([], 6) == []


class _FixedPose(torch.nn.Module):
    """Predicts the same joints and mesh for every input (as the mean-pose baseline does)."""

    def __init__(self, joints: torch.Tensor, vertices: torch.Tensor, faces: np.ndarray):
        super().__init__()
        self.joints, self.vertices = joints, vertices
        self.faces = torch.as_tensor(faces)

    def forward(self, inputs):
        b = inputs.shape[0]
        return {"joints": self.joints.expand(b, -1, -1), "vertices": self.vertices.expand(b, -1, -1)}


def test_comparison_picture_shows_varied_samples_with_their_pa_mpjpe(reference_store, tmp_path):
    import cv2

    from mpt_data.preview import read_mesh_views
    from mpt_train.data import LoaderConfig, PairLoader
    from mpt_train.inputs import InputConfig, prepare_batch

    loader = PairLoader(LoaderConfig(shards=str(reference_store.path), split="val", batch_size=16, num_workers=0,
                                     pin_memory=False, joint_set="coco17").for_eval("val"))
    icfg = InputConfig.tiny().without_augmentation()

    def prepare(batch):
        mi = prepare_batch(batch, icfg, "cpu")
        return mi.tokens, {"joints3d": mi.joints3d, "vertices": mi.vertices, "joints2d": mi.joints2d,
                           "visible": mi.visible}

    truth, t0 = {}, None  # (mesh, camera) -> true camera-frame coco17 joints, from a whole pass of the loader
    for batch in loader:
        _, t = prepare(batch)
        t0 = t if t0 is None else t0
        for i, key in enumerate(zip(batch["mesh"].tolist(), batch["camera"].tolist())):
            truth[key] = t["joints3d"][i].numpy()
    faces = read_mesh_views(reference_store.path, next(iter(truth))[0]).faces
    model = _FixedPose(t0["joints3d"][:1], t0["vertices"][:1], faces)

    out = tmp_path / "cmp.png"
    drawn = ev.comparison_picture(model, loader, prepare, str(out), num=5, seed=3)
    assert [(m, c) for m, c, _ in drawn] == ev.varied_samples(truth, 5, seed=3)
    assert len({c for _, c, _ in drawn}) >= 4  # the store's four cameras
    fixed = t0["joints3d"][0].numpy().astype(np.float64)
    for m, c, err in drawn:  # the figure on each tile: Procrustes-aligned mean joint error, in mm
        g = truth[(m, c)].astype(np.float64)
        want = np.linalg.norm(np_procrustes(fixed, g) - g, axis=-1).mean() * 1000
        assert abs(err - want) < 0.05, (m, c, err, want)

    img = cv2.imread(str(out))
    assert img.shape == (len(ev.PICTURE_ROWS) * 224, 130 + 5 * 224, 3)
    labels = img[:, :130]
    for r in range(len(ev.PICTURE_ROWS)):  # every row has its label (dark text on the light label column)
        assert (labels[r * 224 : (r + 1) * 224] < 100).all(-1).sum() > 50, ev.PICTURE_ROWS[r]
    for j in range(5):
        col = img[:, 130 + j * 224 : 130 + (j + 1) * 224]
        heat = col[:224]
        assert ((heat[..., 2].astype(int) > 150) & (heat[..., 0] < 80)).sum() > 20  # hot heatmap pixels
        assert (col[224:448] < 200).any(-1).mean() > 0.01 and (col[448:] < 200).any(-1).mean() > 0.01  # meshes


def test_body_sheet_key_names_the_colours_and_every_row_and_column():
    from mpt_data.synth import picture as sp

    tile = 150  # the key's swatches need about 400 px
    columns = [np.full((3 * tile, tile, 3), 245, np.uint8) for _ in range(3)]
    sheet = sp.sheet_with_key(columns, ("rest", "walk", "run"), ("neutral", "male", "female"))
    assert sheet.shape == (sp.HEADER_PX + 3 * tile + sp.LEGEND_PX, sp.LABEL_PX + 3 * tile, 3)
    np.testing.assert_array_equal(sheet[sp.HEADER_PX + 1 : sp.HEADER_PX + tile, sp.LABEL_PX :], 245)  # tiles kept
    key = sheet[-sp.LEGEND_PX :]
    for colour in sp._GENDER_COLOURS.values():  # a swatch of each body colour
        assert (key == colour).all(-1).sum() >= 14 * 14
    dark = (sheet < 100).all(-1)
    for r in range(3):  # a row name beside each row
        assert dark[sp.HEADER_PX + r * tile : sp.HEADER_PX + (r + 1) * tile, : sp.LABEL_PX].sum() > 20
    for c in range(3):  # a title over each column
        assert dark[: sp.HEADER_PX, sp.LABEL_PX + c * tile : sp.LABEL_PX + (c + 1) * tile].sum() > 20


def test_body_sheet_bodies_wear_the_colour_their_title_names(build_inputs):
    from mpt_data.synth import motion as sm
    from mpt_data.synth import picture as sp

    tile = 120
    sheet = sp.pose_sheet(build_inputs.body_dir, seed=0, tile=tile)
    columns = 1 + len(sm.MOTIONS)
    assert sheet.shape == (sp.HEADER_PX + 3 * tile + sp.LEGEND_PX, sp.LABEL_PX + columns * tile, 3)
    genders = ["neutral", "male", "female", "neutral", "male", "female", "neutral", "male"]
    for c, gender in enumerate(genders):
        block = sheet[sp.HEADER_PX : sp.HEADER_PX + 3 * tile, sp.LABEL_PX + c * tile : sp.LABEL_PX + (c + 1) * tile]
        px = block.reshape(-1, 3).astype(np.float64)
        # shaded body pixels are the model's colour times a brightness: same direction in colour space;
        # the two background greys are not
        grey = np.ptp(px, axis=1) < 20
        body = px[~grey & (px.sum(1) > 60)]
        assert len(body) > 300, (c, gender)
        want = np.array(sp._GENDER_COLOURS[gender], np.float64)
        cos = body @ want / (np.linalg.norm(body, axis=1) * np.linalg.norm(want))
        assert np.median(cos) > 0.995, (c, gender, np.median(cos))
