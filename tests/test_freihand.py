"""FreiHAND: ingest of its own layout into hand image shards, refusal of bad files, the reader's view of the
rows, the synthetic FreiHAND-format dataset and fine-tuning / evaluation with the FreiHAND protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

N = 5  # annotations of the hand-made layout
SIZE = 224


def _fake_layout(root: Path, split: str = "training", n: int = N, versions: int = 2, truth: bool = True,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """FreiHAND's files for ``n`` random hands (no hand model needed): JSON annotations and noise JPEGs."""
    import cv2

    rng = np.random.default_rng(seed)
    f = rng.uniform(400, 600, n)
    k = np.zeros((n, 3, 3))
    k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = f, f, 111.5, 111.5, 1.0
    xyz = rng.normal(0, 0.03, (n, 21, 3)) + np.array([0.0, 0.0, 0.5])
    verts = rng.normal(0, 0.03, (n, 778, 3)) + np.array([0.0, 0.0, 0.5])
    mano = rng.normal(0, 0.3, (n, 1, 61))
    data = {"K": k, "xyz": xyz, "verts": verts, "mano": mano}
    root.mkdir(parents=True, exist_ok=True)
    files = data if (split == "training" or truth) else {"K": k}
    for what, arr in files.items():
        (root / f"{split}_{what}.json").write_text(json.dumps(arr.tolist()))
    if split == "evaluation":
        (root / f"{split}_scale.json").write_text(json.dumps(rng.uniform(0.02, 0.04, n).tolist()))
    rgb = root / split / "rgb"
    rgb.mkdir(parents=True, exist_ok=True)
    for i in range((versions if split == "training" else 1) * n):
        img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        (rgb / f"{i:08d}.jpg").write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    return data


def _rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_training_split_ingests_every_version_with_projected_joints(tmp_path):
    import pyarrow.parquet as pq

    from mpt_data import image_schema
    from mpt_data.freihand import FreiHANDConfig, ingest_freihand

    data = _fake_layout(tmp_path / "fh")
    summary = ingest_freihand(FreiHANDConfig(str(tmp_path / "fh"), "training", str(tmp_path / "shards"),
                                             rows_per_shard=4, rows_per_group=2))
    folder = tmp_path / "shards" / "freihand_training"
    assert (summary.total, summary.written, summary.skipped) == (2 * N, 2 * N, {})
    meta = pq.ParquetFile(folder / "part-00000.parquet").metadata.metadata
    assert image_schema.shard_joint_set(meta) == "hand21"
    assert image_schema.shard_format_version(meta) == 2
    rows = _rows(folder)
    assert [r["key"] for r in rows] == [f"freihand_training/{i}" for i in range(2 * N)]
    for i, row in enumerate(rows):
        a = i % N  # image i shows annotation i mod N
        assert row["index"] == a and row["imgname"] == f"training/rgb/{i:08d}.jpg"
        assert row["jpeg"] == (tmp_path / "fh" / row["imgname"]).read_bytes()  # the crop is the image as it is
        assert np.allclose(row["crop_box"], [0, 0, SIZE])
        x, y, z = data["xyz"][a].T
        kk = data["K"][a]
        u = kk[0, 0] * x / z + kk[0, 2]  # pinhole written out
        v = kk[1, 1] * y / z + kk[1, 2]
        j2 = np.asarray(row["joints2d"]).reshape(21, 3)
        assert np.allclose(j2[:, 0], u, atol=1e-3) and np.allclose(j2[:, 1], v, atol=1e-3) and (j2[:, 2] == 1).all()
        j3 = np.asarray(row["joints3d"]).reshape(21, 4)
        assert np.allclose(j3[:, :3], data["xyz"][a], atol=1e-6) and row["has_joints3d"]
        assert np.allclose(np.asarray(row["vertices"]).reshape(778, 3), data["verts"][a], atol=1e-6)
        assert np.allclose(row["pose"], data["mano"][a, 0, :48], atol=1e-6)
        assert np.allclose(row["betas"], data["mano"][a, 0, 48:58], atol=1e-6)
        assert row["has_smpl"] and row["has_vertices"] and not any(row["S"])


