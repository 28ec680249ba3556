"""No single input file can kill a build: every bad kind of motion entry is skipped with its reason.

One in-process build reads an AMASS root holding two good motions and one entry of every bad kind
(implausible values, a header declaring a huge array, a small deflate bomb, not-a-zip, a folder, a
dangling link, a FIFO, a symlink loop); it must complete, give each bad entry a `sequences.parquet`
row with the right reason, and hold the good files' meshes.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from motion_files import motion_arrays, write_motion_files
from store_builds import Inputs, small_config
from mpt_data import amass, schema
from mpt_data import store as st
from mpt_data.build import run_build
from mpt_data.plan import scan_file

GOOD = (("CMU", "01", "walk", 60, 60.0, "male"), ("CMU", "02", "wave", 45, 60.0, "female"))
BOMB_FRAMES = 1_000_000  # poses (1e6, 156) float64: 1.25 GB once inflated, ~5 MB on disk

# entry name -> (how to make it, the phrase its skip reason must contain)
KINDS = {
    "huge_header_poses.npz": "poses declares shape (1000000000000, 156) of float64",
    "bomb_poses.npz": f"poses declares shape ({BOMB_FRAMES}, 156) of float64 = 1.16 GiB, over the 512 MiB limit",
    "big_pose_poses.npz": "poses hold a 1e+30 rad rotation (frame 5, joint 3)",
    "big_betas_poses.npz": "betas[0] is 500, beyond ±10",
    "far_trans_poses.npz": "trans reaches 1e+09 m (frame 7)",
    "negative_fps_poses.npz": "mocap_framerate is negative (-60 fps)",
    "absurd_fps_poses.npz": "mocap_framerate is 1e+06 fps, outside the plausible",
    "text_poses.npz": "not a zip archive (a text or other file, not an npz)",
    "folder_poses.npz": "not a regular file (a directory)",
    "dangling_poses.npz": "dangling symbolic link",
    "fifo_poses.npz": "not a regular file (a named pipe (FIFO))",
    "loop_poses.npz": "symbolic link loop",
}


def _npz_with_raw_poses(path: Path, header_shape: tuple[int, ...], zero_bytes: int, **zip_args) -> None:
    """An AMASS file whose poses member declares `header_shape` float64 but holds `zero_bytes` zero bytes,
    written in blocks so the test never holds the array."""
    fields = {k: v for k, v in motion_arrays(20, 60.0, "male", seed=5).items() if k != "poses"}
    with zipfile.ZipFile(path, "w", **zip_args) as zf:
        for key, value in fields.items():
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value))
        with zf.open("poses.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
            block = bytes(1 << 22)
            while zero_bytes:
                n = min(zero_bytes, len(block))
                f.write(block[:n])
                zero_bytes -= n


def write_bad_entries(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    good = motion_arrays(20, 60.0, "male", seed=7)

    def save(name: str, **changes) -> None:
        np.savez(d / name, **{**good, **changes})

    _npz_with_raw_poses(d / "huge_header_poses.npz", (10**12, 156), 64)
    _npz_with_raw_poses(d / "bomb_poses.npz", (BOMB_FRAMES, 156), BOMB_FRAMES * 156 * 8,
                        compression=zipfile.ZIP_DEFLATED, compresslevel=1)
    poses = good["poses"].copy()
    poses[5, 10] = 1e30  # joint 3, its y component
    save("big_pose_poses.npz", poses=poses)
    save("big_betas_poses.npz", betas=np.full(50, 500.0))
    trans = good["trans"].copy()
    trans[7, 2] = 1e9
    save("far_trans_poses.npz", trans=trans)
    save("negative_fps_poses.npz", mocap_framerate=np.array(-60.0))
    save("absurd_fps_poses.npz", mocap_framerate=np.array(1e6))
    (d / "text_poses.npz").write_text("poses,trans\n0.1,0.2\n")
    (d / "folder_poses.npz").mkdir()
    (d / "dangling_poses.npz").symlink_to(d / "gone.npz")
    os.mkfifo(d / "fifo_poses.npz")
    (d / "loop_poses.npz").symlink_to(d / "loop_poses.npz")


def _scan_or_fail(path: Path, root: Path) -> dict:
    """scan_file in a thread that must come back (a FIFO opened for reading blocks until a writer comes)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(scan_file(str(path), str(root), {})), daemon=True)
    t.start()
    t.join(120)
    if t.is_alive():
        pytest.fail(f"scanning {path} never returned")
    return out


