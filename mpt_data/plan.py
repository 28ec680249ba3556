"""The build plan: which frames of which files become which global mesh indices, before anything is written.

Every motion file is read and validated in full (`scan_file`, run on the cluster), so a bad file is skipped
here with its reason and can never shift indices later. Kept sequences get their sampled frames in sorted
path order; the mesh range is cut into partitions of exactly one shard each, so each write task owns whole
shards. Everything here is a pure function of the files and the recipe: any number of workers gets the same plan.

A hand recipe on AMASS (`hands: [right, left]`) makes one mesh per hand side of each sampled frame: frame f's
meshes are consecutive, in the recipe's `hands` order, so a sequence of F sampled frames owns F x len(hands)
meshes (a shard may end between the sides of one frame). A body recipe, and a hand recipe on MANO parameter
files (`sources.kind: mano_params`, where each file names its one side and no `hands` are listed), make one
mesh per sampled frame, with `Segment.sides` empty.

The plan reads the files through a reader of the recipe's source kind (`mpt_data.meshes.SequenceReader`, made
by the driver and passed to `scan_file`), so this module needs no model and no source-specific code: both
readers raise `amass.MotionError` with a reason and return a record with `gender`, `fps` and `num_frames`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpt_data import schema
from mpt_data.recipe import BuildConfig, RecipeError



@dataclass(frozen=True)
class Segment:
    """The sampled frames of one sequence that fall in one partition."""

    row: int  # sequences.parquet row
    path: str  # absolute file path
    size: int  # bytes, checked again when the task reads the file
    gender: str
    split: int
    frames: tuple[int, ...]  # source frame index of each mesh
    mesh_start: int  # global mesh index of frames[0]
    sides: tuple[int, ...] = ()  # AMASS hand recipes: each mesh's index into the recipe's `hands`; () otherwise


def meshes_per_frame(cfg: BuildConfig) -> int:
    """Meshes made of one sampled frame: one per hand side of an AMASS hand recipe, else 1 (bodies, and
    MANO parameter files, whose recipes list no `hands`)."""
    return max(1, len(cfg.hands))


@dataclass(frozen=True)
class Partition:
    index: int
    start: int
    stop: int
    segments: tuple[Segment, ...]


def scan_file(path: str, root: str, fps_overrides: dict[str, float],
              read: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Read and validate one source file fully; return its sequences-table row (status 'ok' or 'skipped').

    read: `read(path, root, fps_overrides)` -> a record with `gender`, `fps`, `num_frames`, raising
    MotionError (the recipe's `meshes.SequenceReader`); None: `amass.read_motion`. Any listed entry gets a
    row: a folder, FIFO, dangling or looping link, an unreadable, corrupt or implausible file (see
    `amass.read_motion`, `mano_params.read_params`) is 'skipped' with its reason, never an exception.
    """
    from mpt_data.amass import MotionError, file_sha256, read_motion, subset_and_subject

    read = read_motion if read is None else read
    p = Path(path)
    rel = Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).as_posix()
    subset, subject = subset_and_subject(rel)
    row: dict[str, Any] = {"path": rel, "subset": subset, "subject": subject, "gender": "", "fps": 0.0,
                           "frames": 0, "size": 0, "sha256": "", "status": "skipped", "reason": ""}
    try:
        # Read first: it names what a non-regular entry is (a stat would just fail on a dangling link).
        motion = read(p, root, fps_overrides)
        row["size"] = p.stat().st_size
        row["sha256"] = file_sha256(p)
    except MotionError as err:
        row["reason"] = str(err)
        return row
    except OSError as err:
        row["reason"] = f"unreadable file: {err.strerror or err}"
        return row
    row.update(gender=motion.gender, fps=float(motion.fps), frames=motion.num_frames, status="ok")
    return row


