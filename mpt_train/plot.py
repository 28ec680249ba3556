"""`mpt-train plot`: training and validation curves of one or more runs, from ``RUN/metrics.jsonl``, to a PNG.

A run's metrics file (written by :class:`mpt_train.trainer.MetricsLog`) holds one JSON object per line:
``kind: "train"`` records (step, cumulative ``samples`` over all ranks, the loss ``loss`` and its terms, lr,
throughput) every ``--log-every`` steps, and ``kind: "val"`` records (step, errors in mm, and ``samples`` =
the number of validation samples scored, not samples trained on). Every curve is drawn against the samples
trained on; a validation record gets them from the training records' (step, samples) pairs (interpolated,
extrapolated past the last one at the run's last samples-per-step rate).

One panel per quantity: the total loss, then each loss term (log scale), then PA-MPJPE, MPJPE and MPVE
(mm). Several runs share the panels, one colour per run, with one legend. The series are computed by pure
functions (:func:`run_curves`, :func:`panels`) so what is drawn can be checked against the file.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mpt_data.fileio import atomic_write_bytes

from .trainer import METRICS_FILE

# Bookkeeping fields of a training record; every other number in it is a loss term.
TRAIN_BOOKKEEPING = ("kind", "step", "lr", "samples", "samples_per_s", "skipped")
# Units of the loss terms (mpt_train.losses and mpt_train.posenet state them); the total is a weighted sum.
LOSS_UNITS = {
    "loss": "weighted sum",
    "vertices": "L1, m",
    "vertices_coarse": "L1, m",
    "joints": "L1, m",
    "joints_reg": "L1, m",
    "joints_proj": "L1, crop units [-1, 1]",
    "heatmap": "normalised MSE",
}
# Validation errors drawn, in this order: (record key, title); all in mm.
VAL_METRICS = (("pa_mpjpe", "PA-MPJPE"), ("mpjpe", "MPJPE"), ("mpve", "MPVE"))
PANEL_COLUMNS = 3
PANEL_INCHES = (4.2, 3.0)  # width, height of one panel
LEGEND_INCHES = 0.6  # the strip above the panels that holds the legend
DPI = 100


class PlotError(ValueError):
    """A run folder or metrics file that cannot be plotted; the message names it."""


@dataclass(frozen=True)
class Curve:
    """One series: x = samples trained on (N,), y = values (N,)."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class RunCurves:
    """Every series of one run, by quantity ("loss", a term name, or a VAL_METRICS key)."""

    label: str
    train: dict[str, Curve]
    val: dict[str, Curve]


@dataclass(frozen=True)
class Panel:
    """What one axes shows: (run label, curve) pairs, a title, the y label, and whether y is log-scaled."""

    key: str
    title: str
    ylabel: str
    log: bool
    series: tuple[tuple[str, Curve], ...]
    markers: bool


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``; PlotError naming the folder, the file or the line otherwise."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PlotError(f"{run}: no such run folder")
    path = run / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"{run}: no {METRICS_FILE} (not a training run folder, or it has not logged yet)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path} line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
            raise PlotError(f"{path} line {n}: not a metrics record (an object with a step)")
        records.append(rec)
    if not records:
        raise PlotError(f"{path}: empty, the run has logged nothing yet")
    return records


def samples_at(steps: np.ndarray, train_steps: np.ndarray, train_samples: np.ndarray) -> np.ndarray:
    """Samples trained on at ``steps`` (M,), from the training records' (step, samples) pairs (N,) each.

    Linear between records (and from (0, 0) to the first); past the last record at its samples-per-step rate.
    """
    xs = np.concatenate([[0.0], np.asarray(train_steps, np.float64)])
    ys = np.concatenate([[0.0], np.asarray(train_samples, np.float64)])
    steps = np.asarray(steps, np.float64)
    out = np.interp(steps, xs, ys)
    rate = ys[-1] / xs[-1] if xs[-1] > 0 else 0.0
    beyond = steps > xs[-1]
    out[beyond] = ys[-1] + (steps[beyond] - xs[-1]) * rate
    return out


