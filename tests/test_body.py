"""Body-model files and the batched forward (mpt_data.body), checked against plain smplx."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from mpt_data import conventions as cv
from mpt_data.body import (
    BodyModel, BodyModelConfig, ModelFileError, find_model_file, load_body_models, load_model_file,
)
from toy_body_model import tiny_body_model

FACE_IDS = {k: 5 + 11 * i for i, k in enumerate(cv.COCO_FACE_KEYPOINTS)}
SMPLX_VERTEX_IDS = {k: 0 for k in ("nose reye leye rear lear LBigToe LSmallToe LHeel RBigToe RSmallToe RHeel "
                                   "lthumb lindex lmiddle lring lpinky rthumb rindex rmiddle rring rpinky").split()}


def _plain_smplx(data: dict, batch: int, num_betas: int = 10):
    """smplx's own SMPL+H as AMASS drives it (the reference)."""
    import smplx
    from smplx.utils import Struct

    ds = dict(data)
    for side in "lr":
        ds.setdefault(f"hands_components{side}", np.zeros((45, 45)))
        ds.setdefault(f"hands_mean{side}", np.zeros(45))
    return smplx.SMPLH(model_path="", data_struct=Struct(**ds), use_pca=False, flat_hand_mean=True,
                       num_betas=num_betas, batch_size=batch, vertex_ids=SMPLX_VERTEX_IDS)


def _random_batch(b: int, seed: int = 1, scale: float = 0.4):
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (b, 156)).astype(np.float32), rng.normal(0, 1, (b, 16)).astype(np.float32)


def test_forward_matches_plain_smplx():
    data = tiny_body_model()
    model = BodyModel(data, FACE_IDS, num_betas=16)
    poses, betas = _random_batch(6)
    betas[:, 10:] = 0  # smplx uses only 10 betas of a file with fewer than 300
    out = model.forward(poses, betas)
    ref = _plain_smplx(data, 6)
    p = torch.from_numpy(poses)
    r = ref(betas=torch.from_numpy(betas[:, :10]), global_orient=p[:, :3], body_pose=p[:, 3:66],
            left_hand_pose=p[:, 66:111], right_hand_pose=p[:, 111:])
    root = r.joints[:, :1].detach().numpy()
    np.testing.assert_allclose(out["vertices"], r.vertices.detach().numpy() - root, atol=1e-5)
    np.testing.assert_allclose(out["skeleton"], r.joints[:, :52].detach().numpy() - root, atol=1e-5)
    assert out["vertices"].dtype == np.float32
    np.testing.assert_allclose(out["skeleton"][:, 0], 0, atol=1e-7)
    np.testing.assert_array_equal(out["smpl24"], out["skeleton"][:, list(cv.SMPLH_TO_SMPL24)])
    assert model.joint_sets == ("smpl24", "coco17")


def test_smpl_forward_matches_plain_smplx_over_several_blocks():
    """SMPL (24 joints) against smplx.SMPL on random poses and shapes, with a batch of two and a half
    fused blocks (the padded last block included)."""
    import smplx
    from smplx.utils import Struct

    data = tiny_body_model(num_joints=24)
    model = BodyModel(data, FACE_IDS, model_type="smpl", num_betas=10)
    model.block = 8
    poses, betas = _random_batch(21, seed=7, scale=0.5)
    poses = np.ascontiguousarray(poses[:, :72])
    out = model.forward(poses, betas)
    ref = smplx.SMPL(model_path="", data_struct=Struct(**data), num_betas=10, batch_size=21,
                     vertex_ids=SMPLX_VERTEX_IDS)
    p = torch.from_numpy(poses)
    r = ref(betas=torch.from_numpy(betas[:, :10]), global_orient=p[:, :3], body_pose=p[:, 3:])
    root = r.joints[:, :1].detach().numpy()
    np.testing.assert_allclose(out["vertices"], r.vertices.detach().numpy() - root, atol=1e-5)
    np.testing.assert_allclose(out["skeleton"], r.joints[:, :24].detach().numpy() - root, atol=1e-5)
    assert out["vertices"].shape == (21, model.num_vertices, 3)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("correctives", [True, False])