def plan_build(cfg: BuildConfig, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Partition], int]:
    """Sample frames and assign global mesh indices; returns (table rows, partitions, number of meshes)."""
    from mpt_data.sampling import allocate_target, sample_indices

    rows = sorted(rows, key=lambda r: r["path"])
    splits = dict(cfg.splits)
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        reasons = "; ".join(f"{r['path']}: {r['reason']}" for r in rows[:5])
        raise RecipeError(f"no usable motion files under {cfg.amass_root} (after include/exclude; {len(rows)} "
                          f"skipped{': ' + reasons if reasons else ''}); nothing to build")
    per_frame = meshes_per_frame(cfg)
    if cfg.target_fps is not None:
        rate = float(cfg.target_fps)
    else:  # target_meshes counts meshes: an AMASS hand recipe samples a len(hands)-th as many frames
        rate = allocate_target([r["frames"] for r in ok], [r["fps"] for r in ok],
                               max(1, -(-int(cfg.target_meshes) // per_frame)))
    next_mesh = 0
    sampled: dict[int, np.ndarray] = {}  # row -> source frame of each of its meshes
    for i, r in enumerate(rows):
        r["index"] = i
        r["split"] = splits.get(r["subset"], "train")
        if r["status"] != "ok":
            r["sampled"], r["first_mesh"] = 0, -1
            continue
        idx = np.repeat(sample_indices(r["frames"], r["fps"], rate), per_frame)
        sampled[i] = idx
        r["sampled"], r["first_mesh"] = int(idx.shape[0]), next_mesh
        next_mesh += int(idx.shape[0])
    n = next_mesh
    root = Path(cfg.amass_root)
    parts: list[Partition] = []
    order = sorted(sampled)  # sequences in mesh order: their ranges are contiguous and increasing
    k = 0
    for pi in range(-(-n // cfg.shard_meshes)):
        start, stop = pi * cfg.shard_meshes, min((pi + 1) * cfg.shard_meshes, n)
        segs = []
        while k < len(order) and rows[order[k]]["first_mesh"] + sampled[order[k]].shape[0] <= start:
            k += 1
        j = k
        while j < len(order) and rows[order[j]]["first_mesh"] < stop:
            i = order[j]
            r, idx, first = rows[i], sampled[i], rows[i]["first_mesh"]
            lo, hi = max(start, first), min(stop, first + idx.shape[0])
            sides = tuple(k % per_frame for k in range(lo - first, hi - first)) if cfg.hands else ()
            segs.append(Segment(row=i, path=str(root / r["path"]), size=r["size"], gender=r["gender"],
                                split=schema.SPLITS[r["split"]], frames=tuple(int(f) for f in idx[lo - first:hi - first]),
                                mesh_start=lo, sides=sides))
            j += 1
        parts.append(Partition(pi, start, stop, tuple(segs)))
    for r in rows:
        r["sample_fps"] = rate
    return rows, parts, n


def sequences_table_bytes(rows: list[dict[str, Any]]) -> bytes:
    """sequences.parquet contents for the planned rows (deterministic bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        "index": pa.array([r["index"] for r in rows], pa.int32()),
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "subset": pa.array([r["subset"] for r in rows], pa.string()),
        "subject": pa.array([r["subject"] for r in rows], pa.string()),
        "gender": pa.array([r["gender"] for r in rows], pa.string()),
        "fps": pa.array([r["fps"] for r in rows], pa.float64()),
        "frames": pa.array([r["frames"] for r in rows], pa.int64()),
        "sampled": pa.array([r["sampled"] for r in rows], pa.int64()),
        "first_mesh": pa.array([r["first_mesh"] for r in rows], pa.int64()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
        "size": pa.array([r["size"] for r in rows], pa.int64()),
        "sha256": pa.array([r["sha256"] for r in rows], pa.string()),
        "status": pa.array([r["status"] for r in rows], pa.string()),
        "reason": pa.array([r["reason"] for r in rows], pa.string()),
    }
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, compression="zstd")
    return buf.getvalue()


def table_rows(table: bytes) -> list[dict[str, Any]]:
    """The rows of `sequences_table_bytes` output, as dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(table)).to_pylist()
