"""mpt-data build: plan, content, Dask clusters, killed workers, resume, bad inputs, recipes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from motion_files import BAD_REASONS, GOOD
from store_builds import REPO, kill_once_plugin, small_config
from mpt_data import build as bd
from mpt_data import schema
from mpt_data import freeze as fz
from mpt_data import store as st


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def _freeze_copy_fingerprint(path: Path) -> str:
    return fz.freeze_store(path)


# --------------------------------------------------------------------------------------------
# Content


def test_sequences_table_and_bad_inputs_skipped_with_reasons(reference_store):
    path, _ = reference_store
    table = pq.read_table(path / schema.SEQUENCES_TABLE).to_pylist()
    rows = {r["path"]: r for r in table}
    assert [r["index"] for r in table] == list(range(len(table)))
    assert [r["path"] for r in table] == sorted(rows)
    assert not any(p.endswith("shape.npz") for p in rows), "shape.npz is not a motion file"
    for name, phrase in BAD_REASONS.items():
        row = rows[f"Broken/b/{name}"]
        assert row["status"] == "skipped" and phrase in row["reason"], (name, row["reason"])
        assert row["sampled"] == 0 and row["first_mesh"] == -1
    ok = [r for r in table if r["status"] == "ok"]
    assert len(ok) == len(GOOD)
    sequence = zarr.open_array(str(path / schema.SEQUENCE), mode="r")[:]
    assert set(np.unique(sequence)) == {r["index"] for r in ok}, "meshes come only from valid files"
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["counts"]["skipped"] == len(BAD_REASONS)
    assert group.attrs["counts"]["sequences"] == len(GOOD)


def test_sampling_splits_and_frames_follow_the_recipe(reference_store, build_inputs):
    path, _ = reference_store
    group = zarr.open_group(str(path), mode="r")
    table = pq.read_table(path / schema.SEQUENCES_TABLE).to_pylist()
    seq, frame, split = (np.asarray(group[a][:]) for a in (schema.SEQUENCE, schema.FRAME, schema.SPLIT))
    expected_split = {"CMU": "train", "HumanEva": "val", "SSM_synced": "test"}
    start = 0
    for r in (r for r in table if r["status"] == "ok"):
        # 20 meshes per second of motion: frame k*fps/20, independent of the sampling module.
        stride = r["fps"] / 20.0
        want = np.floor(np.arange(int(np.ceil(r["frames"] / stride)) + 1) * stride).astype(int)
        want = want[want < r["frames"]]
        assert r["first_mesh"] == start and r["sampled"] == want.size
        sl = slice(start, start + want.size)
        assert (seq[sl] == r["index"]).all() and (frame[sl] == want).all()
        assert (split[sl] == schema.SPLITS[expected_split[r["subset"]]]).all()
        start += want.size
    assert start == seq.shape[0] == group.attrs["counts"]["meshes"]
    counts = group.attrs["counts"]["splits"]
    assert counts == {k: int((split == v).sum()) for k, v in schema.SPLITS.items()}
    assert counts["val"] > 0 and counts["test"] > 0


def test_meshes_match_the_body_model_and_projections_match_a_pinhole(reference_store, build_inputs):
    from mpt_data.body import BodyModel, BodyModelConfig

    path, _ = reference_store
    group = zarr.open_group(str(path), mode="r")
    table = pq.read_table(path / schema.SEQUENCES_TABLE).to_pylist()
    idx = np.array([0, 37, group.attrs["counts"]["meshes"] - 1])
    verts = np.asarray(group[schema.VERTICES].get_orthogonal_selection((idx,))).astype(np.float64) * 1e-4
    assert group[schema.VERTICES].dtype == np.int16 and group[schema.VERTICES].attrs["scale_m"] == 1e-4
    coco = np.asarray(group[f"{schema.JOINTS_GROUP}/coco17"].get_orthogonal_selection((idx,)))
    j2d = np.asarray(group[schema.JOINTS2D].get_orthogonal_selection((idx,)))
    vis = np.asarray(group[schema.VISIBLE].get_orthogonal_selection((idx,)))
    crop = np.asarray(group[schema.CROP].get_orthogonal_selection((idx,)))
    K, R, t = (np.asarray(group[a][:], np.float64) for a in (schema.CAMERA_K, schema.CAMERA_R, schema.CAMERA_T))
    pos = np.asarray(group["cameras"].attrs["subject_position"])
    assert K.shape == (4, 3, 3) and len(group["cameras"].attrs["names"]) == 4
    for n, i in enumerate(idx):
        row = table[int(group[schema.SEQUENCE][i])]
        src = np.load(build_inputs.amass_root / row["path"])
        frame = int(group[schema.FRAME][i])
        np.testing.assert_allclose(group[schema.POSE][i], src["poses"][frame], atol=1e-6)
        model = BodyModel.load(BodyModelConfig(str(build_inputs.body_dir), num_betas=16), row["gender"])
        out = model.forward(src["poses"][frame][None], src["betas"][None])
        np.testing.assert_allclose(verts[n], out["vertices"][0], atol=6e-5)  # int16 at 0.1 mm
        np.testing.assert_allclose(coco[n], out["coco17"][0], atol=1e-5)
        for c in range(4):
            cam = (coco[n] + pos) @ R[c].T + t[c]
            uv = cam[:, :2] / cam[:, 2:] @ K[c][:2, :2].T + K[c][:2, 2]
            x0, y0, side = crop[n, c]
            np.testing.assert_allclose(j2d[n, c], (uv - [x0, y0]) * 224 / side, atol=2e-2)
            inside = (j2d[n, c] >= 0).all(1) & (j2d[n, c] < 224).all(1) & (cam[:, 2] > 0)
            # The face rule: nose, eyes and ears (COCO rows 0-4) facing away from the camera are not visible.
            world = coco[n].astype(np.float64) + pos
            head, centre = (world[3] + world[4]) / 2, -R[c].T @ t[c]
            for k in range(5):
                out, ray = world[k] - head, centre - world[k]
                cos = out @ ray / (np.linalg.norm(out) * np.linalg.norm(ray))
                inside[k] &= bool(cos >= -0.2)
            assert (vis[n, c] == inside).all()
            vcam = (verts[n] + pos) @ R[c].T + t[c]
            vuv = vcam[:, :2] / vcam[:, 2:] @ K[c][:2, :2].T + K[c][:2, 2]
            lo, hi = np.array([x0, y0]), np.array([x0 + side, y0 + side])
            assert (vuv >= lo - 1e-3).all() and (vuv <= hi + 1e-3).all()


def test_store_holds_topology_regressors_and_attributes(reference_store):
    from store_builds import NUM_VERTICES

    path, _ = reference_store
    group = zarr.open_group(str(path), mode="r")
    a = group.attrs
    assert a["schema"] == schema.SCHEMA_VERSION and a["state"] == "frozen" and a["tool_version"]
    assert a["joint_sets"] == {"coco17": 17, "smpl24": 24} and a["heatmap_joint_set"] == "coco17"
    assert a["recipe"]["target_fps"] == 20.0 and a["recipe"]["cameras"] == 4
    assert group[schema.TOPOLOGY_TEMPLATE].shape == (NUM_VERTICES, 3)
    sizes = [NUM_VERTICES]
    for level in (1, 2):
        lv = schema.TOPOLOGY_LEVEL.format(level=level)
        ids = group[f"{lv}/vertex_ids"][:]
        assert group[f"{lv}/up_index"].shape == (sizes[-1], 3)
        np.testing.assert_allclose(group[f"{lv}/up_weight"][:].sum(1), 1.0, atol=1e-5)
        sizes.append(ids.shape[0])
    assert sizes[1] == pytest.approx(NUM_VERTICES / 4, rel=0.05) and sizes[2] == pytest.approx(NUM_VERTICES / 16, rel=0.1)
    reg = group[f"{schema.TOPOLOGY_REGRESSORS}/smpl24"][:]
    assert reg.shape == (24, NUM_VERTICES)
    arr = group[schema.VERTICES]
    assert arr.chunks == (8, NUM_VERTICES, 3) and arr.shards == (32, NUM_VERTICES, 3)


# --------------------------------------------------------------------------------------------
# Parallel builds, failures and resume: all end in the reference fingerprint


def test_two_worker_cluster_reproduces_the_in_process_fingerprint(reference_store, build_inputs, cluster, tmp_path):
    ref_path, ref_fp = reference_store
    out = tmp_path / "store2"
    bd.build_store(small_config(build_inputs, out, workers=None, scheduler=cluster.scheduler_address))
    assert _freeze_copy_fingerprint(out) == ref_fp
    # a re-run of a task writes the same bytes: the shard files are identical too
    for shard in (ref_path / schema.VERTICES / "c").rglob("*"):
        if shard.is_file():
            assert (out / shard.relative_to(ref_path)).read_bytes() == shard.read_bytes()


def test_killed_worker_still_ends_in_the_same_fingerprint(reference_store, build_inputs, cluster, tmp_path):
    from distributed import Client

    _, ref_fp = reference_store
    marker = tmp_path / "killed"
    with Client(cluster) as client:
        client.register_plugin(kill_once_plugin(str(marker)))
        try:
            bd.build_store(small_config(build_inputs, tmp_path / "store", scheduler=cluster.scheduler_address))
        finally:
            client.unregister_worker_plugin("mpt-kill-once")
    assert marker.exists(), "the plugin never killed a worker"
    assert fz.freeze_store(tmp_path / "store") == ref_fp


def test_interrupted_build_resumes_only_missing_partitions(reference_store, build_inputs, tmp_path, monkeypatch):
    _, ref_fp = reference_store
    out = tmp_path / "store"
    real = bd.run_partition
    calls = []

    def crash_after_two(ctx, part):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        calls.append(part.index)
        return real(ctx, part)

    monkeypatch.setattr(bd, "run_partition", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        bd.build_store(small_config(build_inputs, out))
    monkeypatch.setattr(bd, "run_partition", real)
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "building"
    with pytest.raises(st.StoreError, match="state 'building'"):
        fz.freeze_store(out)
    with pytest.raises(st.StoreError, match="--resume"):
        bd.build_store(small_config(build_inputs, out))
    done = {i: st.partition_record_path(out, i).stat().st_mtime_ns for i in calls}
    result = bd.run_build(small_config(build_inputs, out, resume=True))
    assert set(result.written) == set(range(result.partitions)) - set(calls)
    assert {i: st.partition_record_path(out, i).stat().st_mtime_ns for i in calls} == done
    assert fz.freeze_store(out) == ref_fp


def test_resume_refuses_a_changed_recipe(build_inputs, tmp_path, monkeypatch):
    out = tmp_path / "store"
    monkeypatch.setattr(bd, "run_partition", lambda ctx, part: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        bd.build_store(small_config(build_inputs, out))
    with pytest.raises(bd.RecipeError, match="another recipe"):
        bd.build_store(small_config(build_inputs, out, cameras=2, resume=True))


def test_frozen_store_refuses_writes(reference_store, build_inputs, tmp_path):
    ref_path, _ = reference_store
    with pytest.raises(st.FrozenStoreError):
        bd.build_store(small_config(build_inputs, ref_path, overwrite=True))
    with pytest.raises(st.FrozenStoreError):
        st.open_store(ref_path, "r+")
    shard = next(p for p in (ref_path / schema.VERTICES).rglob("*") if p.is_file())
    assert shard.stat().st_mode & 0o222 == 0, "frozen files are read-only"


# --------------------------------------------------------------------------------------------
# Recipes and failing fast


def test_missing_body_model_and_bad_recipes_fail_at_once(build_inputs, tmp_path):
    empty = tmp_path / "no_models"
    empty.mkdir()
    with pytest.raises(bd.RecipeError, match="SMPLH_NEUTRAL"):
        bd.build_store(small_config(build_inputs, tmp_path / "s", body_model_dir=str(empty)))
    assert not (tmp_path / "s").exists(), "nothing is written before the inputs are checked"
    with pytest.raises(bd.RecipeError, match="cameras"):
        bd.build_store(small_config(build_inputs, tmp_path / "s", cameras=3))
    with pytest.raises(bd.RecipeError, match="exactly one"):
        bd.build_store(small_config(build_inputs, tmp_path / "s", target_meshes=50))
    with pytest.raises(bd.RecipeError, match="amass_root"):
        bd.build_store(small_config(build_inputs, tmp_path / "s", amass_root=str(tmp_path / "nowhere")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  amass_rot: x\n")
    with pytest.raises(bd.RecipeError, match="unknown key 'sources.amass_rot'"):
        bd.load_recipe(bad)


def test_unreadable_file_is_a_skip_not_a_crash(build_inputs, tmp_path):
    row = bd.scan_file(str(build_inputs.amass_root / "CMU" / "gone_poses.npz"), str(build_inputs.amass_root), {})
    assert row["status"] == "skipped" and "unreadable" in row["reason"] and row["path"] == "CMU/gone_poses.npz"


def test_recipes_parse_and_flags_override(monkeypatch):
    monkeypatch.chdir(REPO)
    demo = bd.load_recipe("pipelines/demo.yaml", cameras=8)
    assert demo.cameras == 8 and demo.target_fps == 10 and demo.amass_root == "demo_out/synth/amass"
    paper = bd.load_recipe("pipelines/amass-mpt.yaml")
    assert paper.target_meshes == 2_000_000 and paper.cameras == 4 and paper.body_model_type == "smplh"
    splits = dict(paper.splits)
    assert [s for s, v in splits.items() if v == "test"] and splits["HumanEva"] == "val"
    assert {splits[s] for s in ("MPI_HDM05", "SFU", "MPI_mosh")} == {"val"}
    assert {splits[s] for s in ("Transitions_mocap", "SSM_synced")} == {"test"}
    assert splits["CMU"] == "train"


def test_target_meshes_hits_the_requested_count(build_inputs, tmp_path):
    result = bd.run_build(small_config(build_inputs, tmp_path / "s", target_fps=None, target_meshes=60))
    assert abs(result.meshes - 60) <= len(GOOD)
    attrs = zarr.open_group(str(result.path), mode="r").attrs
    assert attrs["counts"]["meshes"] == result.meshes and attrs["recipe"]["sample_fps"] > 0


def test_cli_build_freeze_verify_info(build_inputs, tmp_path):
    from click.testing import CliRunner

    from mpt_data.cli import main

    out = tmp_path / "cli_store"
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("# my datasets\nsources: {}\nstores: []\n")
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--amass-root", str(build_inputs.amass_root),
                             "--body-models", str(build_inputs.body_dir),
                             "--target-fps", "5", "--cameras", "2", "--shard-meshes", "16", "--chunk-meshes", "8",
                             "--workers", "0", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["freeze", str(out), "--manifest", str(manifest), "--name", "tiny"])
    assert r.exit_code == 0, r.output
    fp = zarr.open_group(str(out), mode="r").attrs["fingerprint"]
    text = manifest.read_text()
    assert text.startswith("# my datasets\nsources: {}\n") and fp in text and "name: tiny" in text
    r = runner.invoke(main, ["verify", str(out)])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    r = runner.invoke(main, ["info", str(out), "--json"])
    info = json.loads(r.output)
    assert info["counts"]["cameras"] == 2 and info["fingerprint"] == fp
    r = runner.invoke(main, ["build", "--amass-root", str(build_inputs.amass_root), "--body-models", str(tmp_path),
                             "--target-fps", "5", "--workers", "0", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "body model" in r.output


def test_a_sampling_flag_replaces_the_recipe_rule(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = bd.load_recipe("pipelines/amass-mpt.yaml", target_fps=5.0)
    assert cfg.target_fps == 5.0 and cfg.target_meshes is None
    cfg = bd.load_recipe("pipelines/demo.yaml", target_meshes=100)
    assert cfg.target_meshes == 100 and cfg.target_fps is None


def test_plan_tiles_every_shard_with_sequence_segments():
    from mpt_data.plan import plan_build

    frames = [50, 7, 200, 1, 90]
    rows = [{"path": f"S/{i:02d}_poses.npz", "subset": "S", "subject": "", "gender": "male", "fps": 60.0,
             "frames": f, "size": 10, "sha256": "", "status": "ok", "reason": ""} for i, f in enumerate(frames)]
    rows.insert(2, {**rows[0], "path": "S/01b_poses.npz", "status": "skipped", "reason": "zero frames", "frames": 0})
    cfg = bd.load_recipe(None, amass_root="/data", body_model_dir="/m", target_fps=20.0, chunk_meshes=4, shard_meshes=8)
    table, parts, n = plan_build(cfg, rows)
    assert n == sum(-(-f // 3) for f in frames) and len(parts) == -(-n // 8)
    for p in parts:
        assert (p.start, p.stop) == (p.index * 8, min(p.index * 8 + 8, n))
        at = p.start
        for seg in p.segments:
            assert seg.mesh_start == at
            row = table[seg.row]
            k0 = seg.mesh_start - row["first_mesh"]
            assert list(seg.frames) == [3 * k for k in range(k0, k0 + len(seg.frames))]
            at += len(seg.frames)
        assert at == p.stop
    assert [r["first_mesh"] for r in table if r["status"] == "skipped"] == [-1]


# --------------------------------------------------------------------------------------------
# Bytes independent of other files; one build per store at a time


def test_a_sequences_bytes_do_not_change_when_an_unrelated_file_is_added(reference_store, build_inputs, tmp_path):
    """The same motion files plus one more that sorts first (31 meshes): every partition boundary moves, so
    each sequence is cut into other segments and batches (one of a single mesh), yet its bytes stay."""
    from motion_files import write_motion_files
    from store_builds import Inputs

    ref_path, _ = reference_store
    root = tmp_path / "amass"
    write_motion_files(root, GOOD)  # the same seeds, so the same files as the reference's
    write_motion_files(root / "ACCAD", [("x", "", "extra", 93, 60.0, "male")])  # ACCAD/x/extra_poses.npz
    out = tmp_path / "store"
    bd.build_store(small_config(Inputs(root, build_inputs.body_dir), out))
    a, b = (zarr.open_group(str(p), mode="r") for p in (ref_path, out))
    rows_a, rows_b = ({r["path"]: r for r in pq.read_table(p / schema.SEQUENCES_TABLE).to_pylist()}
                      for p in (ref_path, out))
    assert rows_b["ACCAD/x/extra_poses.npz"]["sampled"] == 31
    names = [schema.VERTICES, schema.JOINTS2D, schema.VISIBLE, schema.CROP] + \
        [f"{schema.JOINTS_GROUP}/{j}" for j in a.attrs["joint_sets"]]
    for path, ra in rows_a.items():
        if ra["status"] != "ok":
            continue
        rb = rows_b[path]
        assert rb["sampled"] == ra["sampled"] and rb["first_mesh"] == ra["first_mesh"] + 31
        for name in names:
            va = np.asarray(a[name][ra["first_mesh"]: ra["first_mesh"] + ra["sampled"]])
            vb = np.asarray(b[name][rb["first_mesh"]: rb["first_mesh"] + rb["sampled"]])
            assert va.tobytes() == vb.tobytes(), (path, name)


def test_a_second_build_into_the_same_store_is_refused_while_the_first_runs(build_inputs, tmp_path, monkeypatch):
    """While one build writes (here: between its plan and its partitions), another build into the same
    --out, even with --overwrite, and the CLI are refused with one line naming the holder; the first
    build's store is untouched and ends complete and verified."""
    from click.testing import CliRunner

    from mpt_data.cli import main

    out = tmp_path / "store"
    config = small_config(build_inputs, out, subsets_include=("HumanEva",))
    lock_file = tmp_path / ".store.lock"
    real = bd._run_partitions
    seen = []

    def second_build_meanwhile(client, ctx, todo, progress):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(bd.LockError, match=r"store .*store is in use by pid \d+"):
            bd.build_store(small_config(build_inputs, out, subsets_include=("HumanEva",), overwrite=True))
        r = CliRunner().invoke(main, ["build", "--amass-root", str(build_inputs.amass_root), "--body-models",
                                      str(build_inputs.body_dir), "--target-fps", "5", "--workers", "0", "--overwrite",
                                      "--out", str(out), "--no-progress"])
        assert r.exit_code == 1 and "in use by pid" in r.output and r.output.count("\n") == 1, r.output
        assert (out / "zarr.json").exists(), "the refused build deleted nothing"
        with pytest.raises(bd.LockError, match="in use by pid"):  # freeze waits for no writer: it is refused
            fz.freeze_store(out)
        seen.append(True)
        return real(client, ctx, todo, progress)

    monkeypatch.setattr(bd, "_run_partitions", second_build_meanwhile)
    bd.build_store(config)
    assert seen and not lock_file.exists(), "the lock is released at the end"
    assert zarr.open_group(str(out), mode="r").attrs["state"] == schema.STATE_COMPLETE
    fz.freeze_store(out)
    assert fz.verify_store(out).ok


def test_a_stale_lock_of_a_dead_build_is_taken_over(build_inputs, tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "store"
    lock = st.store_lock(out)
    lock.lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0.0,
                                          "command": "mpt-data build (killed)"}))
    with pytest.warns(UserWarning, match=f"stale lock .* pid {dead.pid}"):
        bd.build_store(small_config(build_inputs, out, subsets_include=("HumanEva",)))
    assert lock.lock_file == tmp_path / ".store.lock" and not lock.lock_file.exists()
    assert zarr.open_group(str(out), mode="r").attrs["state"] == schema.STATE_COMPLETE