def run_curves(records: Sequence[dict], label: str, source: str = "metrics") -> RunCurves:
    """Series of one run's records (see the module doc). ``source`` names the file in errors."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        raise PlotError(f"{source}: no training records (kind 'train'), nothing to plot against samples")
    t_steps = np.array([r["step"] for r in train], np.float64)
    t_samples = np.array([r.get("samples", math.nan) for r in train], np.float64)
    if not np.isfinite(t_samples).all():
        raise PlotError(f"{source}: a training record has no 'samples' count")
    names: list[str] = []
    for r in train:  # the total first, then the terms in the order the file gives them
        for k, v in r.items():
            if k not in TRAIN_BOOKKEEPING and isinstance(v, (int, float)) and k not in names:
                names.append(k)
    names.sort(key=lambda k: k != "loss")
    train_curves = {}
    for k in names:
        rows = [(s, r[k]) for s, r in zip(t_samples, train) if isinstance(r.get(k), (int, float))]
        train_curves[k] = Curve(np.array([s for s, _ in rows]), np.array([v for _, v in rows], np.float64))
    val_curves = {}
    for k, _ in VAL_METRICS:
        rows = [r for r in val if isinstance(r.get(k), (int, float))]
        if rows:
            x = samples_at(np.array([r["step"] for r in rows], np.float64), t_steps, t_samples)
            val_curves[k] = Curve(x, np.array([r[k] for r in rows], np.float64))
    return RunCurves(label, train_curves, val_curves)


def panels(runs: Sequence[RunCurves]) -> list[Panel]:
    """The panels to draw: each loss quantity any run has (log scale), then each validation error any run
    has (mm). A quantity no run has gets no panel."""
    out: list[Panel] = []
    train_keys: list[str] = []
    for r in runs:
        train_keys += [k for k in r.train if k not in train_keys]
    train_keys.sort(key=lambda k: k != "loss")
    for k in train_keys:
        series = tuple((r.label, r.train[k]) for r in runs if k in r.train)
        title = "loss (total)" if k == "loss" else f"loss term: {k}"
        unit = LOSS_UNITS.get(k)
        out.append(Panel(k, title, f"train {unit}" if unit else "train value", True, series, False))
    for k, title in VAL_METRICS:
        series = tuple((r.label, r.val[k]) for r in runs if k in r.val)
        if series:
            out.append(Panel(k, f"val {title}", f"{title} (mm)", False, series, True))
    return out


def figure_size_px(num_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the picture of ``num_panels`` panels."""
    cols = min(PANEL_COLUMNS, max(num_panels, 1))
    rows = -(-max(num_panels, 1) // PANEL_COLUMNS)
    return round(cols * PANEL_INCHES[0] * DPI), round((rows * PANEL_INCHES[1] + LEGEND_INCHES) * DPI)


def _label_digits(values, most: int = 6) -> int:
    """The fewest significant digits (at least 2) that print each of ``values`` exactly (a tick at 0.225
    must not read 0.23) and tell them apart."""
    for d in range(2, most + 1):
        labels = [f"{v:.{d}g}" for v in values]
        if len(set(labels)) == len(set(values)) and all(abs(float(t) - v) <= 1e-9 * abs(v)
                                                        for t, v in zip(labels, values)):
            return d
    return most


def _log_axis(ax, values: np.ndarray) -> None:
    """A log-scaled y axis labelled in plain numbers (0.26, not 2.6×10⁻¹), with as many digits as it takes
    to print the tick values exactly. Curves within one decade get about six evenly spaced ticks (a log axis would
    show one or two there); wider ones the powers of ten, and the minor ticks' values too up to 1.5 decades,
    except within ~12 % of a power of ten, where a label would touch the one beside it."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator

    ax.set_yscale("log")
    span = float(np.log10(values.max() / values.min())) if len(values) else 0.0
    if span < 1.0:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.yaxis.set_minor_locator(NullLocator())
    lo, hi = ax.get_ylim()
    labelled_minor = 1.0 <= span < 1.5
    shown = [v for v in np.concatenate([ax.yaxis.get_majorticklocs(),
                                        ax.yaxis.get_minorticklocs() if labelled_minor else []]) if lo <= v <= hi]
    digits = _label_digits(shown)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.{digits}g}"))
    minor = FuncFormatter(lambda v, _: "" if abs(math.log10(v) - round(math.log10(v))) < 0.05 else f"{v:.{digits}g}")
    ax.yaxis.set_minor_formatter(minor if labelled_minor else NullFormatter())


def draw(panel_list: Sequence[Panel], labels: Sequence[str]):
    """A matplotlib Figure (Agg canvas, not shown) of the panels; one colour per label, one legend on top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    w, h = figure_size_px(len(panel_list))
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    cols = min(PANEL_COLUMNS, len(panel_list))
    rows = -(-len(panel_list) // PANEL_COLUMNS)
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    handles = {}
    # every panel spans the same samples, so a validation point lines up with the training curve above it
    x_max = max(float(c.x.max()) for p in panel_list for _, c in p.series if len(c.x))
    for i, p in enumerate(panel_list):
        ax = fig.add_subplot(rows, cols, i + 1)
        for lab, c in p.series:
            (line,) = ax.plot(c.x, c.y, color=colours[lab], label=lab, linewidth=1.4,
                              marker="o" if p.markers else None, markersize=3.5)
            handles.setdefault(lab, line)
        if p.log:
            _log_axis(ax, np.concatenate([c.y[c.y > 0] for _, c in p.series]))
        ax.set_xlim(left=0, right=x_max * 1.04)  # room for a marker on the last point
        ax.set_title(p.title, fontsize=10)
        ax.set_ylabel(p.ylabel, fontsize=9)
        ax.set_xlabel("samples trained on", fontsize=9)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.tick_params(which="both", labelsize=8)
        ax.grid(True, which="major", alpha=0.3)
    fig.legend([handles[lab] for lab in labels if lab in handles], [lab for lab in labels if lab in handles],
               loc="outside upper center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    return fig


def run_labels(runs: Sequence[str]) -> dict[str, Path]:
    """``NAME=RUN`` or ``RUN`` arguments → {label: run folder}; a plain RUN is labelled by its folder name,
    or by the path as given when two runs share a folder name."""
    pairs = []
    for item in runs:
        name, sep, path = item.partition("=")
        if sep and name and path:
            pairs.append((name, path, True))
        else:
            pairs.append((Path(item).name or item, item, False))
    counts: dict[str, int] = {}
    for name, _, _ in pairs:
        counts[name] = counts.get(name, 0) + 1
    out: dict[str, Path] = {}
    for name, path, explicit in pairs:
        label = name if explicit or counts[name] == 1 else path
        if label in out:
            raise PlotError(f"{label!r}: two runs with the same label; name them NAME=RUN")
        out[label] = Path(path)
    return out


def plot_runs(runs: Mapping[str, str | Path], out_png: str | Path):
    """Read each run's metrics, draw the panels, write ``out_png`` atomically; returns the Figure."""
    curves = [run_curves(read_metrics(path), label, str(Path(path) / METRICS_FILE)) for label, path in runs.items()]
    panel_list = panels(curves)
    fig = draw(panel_list, list(runs))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    out = Path(out_png)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return fig