@pytest.fixture(scope="module")
def built(build_inputs, tmp_path_factory):
    """(store, inputs, sequences rows by path, BuildResult) of a build over good and bad entries."""
    root = tmp_path_factory.mktemp("bad_inputs")
    amass_root = root / "amass"
    write_motion_files(amass_root, GOOD)
    write_bad_entries(amass_root / "Broken" / "b")
    assert _scan_or_fail(amass_root / "Broken" / "b" / "fifo_poses.npz", amass_root)["status"] == "skipped"
    out = root / "store"
    result = run_build(small_config(Inputs(amass_root, build_inputs.body_dir), out))
    rows = {r["path"]: r for r in pq.read_table(out / schema.SEQUENCES_TABLE).to_pylist()}
    return out, Inputs(amass_root, build_inputs.body_dir), rows, result


@pytest.mark.parametrize("name", sorted(KINDS))
def test_bad_entry_is_skipped_with_its_reason(built, name):
    _, _, rows, _ = built
    row = rows[f"Broken/b/{name}"]
    assert row["status"] == "skipped" and KINDS[name] in row["reason"], row["reason"]
    assert row["sampled"] == 0 and row["first_mesh"] == -1


def test_build_completes_with_the_good_files_meshes(built):
    out, _, rows, result = built
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["state"] == schema.STATE_COMPLETE
    ok = sorted(r["index"] for r in rows.values() if r["status"] == "ok")
    assert [p for p, r in rows.items() if r["status"] == "ok"] == ["CMU/01/walk_poses.npz", "CMU/02/wave_poses.npz"]
    assert result.skipped_files == len(KINDS) and group.attrs["counts"]["skipped"] == len(KINDS)
    sequence = np.asarray(group[schema.SEQUENCE][:])
    assert sorted(set(sequence.tolist())) == ok
    assert sequence.shape[0] == (60 + 2) // 3 + (45 + 2) // 3  # 20 of 60 fps: every third frame
    verts = np.asarray(group[schema.VERTICES][:])
    assert np.abs(verts).max() > 1000  # real bodies (>= 0.1 m from the root), not left-over zeros


def test_bomb_is_refused_before_it_is_inflated(built):
    """The 1.25 GB bomb is ~5 MB on disk; scanning it allocates no more than a few megabytes."""
    _, inputs, _, _ = built
    amass_root = inputs.amass_root
    bomb = amass_root / "Broken" / "b" / "bomb_poses.npz"
    assert bomb.stat().st_size < 20 * 2**20
    tracemalloc.start()
    try:
        row = scan_file(str(bomb), str(amass_root), {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row["status"] == "skipped" and "over the 512 MiB limit" in row["reason"]
    assert peak < 16 * 2**20, f"scanning the bomb allocated {peak / 2**20:.0f} MiB"


def test_meshes_failing_in_the_write_phase_name_their_file(built, tmp_path, monkeypatch):
    """With the plan's betas limit lifted, the 500-sigma body passes the plan; its vertices leave the int16
    range in the write phase, and the error names the file."""
    _, inputs, _, _ = built
    monkeypatch.setattr(amass, "MAX_ABS_BETA", 1e9)
    with pytest.raises(st.StoreError, match=r"Broken/b/big_betas_poses\.npz, frames 0\.\.1[0-9]: vertex at .* exceeds"):
        run_build(small_config(inputs, tmp_path / "store"))
