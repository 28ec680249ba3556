"""Reports over finished runs: the final validation figures of run folders, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping


class RunReportError(ValueError):
    """A run folder without the records a report needs (the message names it and why)."""


def final_validation(run_dir: str | Path) -> dict[str, float]:
    """The last validation record of a run (``RUN/metrics.jsonl``, kind "val"), in mm."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a training run folder)")
    last = None
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "val":
            last = rec
    if last is None:
        raise RunReportError(f"{path}: the run has no validation record (was it given --val?)")
    return {k: float(v) for k, v in last.items() if k not in ("kind",)}


def compare_runs(runs: Mapping[str, str | Path], columns: tuple[str, ...] = ("pa_mpjpe", "mpjpe", "mpve")
                 ) -> tuple[dict[str, dict[str, float]], str]:
    """({name: final validation metrics}, a markdown table of ``columns`` in mm) for named runs."""
    res = {name: final_validation(path) for name, path in runs.items()}
    head = "| run | step | " + " | ".join(f"{c} (mm)" for c in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 2)
    rows = [f"| {name} | {int(r.get('step', 0))} | " + " | ".join(f"{r.get(c, float('nan')):.1f}" for c in columns) + " |"
            for name, r in res.items()]
    return res, "\n".join([head, rule, *rows]) + "\n"
