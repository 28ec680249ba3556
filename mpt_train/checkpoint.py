"""Atomic training checkpoints: `RUN/step-<N>/`, written to a temporary name, renamed, marker last.

Layout of one checkpoint folder:
  state.pt        model (versioned), optimiser, schedule, scaler, counters, resolved config,
                  store fingerprint (rank 0)
  rank-<r>.pt     that rank's RNG states (python, numpy, torch CPU/CUDA, the components' own
                  generators) and loader state
  COMPLETE        JSON marker written last: step, world size, fingerprint, and the size and
                  BLAKE2b digest of every file above

A folder without its marker (a run killed mid-write) is never considered: :func:`latest`
returns the newest complete one, and a crash while writing step N leaves step N-k intact.
A folder with its marker whose files were damaged afterwards (truncated, deleted, flipped
bytes) fails :func:`verify`; loading from a run folder then falls back to the previous
complete checkpoint with a warning that names the damaged one. Everything is saved as plain
tensors / containers, so loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpt_data.fileio import atomic_write, atomic_write_json

CHECKPOINT_VERSION = 1
MARKER_VERSION = 2  # 1: "files" was a list of names; 2: {name: {"size", "blake2b"}}
MARKER = "COMPLETE"
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_RE = re.compile(r"^\.tmp-step-(\d+)$")
_HASH_BLOCK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint cannot be used (the message names the folder or file and what to do)."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint folder with its COMPLETE marker whose files do not match the marker."""


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


def checkpoint_folders(run_dir: Path | str) -> list[Path]:
    """Every checkpoint folder of ``run_dir``, complete or not, temporary ones included."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and (_STEP_RE.match(p.name) or _TMP_RE.match(p.name)))


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


def file_digest(path: Path) -> dict[str, Any]:
    """{"size": bytes, "blake2b": hex digest} of a file (read in 4 MiB blocks)."""
    h = hashlib.blake2b(digest_size=32)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
            size += len(block)
    return {"size": size, "blake2b": h.hexdigest()}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save(run_dir: Path | str, step: int, state: dict[str, Any], rank_state: dict[str, Any], *,
         rank: int = 0, world_size: int = 1, barrier=None, keep: int = 2) -> Path | None:
    """Write checkpoint ``step`` atomically; every rank calls this.

    state: rank-0 content (model, optimiser, ...); rank_state: per-rank content (RNG, loader).
    Ranks write `rank-<r>.pt` into the shared temporary folder; after ``barrier()`` rank 0
    writes `state.pt`, renames the folder to `step-N` and writes the marker last (with every
    file's size and digest), then prunes all but the newest ``keep`` (>= 2) complete
    checkpoints. Returns the folder on rank 0.
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
    expected = {"state.pt", *(f"rank-{r}.pt" for r in range(world_size))}
    present = {p.name for p in tmp.iterdir()}
    if not expected <= present:
        raise CheckpointError(f"{tmp}: rank files {sorted(expected - present)} were not written; the "
                              f"checkpoint of step {step} is not complete")
    # Digests are taken in the temporary folder, before the rename: the marker then describes
    # exactly the bytes that were written, and a damaged file is detected for certain on load.
    files = {name: file_digest(tmp / name) for name in sorted(expected)}
    if final.exists():  # a stale incomplete or older copy of this step
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_json(final / MARKER, {"marker_version": MARKER_VERSION, "step": step, "world_size": world_size,
                                       "store_fingerprint": state.get("store_fingerprint"), "files": files})
    for _, old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    if barrier:
        barrier()
    return final


def read_marker(folder: Path) -> dict[str, Any]:
    """The COMPLETE marker of a checkpoint folder; DamagedCheckpoint if it is unreadable."""
    path = Path(folder) / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{path}: unreadable marker ({e})") from e
    if not isinstance(marker, dict) or "files" not in marker:
        raise DamagedCheckpoint(f"{path}: marker without a file list")
    return marker


def verify(folder: Path | str, *, digests: bool = True) -> dict[str, Any]:
    """Check a complete checkpoint folder against its marker; returns the marker.

    Raises DamagedCheckpoint naming the first file that is missing, has another size or
    (``digests``) another BLAKE2b digest than the marker records. Markers written before
    digests were recorded (a plain list of names) are checked for presence and non-emptiness.
    """
    folder = Path(folder)
    marker = read_marker(folder)
    files = marker["files"]
    if isinstance(files, list):
        files = {name: None for name in files}
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path}: missing (listed in its {MARKER} marker)")
        size = path.stat().st_size
        if want is None:
            if size == 0:
                raise DamagedCheckpoint(f"{path}: empty")
            continue
        if size != want["size"]:
            raise DamagedCheckpoint(f"{path}: {size} bytes, its {MARKER} marker records {want['size']}")
        if digests and file_digest(path)["blake2b"] != want["blake2b"]:
            raise DamagedCheckpoint(f"{path}: content differs from the digest in its {MARKER} marker")
    return marker


