"""Synthetic AMASS-format motions: keys, dtypes, shapes, smoothness, limits, determinism."""

from pathlib import Path

import numpy as np
import pytest

from mpt_data.synth import motion as sm


@pytest.fixture(scope="module")
def motions(tmp_path_factory):
    root = tmp_path_factory.mktemp("amass")
    return root, sm.write_motions(root, seed=3, num_sequences=8, seconds=1.5)


def test_amass_keys_dtypes_shapes_and_layout(motions):
    root, paths = motions
    smplh = [p for p in paths if p.name.endswith("_poses.npz")]
    assert len(smplh) == 8
    genders = set()
    for p in smplh:
        with np.load(p) as d:
            T = len(d["poses"])
            assert d["poses"].shape == (T, 156) and d["poses"].dtype == np.float64
            assert d["trans"].shape == (T, 3) and d["trans"].dtype == np.float64
            assert d["betas"].shape == (16,)
            fps = float(d["mocap_framerate"])
            assert 60 <= fps <= 120 and T == round(1.5 * fps)
            g = d["gender"].item()
            genders.add(g.decode() if isinstance(g, bytes) else g)
            assert np.isfinite(d["poses"]).all() and np.isfinite(d["trans"]).all()
        assert (p.parent / "shape.npz").is_file()
    assert genders <= {"male", "female", "neutral"} and len(genders) >= 2
    assert any(isinstance(np.load(p)["gender"].item(), bytes) for p in smplh)
    subsets = {p.relative_to(root).parts[0] for p in smplh}
    assert {"CMU", "HumanEva", "SSM_synced"} <= subsets  # train, val and test subsets
    smplx = [p for p in paths if p.name.endswith("_stageii.npz")]
    assert len(smplx) == 1
    with np.load(smplx[0]) as d:
        assert d["poses"].shape[1] == 165 and d["surface_model_type"].item() == "smplx"
        assert float(d["mocap_frame_rate"]) == 120.0
        assert np.all(d["poses"][:, 66:75] == 0)  # jaw and eyes
    assert list(smplx[0].parent.glob("*_stagei.npz"))


def test_motion_is_smooth_within_limits_and_upright(motions):
    _, paths = motions
    for p in paths:
        with np.load(p) as d:
            poses = d["poses"]
            fps = float(d["mocap_framerate"] if "mocap_framerate" in d else d["mocap_frame_rate"])
            if poses.shape[1] == 165:
                poses = poses[:, list(range(66)) + list(range(75, 165))]
            speed = sm.angular_speed(poses, fps)
            assert speed.max() < 20.0, (p, speed.max())  # rad/s: fast human limbs stay below ~20
            rot = poses.reshape(len(poses), 52, 3)
            assert np.allclose(sm.clip_to_limits(rot)[:, 1:], rot[:, 1:])
            up = sm.rotvec_to_matrix(rot[:, 0]) @ np.array([0.0, 1.0, 0.0])
            assert (up[:, 2] > 0.3).all()  # the template's y axis points up the world's z
            assert (d["trans"][:, 2] > 0.3).all() and (d["trans"][:, 2] < 2.0).all()


def test_every_motion_moves():
    subject = sm.Subject("x", "neutral", np.zeros(16))
    for kind in sm.MOTIONS:
        a = sm.synthesize_sequence(kind, 3.0, 60.0, subject, np.random.default_rng(0))
        body = a["poses"][:, 3:66]
        assert np.ptp(body, axis=0).max() > 0.3, kind
    walk = sm.synthesize_sequence("walk", 3.0, 60.0, subject, np.random.default_rng(0))
    assert np.linalg.norm(walk["trans"][-1, :2] - walk["trans"][0, :2]) > 2.0  # ~1.3 m/s
    sit = sm.synthesize_sequence("sit", 3.0, 60.0, subject, np.random.default_rng(0))
    assert sit["trans"][:, 2].min() < sit["trans"][0, 2] - 0.3


def test_rotation_round_trip():
    r = np.random.default_rng(0).normal(size=(200, 3))
    r *= (np.random.default_rng(1).uniform(0, 3.1, 200) / np.linalg.norm(r, axis=1))[:, None]
    assert np.allclose(sm.matrix_to_rotvec(sm.rotvec_to_matrix(r)), r, atol=1e-9)


def test_same_seed_same_bytes(tmp_path):
    a = sm.write_motions(tmp_path / "a", seed=5, num_sequences=3, seconds=0.5)
    sm.write_motions(tmp_path / "b", seed=5, num_sequences=3, seconds=0.5)
    c = sm.write_motions(tmp_path / "c", seed=6, num_sequences=3, seconds=0.5)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.npz"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.npz"))
    assert files_a == files_b and len(files_a) >= 6
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert a[0].read_bytes() != Path(c[0]).read_bytes()
