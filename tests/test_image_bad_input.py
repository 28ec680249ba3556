"""Bad input on the image path: clear errors naming the file and the problem, never a silent label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mpt_data.images import AnnotationError, read_annotations
from mpt_train.backbones import TINY_BACKBONE, CheckpointMismatch, PoseFeatureMaps, build_pose_network, load_pose_checkpoint
from mpt_train.finetune import load_vertex_flip
from mpt_train.images import crop_pixels_to_unit
from mpt_train.report import compare_runs, final_validation
from mpt_train.predict import crop_box


def test_corrupt_and_foreign_checkpoints_are_refused_by_name(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02 not a torch file")
    net = build_pose_network(TINY_BACKBONE)
    with pytest.raises(CheckpointMismatch, match="corrupt.pth: cannot be read"):
        load_pose_checkpoint(net, bad)
    foreign = tmp_path / "foreign.pth"
    state = net.state_dict()
    state["final_layer.weight"] = torch.zeros(5, 64, 1, 1)  # a 5-joint head
    del state["conv1.weight"]
    state["head.extra"] = torch.zeros(1)
    torch.save(state, foreign)
    with pytest.raises(CheckpointMismatch) as err:
        load_pose_checkpoint(net, foreign)
    msg = str(err.value)
    assert "1 missing: conv1.weight" in msg and "1 unexpected: head.extra" in msg
    assert "final_layer.weight: checkpoint (5, 64, 1, 1) vs model (17, 64, 1, 1)" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PoseFeatureMaps(dataclasses.replace(TINY_BACKBONE, checkpoint=str(tmp_path / "no.pth")))


def test_annotation_shapes_and_vertex_flip_maps_are_checked(tmp_path):
    n = 3
    base = dict(imgname=np.array(["a.jpg"] * n), center=np.zeros((n, 2)), scale=np.ones(n), part=np.zeros((n, 24, 3)))
    np.savez(tmp_path / "v.npz", **base, vertices=np.zeros((n, 10, 2)))
    with pytest.raises(AnnotationError, match="'vertices' has shape"):
        read_annotations(tmp_path / "v.npz")
    np.savez(tmp_path / "p.npz", **{**base, "part": np.zeros((n, 17, 3))})
    with pytest.raises(AnnotationError, match="'part' has shape"):
        read_annotations(tmp_path / "p.npz")
    (tmp_path / "z.npz").write_text("garbage")
    with pytest.raises(AnnotationError, match="not a readable .npz"):
        read_annotations(tmp_path / "z.npz")
    np.save(tmp_path / "flip.npy", np.array([0, 0, 2]))  # not a permutation
    with pytest.raises(ValueError, match="not a permutation of the model's 3 vertices"):
        load_vertex_flip(str(tmp_path / "flip.npy"), 3)
    np.save(tmp_path / "flip4.npy", np.arange(4))
    with pytest.raises(ValueError, match="not a permutation"):
        load_vertex_flip(str(tmp_path / "flip4.npy"), 3)
    assert load_vertex_flip(str(tmp_path / "flip4.npy"), 4).tolist() == [0, 1, 2, 3]


def test_predict_box_outside_and_2d_units(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        crop_box((100, 80), (500, 500, 20, 20))
    with pytest.raises(ValueError, match="positive"):
        crop_box((100, 80), (10, 10, 0, 20))
    # crop pixel centres at integers: pixel 0 is the first pixel's centre, -1 + 1/224 in unit coordinates
    u = crop_pixels_to_unit(torch.tensor([[0.0, 223.0], [111.5, 111.5]]), 224)
    assert torch.allclose(u, torch.tensor([[-1 + 1 / 224, 1 - 1 / 224], [0.0, 0.0]]), atol=1e-6)


def test_run_comparison_reads_the_last_validation(tmp_path):
    import json

    run = tmp_path / "r"
    run.mkdir()
    lines = [{"kind": "train", "step": 1, "loss": 3.0}, {"kind": "val", "step": 5, "pa_mpjpe": 90.0, "mpjpe": 120.0},
             {"kind": "val", "step": 10, "pa_mpjpe": 70.0, "mpjpe": 100.0, "mpve": 110.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert final_validation(run)["pa_mpjpe"] == 70.0
    res, table = compare_runs({"a": run})
    assert res["a"]["mpjpe"] == 100.0 and "| a | 10 | 70.0 | 100.0 | 110.0 |" in table
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps(lines[0]))
    with pytest.raises(ValueError, match="no validation record"):
        final_validation(empty)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        final_validation(tmp_path / "missing")


def test_ingest_skips_truncated_non_image_and_outside_paths_with_counted_reasons(tmp_path):
    """Each bad row is skipped with its own counted reason; every good row (one reached through
    ``sub/..``, one through a symlink that stays inside) is ingested."""
    import json
    import os

    import cv2

    from mpt_data.images import ImagesConfig, ingest, truncation_reason

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    blobs = {}
    for i in range(9):
        ok, jpg = cv2.imencode(".jpg", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        blobs[i] = jpg.tobytes()
        (root / f"im{i}.jpg").write_bytes(blobs[i])
    ok, png = cv2.imencode(".png", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    (root / "cut.png").write_bytes(png.tobytes()[:-30])  # the IEND chunk and some data lost
    (root / "im1.jpg").write_bytes(blobs[1][: len(blobs[1]) * 2 // 3])  # truncated JPEG
    (root / "im2.jpg").write_bytes(b"this is a text file, not an image")
    (tmp_path / "outside.jpg").write_bytes(blobs[3])  # a valid image, but outside --images
    os.symlink(tmp_path / "outside.jpg", root / "escape.jpg")  # a link inside that points out
    os.symlink(root / "im8.jpg", root / "alias.jpg")  # a link that stays inside
    names = ["im0.jpg", "im1.jpg", "im2.jpg", "../outside.jpg", str(tmp_path / "outside.jpg"), "escape.jpg",
             "sub/../im6.jpg", "alias.jpg", "cut.png", "im7.jpg"]
    n = len(names)
    part = np.concatenate([rng.uniform(8, 40, (n, 24, 2)), np.ones((n, 24, 1))], -1)
    np.savez(tmp_path / "ds.npz", imgname=np.array(names), center=np.full((n, 2), 24.0), scale=np.full(n, 0.2),
             part=part)
    summary = ingest(ImagesConfig(str(tmp_path / "ds.npz"), str(root), str(tmp_path / "out"), dataset="d",
                                  crop_px=32))
    assert summary.skipped == {"path outside the image root": 3, "truncated JPEG (no end-of-image marker)": 1,
                               "corrupt image": 1, "truncated PNG (no IEND chunk)": 1}
    assert summary.written == 4 and summary.total == 10
    assert summary.examples["path outside the image root"] == ["3: ../outside.jpg", f"4: {tmp_path / 'outside.jpg'}",
                                                               "5: escape.jpg"]
    saved = json.loads((tmp_path / "out" / "d" / "summary.json").read_text())
    assert saved["skipped"] == summary.skipped and saved["examples"]["corrupt image"] == ["2: im2.jpg"]
    assert not (tmp_path / "out" / "d" / ".ingest.lock").exists()  # released

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "d" / "part-00000.parquet")
    assert table.column("index").to_pylist() == [0, 6, 7, 9]
    for blob in table.column("jpeg").to_pylist():
        assert truncation_reason(blob) == "" and cv2.imdecode(np.frombuffer(blob, np.uint8), 1).shape == (32, 32, 3)
    assert truncation_reason(blobs[0][:-2]) == "truncated JPEG (no end-of-image marker)"
    assert truncation_reason(b"plain bytes") == ""  # not a JPEG or PNG: left to the decoder

    from mpt_data.fileio import FolderLock, LockError

    with FolderLock(tmp_path / "out" / "d" / ".ingest.lock", "image dataset"):  # another ingest in progress
        with pytest.raises(LockError, match="in use by pid"):
            ingest(ImagesConfig(str(tmp_path / "ds.npz"), str(root), str(tmp_path / "out"), dataset="d"))
    assert (tmp_path / "out" / "d" / "summary.json").exists()  # the refused run touched nothing