def _torch_load(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        # A file that passed verify() but does not load (an old marker without digests).
        raise DamagedCheckpoint(f"{path}: does not load ({type(e).__name__}: {str(e).splitlines()[0]})") from e


@dataclass(frozen=True)
class Loaded:
    """A loaded checkpoint: its folder, rank-0 state and this rank's state (None if it has none)."""

    folder: Path
    state: dict[str, Any]
    rank_state: dict[str, Any] | None


def _load_folder(folder: Path, rank: int, map_location, expected_fingerprint: str | None,
                 force: bool) -> Loaded:
    marker = verify(folder)
    state = _torch_load(folder / "state.pt", map_location)
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint version {state.get('checkpoint_version')} "
                              f"!= {CHECKPOINT_VERSION}")
    saved = state.get("store_fingerprint")
    if expected_fingerprint is not None and saved != expected_fingerprint and not force:
        raise CheckpointError(f"{folder}: checkpoint was trained on store fingerprint {saved!r}, this store is "
                              f"{expected_fingerprint!r}; pass --force to resume anyway")
    rank_file = folder / f"rank-{rank}.pt"
    world = int(marker.get("world_size", state.get("world_size", 1)))
    if rank < world and not rank_file.is_file():
        raise DamagedCheckpoint(f"{rank_file}: missing (the checkpoint was written by {world} ranks)")
    rank_state = _torch_load(rank_file, "cpu") if rank_file.is_file() else None
    return Loaded(folder, state, rank_state)


def load_rank_state(folder: Path | str, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s state from a checkpoint folder that :func:`load_checkpoint` returned (so
    already verified against its marker). An elastic resume gives every new rank rank 0's loader
    position: training loaders of all ranks stand at the same one."""
    path = Path(folder) / f"rank-{rank}.pt"
    if not path.is_file():
        raise DamagedCheckpoint(f"{path}: missing")
    return _torch_load(path, "cpu")


def load_checkpoint(path: Path | str, *, rank: int = 0, map_location: str | torch.device = "cpu",
                    expected_fingerprint: str | None = None, force: bool = False) -> Loaded:
    """Load a checkpoint: a step-N folder as given, or the newest usable one of a run folder.

    From a run folder (or `RUN/latest`) a damaged newest checkpoint is skipped with a warning
    naming it and the one used instead; every rank checks every file, so all ranks take the
    same decision. Raises FileNotFoundError when the run has no complete checkpoint,
    CheckpointError when none of them is usable (each one's problem in the message), and
    CheckpointError for a store fingerprint other than ``expected_fingerprint`` unless ``force``.
    """
    p = Path(path)
    if p.name == "latest":
        p = p.parent
    if (p / MARKER).is_file():  # one checkpoint named explicitly: no fallback
        return _load_folder(p, rank, map_location, expected_fingerprint, force)
    found = [folder for _, folder in reversed(complete_checkpoints(p))]
    if not found:
        raise FileNotFoundError(f"{path}: no complete checkpoint (a step-N folder with a {MARKER} marker)")
    problems = []
    for folder in found:
        try:
            loaded = _load_folder(folder, rank, map_location, expected_fingerprint, force)
        except DamagedCheckpoint as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"{p}: skipped damaged checkpoint(s) [{'; '.join(problems)}]; using {folder.name}",
                          stacklevel=2)
        return loaded
    raise CheckpointError(f"{p}: no usable checkpoint, every complete one is damaged [{'; '.join(problems)}]; "
                          f"start afresh with --overwrite")
