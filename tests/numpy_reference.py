"""Independent numpy references the tests compare the project's torch code against."""

from __future__ import annotations

import numpy as np


def np_procrustes(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Similarity Procrustes written independently: Horn/Kabsch on the 3x3 H = P^T G."""
    mp, mg = p.mean(0), g.mean(0)
    p0, g0 = p - mp, g - mg
    h = p0.T @ g0
    u, s, vt = np.linalg.svd(h)
    r = vt.T @ u.T  # rotation taking p0 to g0 (as column vectors)
    if np.linalg.det(r) < 0:
        vt[-1] *= -1
        s[-1] *= -1
        r = vt.T @ u.T
    scale = s.sum() / (p0 ** 2).sum()
    return scale * p0 @ r.T + mg
