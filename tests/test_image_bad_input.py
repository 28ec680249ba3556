"""Bad input on the image path: clear errors naming the file and the problem, never a silent label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mpt_data.images import AnnotationError, read_annotations
from mpt_train.backbones import TINY_BACKBONE, CheckpointMismatch, PoseFeatureMaps, build_pose_network, load_pose_checkpoint
from mpt_train.finetune import compare_runs, crop_pixels_to_unit, final_validation, load_vertex_flip
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
