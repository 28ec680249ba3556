"""A closed icosphere and a small SMPL/SMPL+H-format body model skinned onto it, for the tests of the
body-model maths, the readers and the topology (exact, fast, no person-shaped model needed)."""

from __future__ import annotations

import numpy as np

from mpt_data import conventions as cv


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed unit icosphere: vertices (V, 3) float64, faces (F, 3) int64, outward."""
    t = (1 + 5 ** 0.5) / 2
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
         (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
         (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.array(p, float) / np.linalg.norm(p) for p in v]
    faces = list(f)
    for _ in range(subdivisions):
        mid: dict[tuple[int, int], int] = {}

        def midpoint(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in mid:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                mid[key] = len(verts) - 1
            return mid[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.array(verts), np.array(faces, np.int64)


def tiny_body_model(num_joints: int = 52, subdivisions: int = 3, num_betas: int = 16, seed: int = 0,
                    pose_correctives: bool = True) -> dict[str, np.ndarray]:
    """A small SMPL/SMPL+H-format model (smplx-loadable): an ellipsoid skinned to a
    skeleton laid out along it. Not a person; enough to test the maths exactly."""
    rng = np.random.default_rng(seed)
    sphere, faces = icosphere(subdivisions)
    v = sphere * np.array([0.25, 0.15, 0.9])  # z up, 1.8 m tall
    parents = np.array(cv.SMPLH_PARENTS if num_joints == 52 else cv.SMPL_PARENTS)
    # Joints: points inside the body, spread by depth in the tree.
    joints = np.zeros((num_joints, 3))
    for j in range(1, num_joints):
        joints[j] = joints[parents[j]] + rng.normal(0, 0.08, 3) * np.array([1, 0.5, 2])
    joints = np.clip(joints, [-0.2, -0.1, -0.8], [0.2, 0.1, 0.8])
    d = ((v[:, None] - joints[None]) ** 2).sum(-1)
    w = np.exp(-d / 0.02)
    w /= w.sum(1, keepdims=True)
    nearest = np.argsort(d, axis=0)[:8].T  # J_regressor: 8 nearest vertices per joint
    j_reg = np.zeros((num_joints, v.shape[0]))
    for j in range(num_joints):
        wr = rng.uniform(0.5, 1.0, 8)
        j_reg[j, nearest[j]] = wr / wr.sum()
    shapedirs = rng.normal(0, 0.01, (v.shape[0], 3, num_betas))
    posedirs = rng.normal(0, 0.002 if pose_correctives else 0.0, (v.shape[0], 3, 9 * (num_joints - 1)))
    kintree = np.stack([parents, np.arange(num_joints)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # the official files store the root's parent as uint32 -1
    return {
        "v_template": v, "f": faces.astype(np.uint32), "J_regressor": j_reg, "weights": w,
        "kintree_table": kintree, "shapedirs": shapedirs, "posedirs": posedirs,
    }