def test_forward_is_bit_identical_whatever_the_batch_around_a_sample(threads, correctives):
    """A mesh's bytes depend on its own pose and betas only: the same frames forwarded alone, in small
    batches and at any offset inside a larger batch give identical bits (MKL rounds 1-3-row and, with
    two threads, 5-11-row products differently from larger ones; the forward runs fixed-size blocks)."""
    model = BodyModel(tiny_body_model(pose_correctives=correctives), FACE_IDS, num_betas=16,
                      h36m_regressor=np.full((17, 642), 1 / 642, np.float32))
    poses, betas = _random_batch(70, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        full = model.forward(poses, betas)
        for size in (1, 2, 3, 5, 7, 11, 17, 33):
            for start in (0, 1, 6, 70 - size):
                part = model.forward(poses[start:start + size], betas[start:start + size])
                for key, value in full.items():
                    assert np.array_equal(part[key], value[start:start + size]), (key, size, start)
    finally:
        torch.set_num_threads(before)


def test_all_sixteen_betas_are_used():
    data = tiny_body_model(pose_correctives=False)
    model = BodyModel(data, FACE_IDS, num_betas=16)
    assert model.num_betas == 16 and not model.has_pose_correctives
    poses = np.zeros((2, 156), np.float32)
    betas = np.zeros((2, 16), np.float32)
    betas[1, 12] = 2.0
    out = model.forward(poses, betas)
    moved = out["vertices"][1] - out["vertices"][0]
    sd = data["shapedirs"][:, :, 12] * 2.0
    jroot = data["J_regressor"][0] @ sd
    np.testing.assert_allclose(moved, sd - jroot, atol=1e-5)
    # truncation and padding of betas
    assert BodyModel(data, FACE_IDS, num_betas=8).num_betas == 8
    short = model.forward(poses, betas[:, :3])
    np.testing.assert_allclose(short["vertices"][1], out["vertices"][0], atol=1e-6)


def test_coco17_joints_and_regressor_agree_at_rest():
    data = tiny_body_model()
    model = BodyModel(data, FACE_IDS)
    b = 3
    _, betas = _random_batch(b, seed=5)
    out = model.forward(np.zeros((b, 156), np.float32), betas)
    regs = model.joint_regressors()
    for name in ("smpl24", "coco17"):
        assert regs[name].shape == (len(cv.JOINT_SETS[name]), model.num_vertices)
        np.testing.assert_allclose(np.einsum("jv,bvc->bjc", regs[name], out["vertices"]), out[name], atol=1e-5)
    sk = out["skeleton"]
    names = list(cv.SMPLH_JOINTS)
    coco = out["coco17"]
    for k in cv.COCO_FACE_KEYPOINTS:
        np.testing.assert_array_equal(coco[:, cv.COCO_JOINTS.index(k)], out["vertices"][:, FACE_IDS[k]])
    np.testing.assert_allclose(coco[:, cv.COCO_JOINTS.index("left_elbow")], sk[:, names.index("left_elbow")], atol=1e-7)
    lh, rh, lk = (sk[:, names.index(n)] for n in ("left_hip", "right_hip", "left_knee"))
    np.testing.assert_allclose(coco[:, cv.COCO_JOINTS.index("left_hip")], lh + 0.3 * (lh - rh) + 0.1 * (lh - lk),
                               atol=1e-6)


def test_h36m_regressor_and_smpl_model(tmp_path):
    data = tiny_body_model(num_joints=24, subdivisions=2)
    v = data["v_template"].shape[0]
    (tmp_path / "smpl").mkdir()
    with open(tmp_path / "smpl" / "SMPL_MALE.pkl", "wb") as f:
        pickle.dump(data, f)
    (tmp_path / "smpl" / "vertex_ids.json").write_text(json.dumps({"coco_face": FACE_IDS}))
    reg = np.random.default_rng(0).uniform(0, 1, (17, v)).astype(np.float32)
    reg /= reg.sum(1, keepdims=True)
    np.save(tmp_path / "J_regressor_h36m.npy", reg)
    cfg = BodyModelConfig(str(tmp_path), model_type="smpl", h36m_regressor=str(tmp_path / "J_regressor_h36m.npy"))
    model = BodyModel.load(cfg, "male")
    assert model.num_joints == 24 and model.joint_sets == ("smpl24", "coco17", "h36m17")
    poses, betas = _random_batch(4)
    out = model.forward(poses, betas)
    np.testing.assert_allclose(out["h36m17"], np.einsum("jv,bvc->bjc", reg, out["vertices"]), atol=1e-5)
    # SMPL takes the 22 body joints of the AMASS pose; its hand joints stay at rest
    poses2 = poses.copy()
    poses2[:, 66:] = 0
    np.testing.assert_allclose(model.forward(poses2, betas)["vertices"], out["vertices"], atol=1e-6)
    np.testing.assert_array_equal(out["smpl24"], out["skeleton"])
    np.save(tmp_path / "bad.npy", reg[:, :-1])
    with pytest.raises(ModelFileError, match="expected"):
        BodyModel.load(BodyModelConfig(str(tmp_path), model_type="smpl", h36m_regressor=str(tmp_path / "bad.npy")),
                       "male")


def test_amass_layout_npz_without_hand_keys_and_missing_files(tmp_path):
    data = tiny_body_model(subdivisions=2)
    for g in ("male", "female"):
        (tmp_path / "smplh" / g).mkdir(parents=True)
        np.savez(tmp_path / "smplh" / g / "model.npz", **data, bs_style=np.array("lbs"))
    (tmp_path / "smplh" / "vertex_ids.json").write_text(json.dumps({"coco_face": FACE_IDS}))
    cfg = BodyModelConfig(str(tmp_path))
    models = load_body_models(cfg, ("male", "female"))
    assert models["female"].model_file.endswith("female/model.npz")
    assert find_model_file(cfg, "male") == tmp_path / "smplh" / "male" / "model.npz"
    with pytest.raises(FileNotFoundError) as err:
        BodyModel.load(cfg, "neutral")
    assert "SMPLH_NEUTRAL.pkl" in str(err.value) and "neutral" in str(err.value)
    # a topology that is not SMPL's and has no vertex ids: a clear error
    (tmp_path / "smplh" / "vertex_ids.json").unlink()
    with pytest.raises(ModelFileError, match="vertex_ids.json"):
        BodyModel.load(cfg, "male")


# ---------------------------------------------------------------------------------------------
# Restricted unpickling of official-style files (chumpy, scipy.sparse) without those packages


@pytest.fixture
def fake_chumpy_scipy(monkeypatch):
    """Modules named like chumpy and scipy.sparse whose classes pickle as the real ones do."""
    ch_mod = types.ModuleType("chumpy.ch")
    sp_mod = types.ModuleType("scipy.sparse._csc")
    for parent in ("chumpy", "scipy", "scipy.sparse"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))

    class Ch:
        def __init__(self, x):
            self.x = x
            self.label = "v"

    class csc_matrix:  # noqa: N801 - the real class name
        def __init__(self, dense):
            cols = [np.flatnonzero(dense[:, j]) for j in range(dense.shape[1])]
            self.indices = np.concatenate(cols)
            self.indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])])
            self.data = np.concatenate([dense[c, j] for j, c in enumerate(cols)])
            self._shape = dense.shape
            self.maxprint = 50

    for cls, mod in ((Ch, ch_mod), (csc_matrix, sp_mod)):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return Ch, csc_matrix


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_reads_chumpy_and_sparse(tmp_path, fake_chumpy_scipy, protocol):
    Ch, csc = fake_chumpy_scipy
    rng = np.random.default_rng(0)
    dense = rng.uniform(0, 1, (4, 9)) * (rng.uniform(0, 1, (4, 9)) > 0.6)
    shapedirs = rng.normal(0, 1, (9, 3, 2))
    doc = {"J_regressor": csc(dense), "shapedirs": Ch(shapedirs), "f": np.arange(6).reshape(2, 3),
           "bs_style": "lbs", "pose_training_info": {"a": 1}}
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(doc, protocol=protocol))
    out = load_model_file(path)
    np.testing.assert_array_equal(out["J_regressor"], dense)
    np.testing.assert_array_equal(out["shapedirs"], shapedirs)
    np.testing.assert_array_equal(out["f"], doc["f"])
    assert str(out["bs_style"]) == "lbs" and "pose_training_info" not in out


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil()}))
    with pytest.raises(ModelFileError) as err:
        load_model_file(path)
    assert "evil.pkl" in str(err.value) and "system" in str(err.value)
    npz = tmp_path / "evil.npz"
    np.savez(npz, v_template=np.zeros((2, 3)), x=np.array([_Evil()], dtype=object))
    with pytest.raises(ModelFileError, match="not allowed"):
        load_model_file(npz)
    with pytest.raises(FileNotFoundError):
        load_model_file(tmp_path / "absent.pkl")


