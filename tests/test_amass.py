"""AMASS reading/validation (mpt_data.amass) and deterministic sparse sampling (mpt_data.sampling)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mpt_data import conventions as cv
from mpt_data.amass import MotionError, file_sha256, find_motion_files, read_motion, subset_and_subject
from mpt_data.sampling import allocate_target, sample_count, sample_indices, total_count


def _smplh(path: Path, frames: int = 10, **override) -> Path:
    rng = np.random.default_rng(0)
    fields = {
        "poses": rng.normal(0, 0.2, (frames, 156)), "trans": rng.normal(0, 1, (frames, 3)),
        "betas": rng.normal(0, 1, 16), "gender": np.array(b"female"), "mocap_framerate": np.array(120.0),
        "dmpls": np.zeros((frames, 8)),
    }
    fields.update(override)
    fields = {k: v for k, v in fields.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)
    return path


def _smplx(path: Path, frames: int = 6) -> tuple[Path, np.ndarray]:
    poses = np.arange(frames * 165, dtype=np.float64).reshape(frames, 165) / 1000.0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, poses=poses, trans=np.zeros((frames, 3)), betas=np.zeros(10), gender=np.array("neutral"),
             mocap_frame_rate=np.array(60.0), surface_model_type=np.array("smplx"))
    return path, poses


def test_reads_smplh_file(tmp_path):
    p = _smplh(tmp_path / "CMU" / "01" / "01_01_poses.npz")
    m = read_motion(p, tmp_path)
    assert (m.path, m.subset, m.subject, m.layout, m.gender, m.fps) == (
        "CMU/01/01_01_poses.npz", "CMU", "01", "smplh", "female", 120.0)
    raw = np.load(p)
    assert m.poses.dtype == np.float32 and m.poses.shape == (10, 156)
    np.testing.assert_allclose(m.poses, raw["poses"], rtol=1e-6)
    np.testing.assert_allclose(m.trans, raw["trans"], rtol=1e-6)
    assert m.betas.shape == (16,) and m.num_frames == 10


def test_reads_smplx_file_dropping_jaw_and_eyes(tmp_path):
    p, poses = _smplx(tmp_path / "SSM" / "s1" / "walk_stageii.npz")
    m = read_motion(p, tmp_path)
    assert m.layout == "smplx" and m.fps == 60.0 and m.gender == "neutral"
    assert m.poses.shape == (6, 156)
    # body (22 joints) then hands: columns 66..74 (jaw, eyes) are gone
    np.testing.assert_allclose(m.poses[:, :66], poses[:, :66], rtol=1e-6)
    np.testing.assert_allclose(m.poses[:, 66:], poses[:, 75:], rtol=1e-6)
    assert len(cv.SMPLX_TO_SMPLH_POSE_COLUMNS) == 156


def test_find_motion_files_skips_shapes_and_others(tmp_path):
    a = _smplh(tmp_path / "B" / "s2" / "x_poses.npz")
    b = _smplh(tmp_path / "A" / "s1" / "y_poses.npz")
    c, _ = _smplx(tmp_path / "A" / "s1" / "z_stageii.npz")
    np.savez(tmp_path / "A" / "s1" / "shape.npz", betas=np.zeros(16))
    np.savez(tmp_path / "A" / "s1" / "z_stagei.npz", betas=np.zeros(16))
    (tmp_path / "A" / "s1" / "notes_poses.txt").write_text("x")
    assert find_motion_files(tmp_path) == [b, c, a]
    assert subset_and_subject("A/s1/y_poses.npz") == ("A", "s1")
    assert subset_and_subject("A/y_poses.npz") == ("A", "")


def test_symlinked_subsets_and_files_keep_their_names_under_the_root(tmp_path):
    """Subsets linked in from elsewhere are found and read with the link's subset/subject; a link
    cycle ends; hidden folders stay skipped."""
    root, elsewhere = tmp_path / "amass", tmp_path / "unpacked"
    own = _smplh(root / "KIT" / "s2" / "a_poses.npz")
    target = _smplh(elsewhere / "CMU_v2" / "07" / "b_poses.npz", frames=7)
    (root / "CMU").symlink_to(elsewhere / "CMU_v2", target_is_directory=True)
    (root / "KIT" / "s2" / "c_poses.npz").symlink_to(target)
    (root / "KIT" / "s2" / "loop").symlink_to(root / "KIT", target_is_directory=True)
    _smplh(root / ".trash" / "s" / "d_poses.npz")
    found = find_motion_files(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "CMU/07/b_poses.npz", "KIT/s2/a_poses.npz", "KIT/s2/c_poses.npz"]
    linked = read_motion(found[0], root)
    assert (linked.path, linked.subset, linked.subject, linked.num_frames) == ("CMU/07/b_poses.npz", "CMU", "07", 7)
    assert read_motion(found[2], root).subset == "KIT" and read_motion(own, root).num_frames == 10
    with pytest.raises(MotionError, match="not under the AMASS root"):
        read_motion(target, root)


def test_fps_override_replaces_the_file_rate(tmp_path):
    p = _smplh(tmp_path / "BMLhandball" / "s" / "t_poses.npz", mocap_framerate=None)
    with pytest.raises(MotionError, match="mocap_framerate missing"):
        read_motion(p, tmp_path)
    assert read_motion(p, tmp_path, {"BMLhandball": 50.0}).fps == 50.0


def _truncated(path: Path) -> Path:
    _smplh(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD = [
    ("missing poses", lambda p: _smplh(p, poses=None), "missing key 'poses'"),
    ("missing trans", lambda p: _smplh(p, trans=None), "missing key 'trans'"),
    ("nan", lambda p: _smplh(p, poses=np.full((10, 156), np.nan)), "NaN in poses"),
    ("inf", lambda p: _smplh(p, trans=np.full((10, 3), np.inf)), "inf in trans"),
    ("zero frames", lambda p: _smplh(p, poses=np.zeros((0, 156)), trans=np.zeros((0, 3))), "zero frames"),
    ("gender", lambda p: _smplh(p, gender=np.array("x")), "unknown gender 'x'"),
    ("zero fps", lambda p: _smplh(p, mocap_framerate=np.array(0.0)), "mocap_framerate missing or zero"),
    ("poses shape", lambda p: _smplh(p, poses=np.zeros((10, 72))), "poses has shape"),
    ("trans shape", lambda p: _smplh(p, trans=np.zeros((9, 3))), "trans has shape"),
    ("betas shape", lambda p: _smplh(p, betas=np.zeros((2, 3))), "betas has shape"),
    ("layout clash", lambda p: _smplh(p, surface_model_type=np.array("smplx")), "surface_model_type"),
    ("pickled gender", lambda p: _smplh(p, gender=np.array([{"a": 1}], dtype=object)), "pickled"),
    ("text file", lambda p: p.write_text("not a zip") or p, "not a zip archive (a text or other file"),
    ("npy file", lambda p: np.save(open(p, "wb"), np.zeros(3)) or p, "not a zip/npz"),
    ("truncated", _truncated, "corrupt zip"),
]


@pytest.mark.parametrize("name,make,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_files_raise_motion_error_with_reason(tmp_path, name, make, reason):
    p = tmp_path / "S" / "j" / "bad_poses.npz"
    p.parent.mkdir(parents=True)
    make(p)
    with pytest.raises(MotionError) as err:
        read_motion(p, tmp_path)
    assert reason in str(err.value)


def test_corrupted_member_is_reported(tmp_path):
    p = _smplh(tmp_path / "S" / "j" / "c_poses.npz")
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("poses.npy")
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the stored array bytes
    raw[start: start + 8] = b"\xff" * 8
    p.write_bytes(bytes(raw))
    with pytest.raises(MotionError, match="corrupt zip"):
        read_motion(p, tmp_path)


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert file_sha256(p, chunk_bytes=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


# ---------------------------------------------------------------------------------------------
# Sampling


def test_sample_indices_even_stride_from_zero():
    np.testing.assert_array_equal(sample_indices(10, 120, 30), [0, 4, 8])
    # a stride of 10/3 frames: floor(k * 10 / 3)
    np.testing.assert_array_equal(sample_indices(11, 100, 30), [0, 3, 6, 10])
    np.testing.assert_array_equal(sample_indices(5, 30, 60), np.arange(5))
    np.testing.assert_array_equal(sample_indices(1, 120, 1), [0])


@pytest.mark.parametrize("frames,fps,rate", [(1000, 120, 7.3), (999, 59.94, 10), (17, 100, 99.9), (5000, 250, 0.5)])
def test_sample_count_matches_indices(frames, fps, rate):
    idx = sample_indices(frames, fps, rate)
    assert idx.shape[0] == sample_count(frames, fps, rate)
    assert idx[0] == 0 and idx[-1] < frames and np.all(np.diff(idx) > 0)
    # spacing in time is the target rate's period, up to one source frame
    assert np.all(np.abs(np.diff(idx) / fps - 1 / rate) <= 1 / fps + 1e-9)


def test_allocate_target_hits_the_total_and_ignores_order():
    rng = np.random.default_rng(3)
    frames = rng.integers(50, 5000, 300)
    fps = rng.choice([60.0, 100.0, 120.0, 250.0], 300)
    target = 20000
    rate = allocate_target(frames, fps, target)
    total = total_count(frames, fps, rate)
    assert abs(total - target) <= 10, total
    assert sum(len(sample_indices(int(t), float(f), rate)) for t, f in zip(frames, fps)) == total
    perm = rng.permutation(300)
    assert allocate_target(frames[perm], fps[perm], target) == rate
    # more than all frames: keep everything
    assert total_count(frames, fps, allocate_target(frames, fps, int(frames.sum()) + 5)) == frames.sum()
    # fewer than one per sequence: one per sequence
    assert total_count(frames, fps, allocate_target(frames, fps, 10)) == 300
