"""The synthetic body model: smplx loading, topology, regressor, skinning, shape, determinism."""

import json
import pickle

import numpy as np
import pytest
import torch

from mpt_data import conventions as cv
from mpt_data.synth import body as sb
from mpt_data.synth import surface as ss

N = 1500


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from body_model_files import write_body_models

    out = tmp_path_factory.mktemp("body_models")
    write_body_models(out, seed=0, num_vertices=N)  # built once per session; the bytes test rebuilds
    return out


def _smpl(models, gender="neutral"):
    import smplx

    ids = json.loads((models / "vertex_ids.json").read_text())["smplx"]
    return smplx.SMPL(str(models / "smpl"), gender=gender, vertex_ids=ids)


def _smplh(models, gender="neutral"):
    import smplx

    ids = json.loads((models / "vertex_ids.json").read_text())["smplx"]
    return smplx.SMPLH(str(models / "smplh"), gender=gender, vertex_ids=ids, use_pca=False, flat_hand_mean=True)


def test_files_load_through_smplx(models):
    for gender in sb.GENDERS:
        m = _smpl(models, gender)
        with torch.no_grad():
            out = m()
        assert out.vertices.shape == (1, N, 3)
        d = pickle.loads((models / "smpl" / f"SMPL_{gender.upper()}.pkl").read_bytes())
        assert np.allclose(out.vertices[0].numpy(), d["v_template"], atol=1e-6)
        assert d["posedirs"].shape == (N, 3, 207) and d["weights"].shape == (N, 24)
        assert d["shapedirs"].shape == (N, 3, 16) and d["J_regressor"].shape == (24, N)
        h = _smplh(models, gender)
        with torch.no_grad():
            outh = h()
        assert outh.vertices.shape == (1, N, 3) and h.parents.shape == (52,)
        assert h.parents.tolist()[1:] == list(cv.SMPLH_PARENTS[1:])
        amass = np.load(models / "smplh" / gender / "model.npz")
        assert "hands_componentsl" not in amass.files
        assert amass["posedirs"].shape == (N, 3, 459) and amass["weights"].shape == (N, 52)
    ids = json.loads((models / "vertex_ids.json").read_text())
    assert set(ids["coco_face"]) == set(cv.COCO_FACE_KEYPOINTS)
    v = pickle.loads((models / "smpl" / "SMPL_NEUTRAL.pkl").read_bytes())["v_template"]
    face = {k: v[i] for k, i in ids["coco_face"].items()}
    assert face["nose"][2] > face["left_eye"][2] > face["left_ear"][2]  # nose furthest forward
    assert face["left_eye"][0] > 0 > face["right_eye"][0] and face["left_ear"][0] > 0 > face["right_ear"][0]


def test_surface_is_closed_oriented_and_human_sized(models):
    d = pickle.loads((models / "smplh" / "SMPLH_NEUTRAL.pkl").read_bytes())
    v, f = d["v_template"], d["f"].astype(np.int64)
    assert ss.edge_manifold_report(f) == (0, 0)  # every edge in exactly 2 faces, one each way
    assert len(v) - 3 * len(f) // 2 + len(f) == 2  # Euler characteristic of a sphere
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert 0.04 < volume < 0.11  # m^3, outward normals; a person is ~0.07
    height = np.ptp(v[:, 1])
    assert 1.6 < height < 1.85
    assert np.ptp(v[:, 0]) > 1.5  # arms out in the rest pose


def test_regressor_reproduces_rest_joints(models):
    for kind, name, J in (("smpl", "SMPL", 24), ("smplh", "SMPLH", 52)):
        for gender in sb.GENDERS:
            d = pickle.loads((models / kind / f"{name}_{gender.upper()}.pkl").read_bytes())
            R = d["J_regressor"]
            assert R.shape == (J, N) and (R >= 0).all() and np.allclose(R.sum(axis=1), 1)
            assert np.abs(R @ d["v_template"] - d["J"]).max() < 1e-5
            assert ((R > 0).sum(axis=1) >= 3).all()
    designed, _ = sb.design_joints()
    d = pickle.loads((models / "smplh" / "SMPLH_NEUTRAL.pkl").read_bytes())
    assert np.abs(d["J"] - designed).max() < 5e-3