def test_synthetic_body_models(tmp_path):
    from body_model_files import write_body_models

    write_body_models(tmp_path, seed=0, num_vertices=1500)
    cfg = BodyModelConfig(str(tmp_path))
    for g in ("male", "female", "neutral"):
        path = find_model_file(cfg, g)
        model = BodyModel.load(cfg, g)
        data = load_model_file(path)
        poses, betas = _random_batch(3, scale=0.2)
        betas[:, 10:] = 0
        out = model.forward(poses, betas)
        ref = _plain_smplx(data, 3)
        p = torch.from_numpy(poses)
        r = ref(betas=torch.from_numpy(betas[:, :10]), global_orient=p[:, :3], body_pose=p[:, 3:66],
                left_hand_pose=p[:, 66:111], right_hand_pose=p[:, 111:])
        root = r.joints[:, :1].detach().numpy()
        np.testing.assert_allclose(out["vertices"], r.vertices.detach().numpy() - root, atol=1e-5)
    smpl = BodyModel.load(BodyModelConfig(str(tmp_path), model_type="smpl"), "neutral")
    assert smpl.num_joints == 24 and smpl.num_vertices == model.num_vertices


@pytest.mark.parametrize("num_joints", [52, 24])
def test_lbs_is_smplx_lbs_root_centred(num_joints):
    """The fused free `lbs` (tree levels, root at the origin, batch-last blend shapes) equals smplx's `lbs()`
    given the same model arrays, minus smplx's posed root."""
    from smplx.lbs import lbs as smplx_lbs

    from mpt_data.kinematics import chain_levels, lbs, plan_skinning

    data = dict(tiny_body_model(num_joints=num_joints))
    # Real models move each vertex with a few joints (at most 4 in SMPL): keep each vertex's 3 largest weights.
    w = np.asarray(data["weights"], np.float64)
    w[w < np.sort(w, axis=1)[:, -3:-2]] = 0
    data["weights"] = w / w.sum(1, keepdims=True)
    poses, betas = _random_batch(5)
    poses = np.ascontiguousarray(poses[:, : 3 * num_joints])

    def f32(key):
        return torch.tensor(np.asarray(data[key], np.float64), dtype=torch.float32)

    v_template, shapedirs, j_reg, weights, posedirs = (f32(k) for k in ("v_template", "shapedirs", "J_regressor",
                                                                         "weights", "posedirs"))
    nb = shapedirs.shape[2]
    parents = torch.tensor(np.asarray(data["kintree_table"], np.int64)[0])
    parents[0] = -1
    b, p = torch.from_numpy(betas[:, :nb]), torch.from_numpy(poses)
    ref_v, ref_j = smplx_lbs(b, p, v_template, shapedirs, posedirs.reshape(-1, posedirs.shape[2]).T, j_reg,
                             parents, weights)
    root = ref_j[:, :1]
    plan = plan_skinning(weights.numpy(), chunk=100)
    dense = torch.zeros_like(weights)  # the plan holds every non-zero weight and nothing else
    for i, (j, w) in enumerate(plan.chunks):
        dense[100 * i: 100 * i + w.shape[0], j] = w
    assert plan.num_vertices == v_template.shape[0] and torch.equal(dense, weights)
    assert min(len(j) for j, _ in plan.chunks) < num_joints  # chunks leave out the joints that do not move them
    verts, joints = lbs(b, p, v_template.reshape(-1, 1), shapedirs.reshape(-1, nb),
                        posedirs.reshape(-1, posedirs.shape[2]), j_reg @ v_template,
                        torch.einsum("jv,vcb->bjc", j_reg, shapedirs).reshape(nb, -1),
                        chain_levels(parents.tolist()), plan)
    assert verts.shape == ref_v.shape and joints.shape == ref_j.shape
    np.testing.assert_allclose(verts.numpy(), (ref_v - root).numpy(), atol=1e-5)
    np.testing.assert_allclose(joints.numpy(), (ref_j - root).numpy(), atol=1e-5)
    assert np.all(joints[:, 0].numpy() == 0)  # the chain starts at the origin


def test_chain_levels_group_joints_by_depth():
    from mpt_data.kinematics import chain_levels

    levels = chain_levels([-1, 0, 0, 1, 3, 2])
    assert levels == [([1, 2], [0, 0]), ([3, 5], [1, 2]), ([4], [3])]
    smplh = chain_levels([-1] + tiny_body_model()["kintree_table"][0].tolist()[1:])
    assert sum(len(j) for j, _ in smplh) == 51 and len(smplh) < 20  # every joint once, ~16 levels, not 51
    for bad in ([0, 0], [-1, 5], [-1, 2, 1]):
        with pytest.raises(ValueError):
            chain_levels(bad)