def test_reader_gives_wrist_centred_hand_samples(tmp_path):
    from mpt_data.freihand import FreiHANDConfig, ingest_freihand
    from mpt_train.images import ImageEvalBatches

    data = _fake_layout(tmp_path / "fh", versions=1)
    ingest_freihand(FreiHANDConfig(str(tmp_path / "fh"), "training", str(tmp_path / "shards")))
    batches = ImageEvalBatches([str(tmp_path / "shards" / "freihand_training")], 8, 778)
    assert batches.stream.joint_set == "hand21"
    batch = next(iter(batches))
    assert batch["joints3d"].shape == (N, 21, 3) and batch["vertices"].shape == (N, 778, 3)
    assert batch["has_vertices"].all() and batch["has_joints3d"].all()
    root = data["xyz"][:, :1]
    assert np.allclose(batch["joints3d"].numpy(), data["xyz"] - root, atol=1e-5)
    assert np.allclose(batch["vertices"].numpy(), data["verts"] - root, atol=1e-5)
    assert np.allclose(batch["pose"].numpy(), data["mano"][:, 0, :48], atol=1e-6)


def test_evaluation_split_without_truth_ingests_for_prediction(tmp_path):
    from mpt_data.freihand import FreiHANDConfig, ingest_freihand

    _fake_layout(tmp_path / "fh", split="evaluation", truth=False)
    summary = ingest_freihand(FreiHANDConfig(str(tmp_path / "fh"), "evaluation", str(tmp_path / "shards")))
    rows = _rows(tmp_path / "shards" / "freihand_evaluation")
    assert summary.written == N and len(rows) == N
    assert not any(r["has_joints3d"] or r["has_vertices"] or r["has_smpl"] for r in rows)
    assert all(r["imgname"] == f"evaluation/rgb/{i:08d}.jpg" for i, r in enumerate(rows))


def test_missing_and_truncated_images_are_skipped_and_counted(tmp_path):
    from mpt_data.freihand import FreiHANDConfig, ingest_freihand

    _fake_layout(tmp_path / "fh", versions=1)
    (tmp_path / "fh" / "training" / "rgb" / "00000001.jpg").unlink()
    cut = tmp_path / "fh" / "training" / "rgb" / "00000003.jpg"
    cut.write_bytes(cut.read_bytes()[:500])
    summary = ingest_freihand(FreiHANDConfig(str(tmp_path / "fh"), "training", str(tmp_path / "shards"),
                                             versions=1))
    assert summary.written == N - 2
    assert summary.skipped == {"missing image": 1, "truncated JPEG (no end-of-image marker)": 1}
    assert [r["index"] for r in _rows(tmp_path / "shards" / "freihand_training")] == [0, 2, 4]


@pytest.mark.parametrize("damage, message", [
    ("missing", r"training_xyz\.json: file does not exist"),
    ("count", r"training_verts\.json: 4 entries, but the split's K file has 5"),
    ("nan", r"training_mano\.json: entry 2 holds a non-finite number"),
    ("shape", r"training_xyz\.json: entries have shape \(21, 2\), expected \(21, 3\) \(entry 0\)"),
    ("json", r"training_K\.json: not readable JSON"),
])
def test_bad_files_are_refused_with_their_name(tmp_path, damage, message):
    from mpt_data.freihand import FreiHANDConfig, FreiHANDError, ingest_freihand

    data = _fake_layout(tmp_path / "fh", versions=1)
    fh = tmp_path / "fh"
    if damage == "missing":
        (fh / "training_xyz.json").unlink()
    elif damage == "count":
        (fh / "training_verts.json").write_text(json.dumps(data["verts"][:4].tolist()))
    elif damage == "nan":
        mano = data["mano"].tolist()
        mano[2][0][7] = float("nan")
        (fh / "training_mano.json").write_text(json.dumps(mano))  # Python's json writes NaN
    elif damage == "shape":
        (fh / "training_xyz.json").write_text(json.dumps(data["xyz"][..., :2].tolist()))
    else:
        (fh / "training_K.json").write_text("[[1, 2")
    with pytest.raises(FreiHANDError, match=message):
        ingest_freihand(FreiHANDConfig(str(fh), "training", str(tmp_path / "shards")))