def test_elbow_bend_moves_forearm_not_torso(models):
    m = _smpl(models)
    d = pickle.loads((models / "smpl" / "SMPL_NEUTRAL.pkl").read_bytes())
    v, w = d["v_template"], d["weights"]
    pose = torch.zeros(1, 69)
    pose[0, (18 - 1) * 3 + 1] = -1.5  # left elbow, flex forward
    with torch.no_grad():
        bent = m(body_pose=pose).vertices[0].numpy()
    moved = np.linalg.norm(bent - v, axis=1)
    elbow_x = d["J"][18, 0]
    forearm = (v[:, 0] > elbow_x + 0.08) & (v[:, 0] < d["J"][20, 0])
    torso = (np.abs(v[:, 0]) < 0.12) & (v[:, 1] > -0.1) & (v[:, 1] < 0.35)
    assert forearm.sum() > 10 and torso.sum() > 50
    assert moved[forearm].min() > 0.05
    assert moved[torso].max() < 1e-6
    assert moved[v[:, 0] < 0].max() < 1e-6  # the right side does not move
    # bending is continuous: no vertex jumps further than the hand tip travels
    assert moved.max() < 1.5 * np.linalg.norm(v[:, 0].max() - elbow_x) * 1.5
    assert w[forearm].argmax(axis=1).tolist().count(18) > 0.8 * forearm.sum()


def test_finger_curl_moves_only_its_finger(models):
    h = _smplh(models)
    ids = json.loads((models / "vertex_ids.json").read_text())["smplx"]
    hand = torch.zeros(1, 45)
    hand[0, 3 * 0 + 2] = -1.2  # left_index1 curls towards the palm
    with torch.no_grad():
        rest = h().vertices[0].numpy()
        curled = h(left_hand_pose=hand).vertices[0].numpy()
    moved = np.linalg.norm(curled - rest, axis=1)
    assert moved[ids["lindex"]] > 0.03
    assert moved[ids["lmiddle"]] < 0.005 and moved[ids["rindex"]] == 0
    assert curled[ids["lindex"], 1] < rest[ids["lindex"], 1] - 0.02  # downwards, to the palm side


def test_shape_direction_zero_changes_height_monotonically(models):
    m = _smpl(models)
    heights = []
    for b0 in (-2.0, -1.0, 0.0, 1.0, 2.0):
        betas = torch.zeros(1, 10)
        betas[0, 0] = b0
        with torch.no_grad():
            heights.append(float(np.ptp(m(betas=betas).vertices[0, :, 1].numpy())))
    assert all(b > a + 0.05 for a, b in zip(heights, heights[1:]))
    d = pickle.loads((models / "smpl" / "SMPL_NEUTRAL.pkl").read_bytes())
    sd = d["shapedirs"]
    assert np.linalg.matrix_rank(sd.reshape(-1, sd.shape[2])) == sd.shape[2]  # 16 distinct directions
    girth = np.linalg.norm(sd[:, [0, 2], 1], axis=1)  # direction 1 moves vertices sideways/forwards
    assert girth.max() > 0.005
    male = pickle.loads((models / "smpl" / "SMPL_MALE.pkl").read_bytes())["v_template"]
    female = pickle.loads((models / "smpl" / "SMPL_FEMALE.pkl").read_bytes())["v_template"]
    assert np.ptp(male[:, 1]) > np.ptp(d["v_template"][:, 1]) > np.ptp(female[:, 1])


def test_same_seed_same_bytes(models, tmp_path):
    sb.write_body_models(tmp_path, seed=0, num_vertices=N)
    for p in sorted(models.rglob("*")):
        if p.is_file():
            assert (tmp_path / p.relative_to(models)).read_bytes() == p.read_bytes(), p


def test_the_smallest_accepted_size_builds_and_smaller_is_refused(models):
    """`mpt-data synth --vertices` accepts MIN_VERTICES (the size every test above builds) and refuses one
    fewer with the reason, instead of failing deep in the regressor solve (500 used to be accepted)."""
    from click.testing import CliRunner

    from mpt_data.cli import main

    assert N == sb.MIN_VERTICES
    d = pickle.loads((models / "smplh" / "SMPLH_NEUTRAL.pkl").read_bytes())
    assert d["v_template"].shape == (sb.MIN_VERTICES, 3)
    res = CliRunner().invoke(main, ["synth", "--out", "unused", "--vertices", str(sb.MIN_VERTICES - 1)])
    assert res.exit_code == 2 and f"need --vertices >= {sb.MIN_VERTICES}" in res.output
    with pytest.raises(ValueError, match=f"at least {sb.MIN_VERTICES} vertices"):
        sb.BodyConfig(num_vertices=500)


