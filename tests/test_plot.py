"""mpt-train plot: the curves drawn are the values in each run's metrics.jsonl, against samples trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mpt_train import plot as pl
from mpt_train.cli import main


def _write_run(folder, steps, batch, scale, val_every, terms=("vertices", "joints_proj")):
    """A metrics.jsonl in the trainer's format: train records every step in ``steps`` (batch samples per
    step), val records every ``val_every`` steps (their ``samples`` = validation samples scored)."""
    folder.mkdir(parents=True)
    lines, expected = [], {"train": {}, "val": {}}
    for s in steps:
        terms_v = {t: scale * (1.0 + i) / s for i, t in enumerate(terms)}
        rec = {"kind": "train", "step": s, "lr": 1e-3, "samples": s * batch, "samples_per_s": 50.0, "skipped": 0,
               **terms_v, "loss": sum(terms_v.values())}
        lines.append(rec)
        for k in (*terms, "loss"):
            expected["train"].setdefault(k, []).append((s * batch, rec[k]))
        if s % val_every == 0:
            v = {"kind": "val", "step": s, "mpjpe": 300.0 * scale / s, "pa_mpjpe": 100.0 * scale / s,
                 "mpve": 320.0 * scale / s, "smpl24_mpjpe": 1.0, "samples": 120.0}
            lines.append(v)
            for k in ("pa_mpjpe", "mpjpe", "mpve"):
                expected["val"].setdefault(k, []).append((s * batch, v[k]))
    lines.insert(2, {"kind": "nonfinite", "step": steps[1], "what": "loss", "ranks": [0]})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return expected


def test_plotted_lines_are_the_file_values_for_two_runs(tmp_path):
    a = _write_run(tmp_path / "runs" / "pre", list(range(10, 101, 10)), 32, 1.0, 50)
    b = _write_run(tmp_path / "other", list(range(5, 61, 5)), 16, 2.0, 20, terms=("vertices", "joints", "joints_proj"))
    out = tmp_path / "pics" / "curves.png"
    fig = pl.plot_runs(pl.run_labels([str(tmp_path / "runs" / "pre"), f"scratch={tmp_path / 'other'}"]), out)

    import cv2

    img = cv2.imread(str(out))
    # loss, vertices, joints_proj, joints (only the second run has it), PA-MPJPE, MPJPE, MPVE: 7 panels, 3 rows
    assert img.shape[:2][::-1] == pl.figure_size_px(7) == (1260, 960)
    axes = fig.get_axes()
    titles = [ax.get_title() for ax in axes]
    assert titles == ["loss (total)", "loss term: vertices", "loss term: joints_proj", "loss term: joints",
                      "val PA-MPJPE", "val MPJPE", "val MPVE"]
    by_title = dict(zip(titles, axes))
    for label, expected in (("pre", a), ("scratch", b)):
        for key, pairs in expected["train"].items():
            title = "loss (total)" if key == "loss" else f"loss term: {key}"
            (line,) = [ln for ln in by_title[title].lines if ln.get_label() == label]
            np.testing.assert_allclose(line.get_xdata(), [x for x, _ in pairs])
            np.testing.assert_allclose(line.get_ydata(), [y for _, y in pairs])
        for key, title in pl.VAL_METRICS:
            (line,) = [ln for ln in by_title[f"val {title}"].lines if ln.get_label() == label]
            np.testing.assert_allclose(line.get_xdata(), [x for x, _ in expected["val"][key]])
            np.testing.assert_allclose(line.get_ydata(), [y for _, y in expected["val"][key]])
    assert [ln.get_label() for ln in by_title["loss term: joints"].lines] == ["scratch"]
    assert by_title["loss (total)"].get_yscale() == "log" and by_title["val MPJPE"].get_yscale() == "linear"
    assert by_title["val MPVE"].get_ylabel() == "MPVE (mm)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["pre", "scratch"]


def test_validation_points_get_samples_from_the_training_records():
    # 32 samples per step up to step 20, then 64 per step (a resume with another batch size)
    steps, samples = np.array([10.0, 20.0, 30.0]), np.array([320.0, 640.0, 1280.0])
    got = pl.samples_at(np.array([5.0, 10.0, 25.0, 30.0, 40.0]), steps, samples)
    # before the first record: from (0, 0); between: linear; past the last: the run's mean rate 1280 / 30
    np.testing.assert_allclose(got, [160.0, 320.0, 960.0, 1280.0, 1280.0 + 10 * 1280.0 / 30])


def test_labels_folder_names_or_given_names():
    assert pl.run_labels(["runs/a", "x=runs/b"]) == {"a": pl.Path("runs/a"), "x": pl.Path("runs/b")}
    # two runs with the same folder name keep their paths as labels
    assert list(pl.run_labels(["s1/pre", "s2/pre"])) == ["s1/pre", "s2/pre"]
    with pytest.raises(pl.PlotError, match="same label"):
        pl.run_labels(["a=r1", "a=r2"])


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run folder"),
    ("no_file", "no metrics.jsonl"),
    ("empty", "empty, the run has logged nothing yet"),
    ("garbage", "line 2: not JSON"),
    ("val_only", "no training records"),
])
def test_bad_runs_give_one_line_naming_the_file(tmp_path, case, message):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    metrics = run / "metrics.jsonl"
    if case == "empty":
        metrics.write_text("\n")
    elif case == "garbage":
        metrics.write_text('{"kind": "train", "step": 1, "samples": 8, "loss": 1.0}\n{"kind": "tr\n')
    elif case == "val_only":
        metrics.write_text('{"kind": "val", "step": 1, "mpjpe": 100.0}\n')
    out = tmp_path / "c.png"
    r = CliRunner().invoke(main, ["plot", str(run), "--out", str(out)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(run) in lines[0], r.output
    assert "Traceback" not in r.output and not out.exists()


def test_tick_labels_get_the_digits_that_print_them_exactly():
    assert pl._label_digits([0.2, 0.3, 0.4]) == 2
    assert pl._label_digits([1.0, 1.05, 1.1, 1.15, 1.2]) == 3  # at 2 digits 1.05 would print 1.1 (or 1)
    assert pl._label_digits([0.175, 0.2, 0.225, 0.25]) == 3  # 0.225 is not 0.23
    assert pl._label_digits([100.0, 100.5]) == 4