def test_cli_ingests_and_names_a_bad_file(tmp_path):
    from click.testing import CliRunner

    from mpt_data.cli import main

    _fake_layout(tmp_path / "fh", versions=1)
    res = CliRunner().invoke(main, ["freihand", "--root", str(tmp_path / "fh"), "--set", "training",
                                    "--out", str(tmp_path / "shards")])
    assert res.exit_code == 0, res.output
    assert "freihand_training: 5 of 5 images written" in res.output
    mixture = (tmp_path / "shards" / "freihand_training.yaml").read_text()
    assert "shards: freihand_training" in mixture
    (tmp_path / "fh" / "training_K.json").unlink()
    res = CliRunner().invoke(main, ["freihand", "--root", str(tmp_path / "fh"), "--set", "training",
                                    "--out", str(tmp_path / "shards")])
    assert res.exit_code == 1 and "training_K.json: file does not exist" in res.output


def test_a_mixture_of_people_and_hands_is_refused(tmp_path):
    import yaml

    from mpt_data.freihand import FreiHANDConfig, ingest_freihand
    from mpt_train.images import ImageStream, MixtureError, read_mixture

    from test_data_contracts import _tiny_image_dataset

    people = _tiny_image_dataset(tmp_path / "people")
    _fake_layout(tmp_path / "fh", versions=1)
    ingest_freihand(FreiHANDConfig(str(tmp_path / "fh"), "training", str(tmp_path / "shards")))
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump({"datasets": [{"name": "p", "shards": str(people)},
                                                {"name": "h", "shards": str(tmp_path / "shards/freihand_training")}]}))
    with pytest.raises(MixtureError, match="different joint sets.*p: coco17, h: hand21"):
        ImageStream(read_mixture(mix))


# ------------------------------------------------------------------------------------------
# The synthetic FreiHAND-format dataset, and a hand model fine-tuned and scored on it


@pytest.fixture(scope="module")
def synth_fh(tmp_path_factory):
    """A hand store (the real builder), the synthetic FreiHAND layout of its hand model, both splits ingested."""
    from mpt_data.freihand import FreiHANDConfig, ingest_freihand
    from mpt_data.synth.freihand import SynthFreiHANDConfig, write_synth_freihand

    from test_hand_store import build_hand_store

    root = tmp_path_factory.mktemp("synth_fh")
    store = build_hand_store(root / "hands")
    summary = write_synth_freihand(SynthFreiHANDConfig(str(store.hand_dir), str(root / "fh"), training=12,
                                                       evaluation=6, versions=2))
    for split in ("training", "evaluation"):
        ingest_freihand(FreiHANDConfig(str(root / "fh"), split, str(root / "shards"), rows_per_group=4))
    (root / "mix.yaml").write_text("datasets:\n  - {name: fh, shards: shards/freihand_training, weight: 1}\n")
    return root, store, summary


def test_synthetic_dataset_has_freihands_layout_and_the_joints_land_on_the_hand(synth_fh):
    import cv2

    from mpt_data.freihand import read_split

    root, _, summary = synth_fh
    fh = root / "fh"
    assert summary["counts"] == {"training": {"annotations": 12, "images": 24},
                                 "evaluation": {"annotations": 6, "images": 6}}
    train = read_split(fh, "training")
    assert train["K"].shape == (12, 3, 3) and train["mano"].shape == (12, 61)
    assert train["xyz"].shape == (12, 21, 3) and train["verts"].shape == (12, 778, 3)
    assert set(read_split(fh, "evaluation")) == {"K", "scale", "xyz", "verts", "mano"}
    assert sorted(p.name for p in (fh / "training" / "rgb").iterdir()) == [f"{i:08d}.jpg" for i in range(24)]
    # the wrist is the origin of the hand model: mano's last 3 values are its camera-frame position
    assert np.allclose(train["mano"][:, 58:], train["xyz"][:, 0], atol=1e-6)
    on_hand = []
    for i in range(24):
        img = cv2.imread(str(fh / "training" / "rgb" / f"{i:08d}.jpg"))
        assert img.shape == (224, 224, 3)
        a = i % 12
        uv = train["xyz"][a] @ train["K"][a].T
        uv = uv[:, :2] / uv[:, 2:]
        assert (uv > 0).all() and (uv < 223).all()  # the whole hand is in the crop
        if i < 12:  # green-screen version: the joints' pixels are the hand's, not the screen's
            px = img[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)].astype(int)
            on_hand.append(np.mean(np.abs(px - np.array([60, 180, 40])).sum(1) > 60))
    assert np.mean(on_hand) > 0.8, on_hand
    # the two colour versions of an annotation differ in looks only
    v0 = cv2.imread(str(fh / "training" / "rgb" / "00000003.jpg"))
    v1 = cv2.imread(str(fh / "training" / "rgb" / "00000015.jpg"))
    assert np.abs(v0.astype(int) - v1.astype(int)).mean() > 5


