"""The MANO hand: the forward against smplx.MANO, mirroring, hands from SMPL+H bodies, fingertips, bad files,
and the synthetic MANO-format hand itself."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from mpt_data import conventions as cv
from mpt_data.hand import (HandModel, HandModelConfig, hand_pose_from_smplh, mirror_axis_angle, mirror_body_pose,
                           rotation_to_axis_angle, wrist_rotation)
from mpt_data.model_files import ModelFileError
from mpt_data.synth import surface as ss
from mpt_data.synth.hand import write_hand_models


@pytest.fixture(scope="module")
def hand_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hand_models")
    write_hand_models(d, seed=0)
    return d


def _rot(aa: np.ndarray) -> np.ndarray:
    """Rodrigues in float64, written apart from the module under test."""
    aa = np.asarray(aa, np.float64).reshape(-1, 3)
    out = []
    for v in aa:
        a = np.linalg.norm(v)
        if a < 1e-12:
            out.append(np.eye(3))
            continue
        k = v / a
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        out.append(np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx)
    return np.stack(out)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("flat", [True, False])
def test_forward_matches_smplx_mano(hand_dir, side, flat):
    smplx = pytest.importorskip("smplx")
    rng = np.random.default_rng(3)
    pose = rng.normal(0, 0.4, (6, 48))
    betas = rng.normal(0, 1, (6, 10))
    ours = HandModel.load(HandModelConfig(str(hand_dir), flat_hand_mean=flat), side).forward(pose, betas)
    ref = smplx.MANO(str(hand_dir), is_rhand=side == "right", use_pca=False, flat_hand_mean=flat, num_betas=10)
    f32 = dict(dtype=torch.float32)
    with torch.no_grad():
        out = ref(global_orient=torch.tensor(pose[:, :3], **f32), hand_pose=torch.tensor(pose[:, 3:], **f32),
                  betas=torch.tensor(betas, **f32))
    joints, verts = out.joints.numpy().astype(np.float64), out.vertices.numpy().astype(np.float64)
    wrist = joints[:, :1]
    np.testing.assert_allclose(ours["vertices"], verts - wrist, atol=1e-5)
    np.testing.assert_allclose(ours["skeleton"], joints[:, :16] - wrist, atol=1e-5)
    assert np.abs(ours["vertices"]).max() > 0.05  # a real hand, not zeros


def test_hand21_order_and_fingertips(hand_dir):
    model = HandModel.load(HandModelConfig(str(hand_dir)))
    ids = json.loads((hand_dir / "vertex_ids.json").read_text())["fingertips"]
    rng = np.random.default_rng(0)
    out = model.forward(rng.normal(0, 0.3, (3, 48)), np.zeros((3, 10)))
    tips = [ids[f] for f in cv.HAND21_FINGERS]
    np.testing.assert_array_equal(out["hand21"][:, list(cv.HAND21_TIPS)], out["vertices"][:, tips])
    for k, m in enumerate(cv.HAND21_FROM_MANO):
        if m >= 0:
            np.testing.assert_array_equal(out["hand21"][:, k], out["skeleton"][:, m])
    # The regressor reproduces the joints exactly in the rest pose.
    rest = model.forward(np.zeros((1, 48)), np.zeros((1, 10)))
    np.testing.assert_allclose(model.joint_regressors()["hand21"] @ rest["vertices"][0], rest["hand21"][0], atol=1e-6)
    # FreiHAND's order: each finger's four joints run away from the wrist, the tip farthest.
    d = np.linalg.norm(rest["hand21"][0], axis=1)
    for f in range(5):
        assert np.all(np.diff(d[1 + 4 * f: 5 + 4 * f]) > 0)


def test_official_fingertip_ids_without_vertex_ids_json(hand_dir, tmp_path):
    (tmp_path / "MANO_RIGHT.pkl").write_bytes((hand_dir / "MANO_RIGHT.pkl").read_bytes())
    model = HandModel.load(HandModelConfig(str(tmp_path)))
    assert model.tip_ids == cv.MANO_FINGERTIP_VERTEX_IDS


def test_mirroring_twice_is_the_identity():
    rng = np.random.default_rng(1)
    aa = rng.normal(0, 1, (5, 48))
    np.testing.assert_array_equal(mirror_axis_angle(mirror_axis_angle(aa)), aa)
    body = rng.normal(0, 0.5, (5, cv.AMASS_SMPLH_POSE_DIM))
    np.testing.assert_array_equal(mirror_body_pose(mirror_body_pose(body)), body)
    # One reflection: x of every rotation axis kept, y and z negated, left and right wrists swapped.
    m = mirror_body_pose(body).reshape(5, -1, 3)
    lw, rw = cv.SMPLH_JOINTS.index("left_wrist"), cv.SMPLH_JOINTS.index("right_wrist")
    np.testing.assert_array_equal(m[:, lw], body.reshape(5, -1, 3)[:, rw] * [1, -1, -1])


def test_left_hand_mirrored_is_the_right_hand_of_the_mirrored_body(hand_dir):
    rng = np.random.default_rng(2)
    body = rng.normal(0, 0.5, (8, cv.AMASS_SMPLH_POSE_DIM))
    left = hand_pose_from_smplh(body, "left")
    right_of_mirror = hand_pose_from_smplh(mirror_body_pose(body), "right")
    np.testing.assert_allclose(_rot(left), _rot(right_of_mirror), atol=1e-6)
    model = HandModel.load(HandModelConfig(str(hand_dir)))
    a = model.forward(left, np.zeros((8, 10)))["vertices"]
    b = model.forward(right_of_mirror, np.zeros((8, 10)))["vertices"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    # ... and it is the left model's mesh of the left hand reflected x -> -x.
    left_model = HandModel.load(HandModelConfig(str(hand_dir)), "left")
    unmirrored = mirror_axis_angle(left)
    c = left_model.forward(unmirrored, np.zeros((8, 10)))["vertices"] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_wrist_rotation_composes_the_chain():
    rng = np.random.default_rng(4)
    body = rng.normal(0, 0.5, (3, cv.AMASS_SMPLH_POSE_DIM))
    got = wrist_rotation(body, "right")
    for t in range(3):
        want = np.eye(3)
        for j in (0, 3, 6, 9, 14, 17, 19, 21):  # root, spine1-3, right collar, shoulder, elbow, wrist
            want = want @ _rot(body[t, 3 * j: 3 * j + 3])[0]
        np.testing.assert_allclose(got[t], want, atol=1e-12)
    out = hand_pose_from_smplh(body, "right")
    np.testing.assert_allclose(_rot(out[:, :3]), got, atol=1e-5)
    np.testing.assert_array_equal(out[:, 3:], body[:, 111:156].astype(np.float32))
    # Axis-angle from a matrix round-trips at every angle up to pi.
    aa = rng.normal(0, 1, (200, 3)) * rng.uniform(0, np.pi, (200, 1)) / 1.8
    np.testing.assert_allclose(_rot(rotation_to_axis_angle(_rot(aa))), _rot(aa), atol=1e-10)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo hand-pickle-ran",))


def test_bad_mano_files_are_refused_naming_the_file(hand_dir, tmp_path):
    good = pickle.loads((hand_dir / "MANO_RIGHT.pkl").read_bytes())
    cases = {
        "vertices": dict(good, v_template=good["v_template"][:700]),
        "missing": {k: v for k, v in good.items() if k != "weights"},
        "tree": dict(good, kintree_table=np.zeros((2, 16), np.int64)),
        "evil": dict(good, v_template=_Evil()),
    }
    expect = {"vertices": "778", "missing": "weights", "tree": "kintree_table", "evil": "not allowed|system"}
    for name, doc in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "MANO_RIGHT.pkl").write_bytes(pickle.dumps(doc, protocol=4))
        with pytest.raises(ModelFileError, match=expect[name]) as err:
            HandModel.load(HandModelConfig(str(d)))
        assert str(d / "MANO_RIGHT.pkl") in str(err.value)
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT"):
        HandModel.load(HandModelConfig(str(tmp_path / "nowhere")))


def test_synthetic_hand_is_a_closed_rigged_mano_file(hand_dir, tmp_path):
    data = pickle.loads((hand_dir / "MANO_RIGHT.pkl").read_bytes())
    assert data["v_template"].shape == (778, 3) and data["shapedirs"].shape == (778, 3, 10)
    assert data["posedirs"].shape == (778, 3, 135) and data["hands_components"].shape == (45, 45)
    assert ss.edge_manifold_report(data["f"].astype(np.int64)) == (0, 0)  # closed, consistently oriented
    assert len(data["f"]) == 2 * 778 - 4  # genus 0
    np.testing.assert_allclose(data["J_regressor"].sum(1), 1.0)
    np.testing.assert_allclose(data["weights"].sum(1), 1.0)
    np.testing.assert_allclose(data["hands_components"] @ data["hands_components"].T, np.eye(45), atol=1e-12)
    # Outward normals: the signed volume is positive, about a hand's (a few hundred cm^3).
    v, f = data["v_template"], data["f"].astype(np.int64)
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert 1e-4 < volume < 1e-3
    # Same seed, same bytes.
    write_hand_models(tmp_path, seed=0)
    assert (tmp_path / "MANO_RIGHT.pkl").read_bytes() == (hand_dir / "MANO_RIGHT.pkl").read_bytes()
