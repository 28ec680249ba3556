"""Atomic training checkpoints: `RUN/step-<N>/`, written to a temporary name, renamed, marker last.

Layout of one checkpoint folder:
  state.pt        model (versioned), optimiser, schedule, scaler, counters, resolved config,
                  store fingerprint (rank 0)
  rank-<r>.pt     that rank's RNG states (python, numpy, torch CPU/CUDA) and loader state
  COMPLETE        JSON marker written last: step, files, fingerprint

A folder without its marker (a run killed mid-write) is never considered: :func:`latest`
returns the newest complete one, and a crash while writing step N leaves step N-k intact.
Everything is saved as plain tensors / containers, so loading uses
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_VERSION = 1
MARKER = "COMPLETE"
_STEP_RE = re.compile(r"^step-(\d+)$")


def step_dir(run_dir: Path | str, step: int) -> Path:
    return Path(run_dir) / f"step-{step:08d}"


def complete_checkpoints(run_dir: Path | str) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(run_dir: Path | str) -> Path | None:
    """The newest complete checkpoint folder, or None. Incomplete or temporary folders are ignored."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve(path: Path | str) -> Path:
    """A checkpoint folder from a folder, a run folder, or `RUN/latest`. Raises if none is complete."""
    p = Path(path)
    if p.name == "latest":
        p = p.parent
    if (p / MARKER).is_file():
        return p
    found = latest(p)
    if found is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint (a step-N folder with a {MARKER} marker)")
    return found


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors/containers that `weights_only` loading accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: Path | str, step: int, state: dict[str, Any], rank_state: dict[str, Any], *,
         rank: int = 0, world_size: int = 1, barrier=None, keep: int = 2) -> Path | None:
    """Write checkpoint ``step`` atomically; every rank calls this.

    state: rank-0 content (model, optimiser, ...); rank_state: per-rank content (RNG, loader).
    Ranks write `rank-<r>.pt` into the shared temporary folder; after ``barrier()`` rank 0
    writes `state.pt`, renames the folder to `step-N` and writes the marker last, then prunes
    all but the newest ``keep`` (>= 2) complete checkpoints. Returns the folder on rank 0.
    """
    if keep < 2:
        raise ValueError("keep at least 2 checkpoints")
    run_dir = Path(run_dir)
    final = step_dir(run_dir, step)
    tmp = run_dir / f".tmp-step-{step:08d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    _atomic_torch_save(rank_state, tmp / f"rank-{rank}.pt")
    if barrier:
        barrier()
    if rank != 0:
        if barrier:
            barrier()
        return None
    blob = dict(state)
    blob["checkpoint_version"] = CHECKPOINT_VERSION
    blob["world_size"] = world_size
    blob["step"] = step
    _atomic_torch_save(blob, tmp / "state.pt")
    if final.exists():  # a stale incomplete or older copy of this step
        shutil.rmtree(final)
    os.replace(tmp, final)
    marker = {"step": step, "world_size": world_size, "store_fingerprint": state.get("store_fingerprint"),
              "files": sorted(p.name for p in final.iterdir())}
    with open(final / (MARKER + ".tmp"), "w") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(final / (MARKER + ".tmp"), final / MARKER)
    for _, old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    if barrier:
        barrier()
    return final


def load(path: Path | str, *, rank: int = 0, map_location: str | torch.device = "cpu",
         expected_fingerprint: str | None = None, force: bool = False) -> tuple[dict, dict | None]:
    """Load (state, rank_state) from a complete checkpoint (folder, run folder or RUN/latest).

    Refuses a checkpoint written against a different store fingerprint than
    ``expected_fingerprint`` unless ``force``. rank_state is None when the checkpoint has no
    file for ``rank`` (e.g. evaluation with another world size).
    """
    folder = resolve(path)
    state = torch.load(folder / "state.pt", map_location=map_location, weights_only=True)
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{folder}: checkpoint version {state.get('checkpoint_version')} "
                         f"!= {CHECKPOINT_VERSION}")
    saved = state.get("store_fingerprint")
    if expected_fingerprint is not None and saved != expected_fingerprint and not force:
        raise ValueError(f"{folder}: checkpoint was trained on store fingerprint {saved!r}, this store is "
                         f"{expected_fingerprint!r}; pass --force to resume anyway")
    rank_file = folder / f"rank-{rank}.pt"
    rank_state = (torch.load(rank_file, map_location="cpu", weights_only=True) if rank_file.is_file() else None)
    return state, rank_state