def test_hand_model_fine_tunes_on_synthetic_freihand_and_scores_by_its_protocol(synth_fh):
    import torch
    from click.testing import CliRunner

    from mpt_train.backbones import TINY_BACKBONE
    from mpt_train.cli import main as train_main
    from mpt_train.data import LoaderConfig
    from mpt_train.finetune import FinetuneConfig, build_finetune_task
    from mpt_train.images import ImageEvalBatches, image_prepare
    from mpt_train.inputs import InputConfig
    from mpt_train.losses import LossConfig
    from mpt_train.model import ModelConfig
    from mpt_train.pretrain import build_pretrain_task
    from mpt_train.protocols import evaluate_protocol
    from mpt_train.trainer import TrainConfig, train

    torch.set_num_threads(1)
    root, store, _ = synth_fh
    cfg = TrainConfig.tiny(out=str(root / "pre"), steps=4, batch_size=8, log_every=1, checkpoint_every=4,
                           val_every=0, progress=False, device="cpu")
    train(cfg, build_pretrain_task(cfg, ModelConfig.tiny_hand(layers_per_block=1), InputConfig.tiny(), LossConfig.hand(),
                                   LoaderConfig(shards=str(store.path), num_workers=0)))
    val = str(root / "shards" / "freihand_evaluation")
    tc = TrainConfig.finetune(out=str(root / "ft"), steps=3, batch_size=4, log_every=1, checkpoint_every=3,
                              val_every=0, progress=False, device="cpu")
    ft = FinetuneConfig(init=str(root / "pre"), data=str(root / "mix.yaml"), val=(val,), backbone=TINY_BACKBONE)
    task = build_finetune_task(tc, ft)  # the loss weights of the model's joint set: a hand's
    assert task.model.backbone.cfg.num_joints == 21 and task.model.cfg.joint_set == "hand21"
    assert task.config["loss"] == LossConfig.hand().to_dict() and LossConfig.hand().vertices == 8.0
    res = train(tc, task)
    assert res["samples"] == 6.0 and np.isfinite(res["pa_mpjpe"]) and np.isfinite(res["mpve"])
    scores = evaluate_protocol(task.model, ImageEvalBatches([val], 4, 778), image_prepare(torch.device("cpu")),
                               "freihand", None, torch.device("cpu"))
    assert set(scores) == {"pa_mpjpe", "pa_mpvpe", "f_score_5mm", "f_score_15mm", "samples"}
    print("FreiHAND protocol, synthetic evaluation split: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    assert scores["samples"] == 6.0 and all(np.isfinite(v) for v in scores.values())
    assert 0 < scores["pa_mpvpe"] < 200 and 0 <= scores["f_score_5mm"] <= scores["f_score_15mm"] <= 1
    out = root / "table.md"
    res = CliRunner().invoke(train_main, ["evaluate-images", "--checkpoint", f"hand={root / 'ft'}",
                                          "--image-shards", val, "--protocol", "freihand", "--device", "cpu",
                                          "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = out.read_text()
    assert "f_score_5mm" in table and "pa_mpvpe (mm)" in table and "| hand " in table
