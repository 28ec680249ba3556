"""Skinning weights and joint regressor of the synthetic body (`mpt_data.synth.body`).

Pure functions of the surface, its solids and the designed joints; kept apart from the
surface design so each module reads on its own.
"""

from __future__ import annotations

import numpy as np

from mpt_data import conventions as cv
from mpt_data.synth import surface as ss

N_SMPLH = len(cv.SMPLH_JOINTS)  # 52
_CHILDREN: dict[int, list[int]] = {j: [] for j in range(N_SMPLH)}
for _j, _p in enumerate(cv.SMPLH_PARENTS):
    if _p >= 0:
        _CHILDREN[_p].append(_j)
_FINGER_PARTS = frozenset(range(22, N_SMPLH))
MAX_JOINT_SHIFT_M = 0.005  # farthest a coarse mesh may move a rest joint onto its surface (metres)


def skinning_weights(verts: np.ndarray, prims: tuple[ss.Primitive, ...], max_influences: int = 4) -> np.ndarray:
    """(V,52) weights: a softmax of the distance to each body part's solids, restricted to the
    nearest part and its kinematic parent and children (so a thigh never drags the other
    thigh, nor a finger its neighbour), at most ``max_influences`` per vertex, rows sum to 1."""
    d = ss.part_distances(prims, verts, N_SMPLH)
    nearest = np.argmin(d, axis=1)
    allowed = np.zeros_like(d, dtype=bool)
    for j in range(N_SMPLH):
        rows = nearest == j
        if rows.any():
            cols = [j] + _CHILDREN[j] + ([cv.SMPLH_PARENTS[j]] if cv.SMPLH_PARENTS[j] >= 0 else [])
            allowed[np.ix_(rows, cols)] = True
    tau = np.where(np.isin(np.arange(N_SMPLH), list(_FINGER_PARTS)), 0.004, 0.015)
    dmin = d[np.arange(len(d)), nearest][:, None]
    w = np.where(allowed & np.isfinite(d), np.exp(-(d - dmin) / tau[nearest][:, None]), 0.0)
    if max_influences < N_SMPLH:
        cut = -np.sort(-w, axis=1)[:, max_influences - 1: max_influences]
        w = np.where(w >= cut, w, 0.0)
    w = np.where(w < 1e-4, 0.0, w)
    return w / w.sum(axis=1, keepdims=True)


def _nnls(A: np.ndarray, b: np.ndarray, iters: int = 200) -> np.ndarray:
    """Lawson-Hanson non-negative least squares: argmin ||A x - b||, x >= 0."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iters):
        grad = A.T @ (b - A @ x)
        if passive.all() or grad[~passive].max(initial=-np.inf) <= 1e-12:
            break
        passive[np.argmax(np.where(passive, -np.inf, grad))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg] + 1e-300))
            x = x + alpha * (z - x)
            passive &= x > 1e-14
            x[~passive] = 0.0
    return x


def solve_regressor(verts: np.ndarray, weights: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(J,V) joint regressor with non-negative rows summing to 1 and ``R @ verts == joints``
    (to 1e-9 m; on meshes too coarse to enclose a finger joint, the nearest point they can
    reach, under ``MAX_JOINT_SHIFT_M`` away): each row spreads over the vertices around its joint on its own and
    neighbouring parts, half Gaussian by distance and half the non-negative solution that
    makes the weighted mean exactly the joint."""
    J = len(joints)
    R = np.zeros((J, len(verts)))
    dominant = weights.argmax(axis=1)
    for j in range(J):
        parts = [j] + _CHILDREN[j] + ([cv.SMPLH_PARENTS[j]] if cv.SMPLH_PARENTS[j] >= 0 else [])
        own = np.nonzero(np.isin(dominant, parts))[0]
        k0 = 12 if j in _FINGER_PARTS else 30
        tries = [(own, k) for k in (k0, 2 * k0, 4 * k0, 8 * k0)]
        tries += [(np.arange(len(verts)), k) for k in (k0, 2 * k0, 4 * k0)]  # coarse meshes
        for cand, k in tries:
            dist = np.linalg.norm(verts[cand] - joints[j], axis=1)
            sel = cand[np.argsort(dist, kind="stable")[:k]]
            pv = verts[sel]
            sigma = max(np.median(np.linalg.norm(pv - joints[j], axis=1)), 1e-4)
            g = np.exp(-0.5 * (np.linalg.norm(pv - joints[j], axis=1) / sigma) ** 2)
            g /= g.sum()
            target = 2.0 * joints[j] - g @ pv  # 0.5 g + 0.5 u hits the joint when u hits this
            scale = 100.0
            A = np.vstack([pv.T, scale * np.ones(len(sel))])
            for mix in (0.5, 1.0):
                tgt = target if mix == 0.5 else joints[j]
                u = _nnls(A, np.concatenate([tgt, [scale]]))
                w = (1 - mix) * g + mix * u
                if np.abs(w @ pv - joints[j]).max() < 1e-9 and abs(w.sum() - 1) < 1e-9:
                    break
            else:
                continue
            R[j, sel] = w / w.sum()
            break
        else:
            # A very coarse mesh can leave a thin finger's joint just outside its surface:
            # take the nearest reachable point (the rest joint moves by under 5 mm). Below
            # `body.MIN_VERTICES` the fingers are too coarse for that (at 1,300 vertices a
            # finger joint is 7 mm out, at 500 15-28 mm), hence that minimum.
            miss = float(np.abs(w @ pv - joints[j]).max())
            if miss > MAX_JOINT_SHIFT_M:
                raise RuntimeError(f"joint {cv.SMPLH_JOINTS[j]} lies {miss * 1000:.1f} mm outside the surface around it")
            R[j, sel] = w / w.sum()
    return R