def test_mirror_vertex_map_is_an_involution_from_left_to_right(models):
    from mpt_data.topology import symmetric_vertex_map

    v = pickle.loads((models / "smpl" / "SMPL_NEUTRAL.pkl").read_bytes())["v_template"]
    flip = symmetric_vertex_map(v, tolerance_m=1e-9)  # the surface is symmetric to rounding, not 1 cm
    assert flip is not None
    assert np.array_equal(flip[flip], np.arange(N))
    moved = flip != np.arange(N)
    assert np.array_equal(np.sign(v[moved, 0]), -np.sign(v[flip[moved], 0]))  # left <-> right, never same side
    assert np.all(v[moved, 0] != 0) and np.all(v[~moved, 0] == 0)  # only midline vertices map to themselves
    assert moved.sum() > 0.9 * N
    assert np.abs(v[flip] * [-1, 1, 1] - v).max() < 1e-12


def test_mirrored_pose_poses_the_mirrored_mesh(models):
    """smplx with the left-right flipped pose (joints swapped, axis-angle y and z negated) gives the mirror
    image of the original mesh, vertex i at the mirror of vertex flip[i], for random shapes too."""
    from mpt_data.topology import symmetric_vertex_map
    from mpt_train.augment import SMPL_FLIP

    m = _smpl(models)
    flip = symmetric_vertex_map(m.v_template.numpy(), tolerance_m=1e-9)
    g = torch.Generator().manual_seed(3)
    pose = 0.4 * torch.randn(4, 24, 3, generator=g, dtype=torch.float64).float()
    betas = torch.randn(4, 10, generator=g)
    mirrored = pose[:, SMPL_FLIP].clone()
    mirrored[..., 1:] *= -1
    with torch.no_grad():
        a = m(global_orient=pose[:, 0], body_pose=pose[:, 1:].reshape(4, -1), betas=betas)
        b = m(global_orient=mirrored[:, 0], body_pose=mirrored[:, 1:].reshape(4, -1), betas=betas)
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(b.vertices, (a.vertices * mirror)[:, flip], atol=1e-5)
    joints_a = a.joints[:, :24] * mirror
    assert torch.allclose(b.joints[:, :24], joints_a[:, SMPL_FLIP], atol=1e-5)


def test_a_flipped_image_sample_keeps_its_mesh_and_it_is_the_mirrored_body(models):
    """The fine-tuning flip (mpt_train.augment) with the body's mirror-vertex map: the flipped sample keeps
    its mesh label, and that mesh and its joints are what the body model gives for the flipped pose."""
    from mpt_data.topology import symmetric_vertex_map
    from mpt_train.augment import COCO_FLIP, AugmentParams, augment_pose, augment_sample

    m = _smpl(models)
    flip = symmetric_vertex_map(m.v_template.numpy(), tolerance_m=1e-9)
    rng = np.random.default_rng(5)
    pose = (0.35 * rng.normal(size=72)).astype(np.float32)
    betas = torch.from_numpy(rng.normal(size=(1, 10)).astype(np.float32))

    def body(p):
        p = torch.from_numpy(p)[None]
        with torch.no_grad():
            out = m(global_orient=p[:, :3], body_pose=p[:, 3:], betas=betas)
        root = out.joints[0, 0]
        coco = torch.einsum("jv,vc->jc", torch.from_numpy(_coco_regressor(models)).float(), out.vertices[0])
        return (out.vertices[0] - root).numpy(), (coco - root).numpy()

    verts, joints = body(pose)
    sample = {"image": np.zeros((64, 64, 3), np.uint8), "joints2d": np.full((17, 3), 32.0, np.float32),
              "joints3d": joints, "joints3d_conf": np.ones(17, bool), "vertices": verts, "has_vertices": True,
              "pose": pose}
    params = AugmentParams(rotation_deg=20.0, flip=True)
    out = augment_sample(sample, 1.0, params, 64, flip)
    assert out["has_vertices"]
    want_v, want_j = body(augment_pose(pose, params))
    np.testing.assert_allclose(out["vertices"], want_v, atol=1e-5)
    np.testing.assert_allclose(out["joints3d"], want_j, atol=1e-5)
    assert np.array_equal(COCO_FLIP[COCO_FLIP], np.arange(17))
    no_map = augment_sample(sample, 1.0, params, 64, None)  # without a map the mesh label is dropped, never kept
    assert not no_map["has_vertices"] and not no_map["vertices"].any()


def _coco_regressor(models) -> np.ndarray:
    """(17, V) COCO-17 regressor of the store's coco17 set for these files (mpt_data.body's definition)."""
    from mpt_data.body import BodyModel, BodyModelConfig

    model = BodyModel.load(BodyModelConfig(str(models), "smpl"), "neutral")
    return model.joint_regressors()["coco17"]
