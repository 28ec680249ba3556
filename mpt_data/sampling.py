"""Deterministic sparse sampling of motion frames.

Neighbouring mocap frames are nearly identical, so a store keeps a sparse, evenly spaced
subset of each sequence: frame k of the sample is the source frame at time
``k / target_fps`` seconds, i.e. index ``floor(k * fps / target_fps)``, starting at frame 0.
A sequence always contributes at least its first frame; at or above the source rate every
frame is kept.

``--target-meshes N`` is turned into one global rate by ``allocate_target``: the rate whose
total sample count over all sequences is closest to N (the paper keeps 2 M meshes of about
25 M frames). Both functions are pure functions of their inputs: no RNG, no dependence on
the order or partitioning of the work, so any number of workers samples the same frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_count(num_frames: int, fps: float, target_fps: float) -> int:
    """Number of frames ``sample_indices`` keeps (same arguments), without building them."""
    return _fast_total(np.array([num_frames], np.float64), np.array([fps], np.float64), target_fps)


def sample_indices(num_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """Source frame indices of an even sparse sample, (n,) int64, strictly increasing.

    num_frames: frames in the sequence (> 0); fps: its frame rate (> 0);
    target_fps: wanted samples per second of motion (> 0). Index k is
    ``floor(k * fps / target_fps)`` for every k whose index is < num_frames.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be > 0, got {num_frames}")
    if not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps must be finite and > 0, got {fps}")
    if not (target_fps > 0 and np.isfinite(target_fps)):
        raise ValueError(f"target_fps must be finite and > 0, got {target_fps}")
    if target_fps >= fps:
        return np.arange(num_frames, dtype=np.int64)
    stride = float(fps) / float(target_fps)
    # floor(k * stride) < T exactly when k < T / stride: k = 0 .. ceil(T / stride) - 1.
    n = int(np.ceil(num_frames / stride))
    idx = np.floor(np.arange(n, dtype=np.float64) * stride).astype(np.int64)
    # stride > 1 here, so clamping a rounding overshoot on the last index keeps order.
    return np.minimum(idx, num_frames - 1)


def total_count(frames_per_seq: Sequence[int], fps_per_seq: Sequence[float], target_fps: float) -> int:
    """Total of ``sample_count`` over sequences (the counts the builder will write)."""
    return _fast_total(np.asarray(frames_per_seq, np.float64), np.asarray(fps_per_seq, np.float64), target_fps)


def _fast_total(frames: np.ndarray, fps: np.ndarray, target_fps: float) -> int:
    # The same count as len(sample_indices): ceil(T / stride), or T at the full rate.
    full = target_fps >= fps
    stride = fps / target_fps
    counts = np.where(full, frames, np.ceil(frames / stride))
    return int(counts.sum())


def allocate_target(
    frames_per_seq: Sequence[int],
    fps_per_seq: Sequence[float],
    target_meshes: int,
) -> float:
    """One global sampling rate (frames per second) for a target total of meshes.

    frames_per_seq, fps_per_seq: frame count and frame rate of each valid sequence.
    Returns the rate r whose total ``sum(sample_count(T_i, fps_i, r))`` is closest to
    ``target_meshes`` (ties go to the smaller total); the total is a step function of r, so
    it can miss the target by a few meshes, and it never falls below one mesh per sequence.
    When the target exceeds the number of frames, every frame is kept (r = max fps).
    """
    frames = np.asarray(frames_per_seq, dtype=np.float64)
    fps = np.asarray(fps_per_seq, dtype=np.float64)
    if frames.shape != fps.shape or frames.ndim != 1 or frames.size == 0:
        raise ValueError("frames_per_seq and fps_per_seq must be equal-length, non-empty")
    if (frames <= 0).any() or (fps <= 0).any() or not np.isfinite(fps).all():
        raise ValueError("every sequence needs frames > 0 and a finite fps > 0")
    if target_meshes <= 0:
        raise ValueError(f"target_meshes must be > 0, got {target_meshes}")
    hi = float(fps.max())
    if _fast_total(frames, fps, hi) <= target_meshes:
        return hi
    # Bisection in log-rate for the smallest rate whose total reaches the target.
    lo = hi * 1e-9
    if _fast_total(frames, fps, lo) >= target_meshes:
        return lo
    for _ in range(200):
        mid = float(np.sqrt(lo * hi))
        if mid <= lo or mid >= hi:
            break
        if _fast_total(frames, fps, mid) >= target_meshes:
            hi = mid
        else:
            lo = mid
    total_hi = _fast_total(frames, fps, hi)
    total_lo = _fast_total(frames, fps, lo)
    return lo if target_meshes - total_lo <= total_hi - target_meshes else hi
