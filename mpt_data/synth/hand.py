"""A synthetic MANO hand: MANO_RIGHT.pkl / MANO_LEFT.pkl that tests and the demo use without the licensed files.

The right hand is designed in the axes of the synthetic body's right hand in its rest pose (y up, the
body's left at +x): the wrist at the origin, the fingers along -x, the palm facing down (-y) and the thumb
forward (+z), so a hand posed with the body's wrist rotation (``mpt_data.hand.hand_pose_from_smplh``)
sits as the body's own hand does.

Geometry: a smooth union of implicit solids (a rounded-box palm, a forearm stub, three round cones per
finger; ``mpt_data.synth.surface``) polygonised by marching tetrahedra, decimated to exactly MANO's 778
vertices and relaxed onto the surface: one closed, outward-oriented surface (a closed genus-0 mesh of
778 vertices has 1552 faces; the official MANO mesh, open at the wrist, has 1538).

Rig: MANO's 16 joints (``conventions.MANO_JOINTS``) at the designed knuckles, each the average of the
vertices of the surface ring around it (``J_regressor`` rows sum to one); skinning weights from the
distances to each bone's solids (the three nearest bones, normalised); 10 shape directions (overall size,
finger length, palm width, thickness, each finger's length, finger girth); no pose correctives (``posedirs``
zero: plain LBS); ``hands_components`` an orthonormal (45, 45) basis and ``hands_mean`` a slight curl.
The five fingertip vertices (the farthest surface point along each last bone) go to ``vertex_ids.json``
under ``fingertips``. The left model is the right one reflected across x = 0 (faces re-oriented), so
``mpt_data.hand.mirror_axis_angle`` maps its poses onto the right model's.

Files are chumpy-free pickles with the official keys (loadable by ``smplx.MANO``) and byte-identical for
the same seed.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from mpt_data import conventions as cv
from mpt_data.fileio import atomic_write_bytes
from mpt_data.synth import surface as ss

GRID_STEP_M = 0.0025
NUM_SHAPE_DIRECTIONS = 10

# Designed joints (metres, right hand, see the module docstring): per finger its three joints and its tip.
_FINGER_JOINTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "index": ((-0.090, 0.000, 0.026), (-0.131, 0.000, 0.028), (-0.156, -0.001, 0.029), (-0.176, -0.002, 0.030)),
    "middle": ((-0.094, 0.000, 0.007), (-0.140, 0.000, 0.007), (-0.168, -0.001, 0.007), (-0.190, -0.002, 0.007)),
    "ring": ((-0.090, 0.000, -0.012), (-0.132, 0.000, -0.013), (-0.158, -0.001, -0.014), (-0.178, -0.002, -0.015)),
    "pinky": ((-0.081, 0.000, -0.030), (-0.113, 0.000, -0.034), (-0.134, -0.001, -0.036), (-0.151, -0.002, -0.038)),
    "thumb": ((-0.022, -0.010, 0.024), (-0.046, -0.013, 0.047), (-0.068, -0.014, 0.062), (-0.088, -0.014, 0.072)),
}
# Radii (m) at each finger joint and at the tip.
_FINGER_RADII: dict[str, tuple[float, float, float, float]] = {
    "index": (0.0095, 0.0085, 0.0078, 0.0068),
    "middle": (0.0098, 0.0088, 0.0080, 0.0070),
    "ring": (0.0092, 0.0082, 0.0075, 0.0066),
    "pinky": (0.0082, 0.0072, 0.0066, 0.0058),
    "thumb": (0.0130, 0.0105, 0.0092, 0.0080),
}


def design_joints() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(16, 3) designed MANO joints in ``conventions.MANO_JOINTS`` order and the five tip points."""
    joints = np.zeros((len(cv.MANO_JOINTS), 3))
    tips = {}
    for finger, pts in _FINGER_JOINTS.items():
        for k in range(3):
            joints[cv.MANO_JOINTS.index(f"{finger}{k + 1}")] = pts[k]
        tips[finger] = np.asarray(pts[3])
    return joints, tips


def design_primitives(joints: np.ndarray, tips: dict[str, np.ndarray]) -> tuple[ss.Primitive, ...]:
    """The hand's solids; ``part`` is the MANO joint whose rotation moves each one."""
    P = ss.Primitive
    prims = [
        P("cone", (0.030, 0.0, 0.0), (-0.004, 0.0, 0.0), 0.024, 0.025, 0.0, 0),  # forearm stub, closed at +x
        P("box", (-0.047, 0.0, -0.001), (0.047, 0.013, 0.040), 0.011, 0.0, 0.012, 0),  # palm
    ]
    for finger, radii in _FINGER_RADII.items():
        ids = [cv.MANO_JOINTS.index(f"{finger}{k}") for k in (1, 2, 3)]
        pts = [joints[i] for i in ids] + [tips[finger]]
        if finger == "thumb":  # the thumb's base fills out of the palm
            prims.append(P("cone", (-0.010, -0.004, 0.010), tuple(pts[0]), 0.016, radii[0], 0.008, 0))
        else:  # short stubs from the palm's edge to the knuckle
            base = pts[0] + np.array([0.012, 0.0, 0.0])
            prims.append(P("cone", tuple(base), tuple(pts[0]), radii[0], radii[0], 0.005, 0))
        for k in range(3):
            end = pts[k + 1] - (radii[3] * 0.9 * (pts[3] - pts[2]) / np.linalg.norm(pts[3] - pts[2]) if k == 2 else 0)
            prims.append(P("cone", tuple(pts[k]), tuple(end), radii[k], radii[k + 1], 0.003, ids[k]))
    return tuple(prims)


def build_surface(prims: tuple[ss.Primitive, ...], num_vertices: int = cv.MANO_NUM_VERTICES,
                  step: float = GRID_STEP_M) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-oriented mesh of the implicit hand with exactly ``num_vertices`` vertices:
    (V, 3) float64 metres and (F, 3) int64."""
    lo = np.array([-0.205, -0.035, -0.060])
    hi = np.array([0.062, 0.035, 0.092])
    axes = [np.arange(lo[k], hi[k] + step, step) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    shape = grid.shape[:3]
    f = ss.body_distance_banded(prims, grid.reshape(-1, 3), band=4 * step).reshape(shape)
    if (f[0] <= 0).any() or (f[-1] <= 0).any() or (f[:, 0] <= 0).any() or (f[:, -1] <= 0).any() \
            or (f[:, :, 0] <= 0).any() or (f[:, :, -1] <= 0).any():
        raise RuntimeError("synthetic hand does not fit its grid")
    verts, faces, _ = ss.marching_tetrahedra(f, grid)
    verts, faces = ss.largest_component(verts, faces)
    # Finer triangles on the fingers than on the palm and the forearm stub.
    size = np.where(verts[:, 0] < -0.085, 0.75, 1.0)
    verts, faces, _ = ss.decimate_to(verts, faces, num_vertices, size)
    verts = ss.relax_onto(verts, faces, prims, iterations=6)
    return verts, faces


def _ring_regressor(verts: np.ndarray, joints: np.ndarray, parents: tuple[int, ...]) -> np.ndarray:
    """(J, V) regressor: each joint the mean of the vertices near the plane through it across its bone."""
    reg = np.zeros((len(joints), len(verts)))
    children = {p: c for c, p in reversed(list(enumerate(parents))) if p >= 0}
    for j, x in enumerate(joints):
        axis = (joints[children[j]] - x) if j in children and j != 0 else np.array([-1.0, 0.0, 0.0])
        axis = axis / np.linalg.norm(axis)
        rel = verts - x
        along = rel @ axis
        radial = np.linalg.norm(rel - along[:, None] * axis, axis=1)
        near = np.flatnonzero((np.abs(along) < 0.004) & (radial < (0.03 if j == 0 else 0.016)))
        if len(near) < 3:  # widen until a ring is found
            near = np.argsort(np.linalg.norm(rel, axis=1))[:8]
        reg[j, near] = 1.0 / len(near)
    return reg


def skinning_weights(verts: np.ndarray, prims: tuple[ss.Primitive, ...]) -> np.ndarray:
    """(V, 16) weights: per vertex its three nearest bones' solids, weighted by exp(-distance / 4 mm)."""
    d = ss.part_distances(prims, verts, len(cv.MANO_JOINTS))
    d = d - d.min(axis=1, keepdims=True)
    w = np.exp(-d / 0.004)
    cut = np.sort(w, axis=1)[:, -3][:, None]
    w = np.where(w >= cut, w, 0.0)
    return w / w.sum(axis=1, keepdims=True)


def shape_directions(verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(V, 3, 10) displacements per unit shape coefficient (about one standard deviation of hand size)."""
    out = np.zeros((len(verts), 3, NUM_SHAPE_DIRECTIONS))
    finger_zone = np.clip((-verts[:, 0] - 0.08) / 0.03, 0.0, 1.0)  # 0 on the palm, 1 on the fingers
    out[:, :, 0] = 0.05 * verts  # overall size
    out[:, 0, 1] = 0.15 * np.minimum(verts[:, 0] + 0.085, 0.0)  # finger length
    palm = 1.0 - finger_zone
    out[:, 2, 2] = 0.08 * verts[:, 2] * palm  # palm width
    out[:, 1, 3] = 0.12 * verts[:, 1]  # thickness
    for i, finger in enumerate(("thumb", "index", "middle", "ring", "pinky")):
        base = joints[cv.MANO_JOINTS.index(f"{finger}1")]
        tip = np.asarray(_FINGER_JOINTS[finger][3])
        axis = (tip - base) / np.linalg.norm(tip - base)
        along = np.clip((verts - base) @ axis, 0.0, None)
        near = np.linalg.norm(np.cross(verts - base, axis), axis=1) < 0.018
        if i < 4:  # thumb, index, middle, ring: their own length
            out[:, :, 4 + i] = 0.12 * (along * near)[:, None] * axis
    # Girth of every finger: radial growth around the finger axes.
    centre = np.stack([np.zeros_like(verts[:, 0]), np.zeros_like(verts[:, 0]), verts[:, 2]], 1)
    radial = verts - np.stack([verts[:, 0], centre[:, 1], verts[:, 2]], 1)
    out[:, :, 8] = 0.15 * radial * finger_zone[:, None]
    out[:, 0, 9] = 0.06 * verts[:, 0] * palm  # palm length
    return out


def fingertip_ids(verts: np.ndarray, joints: np.ndarray) -> dict[str, int]:
    """Per finger the vertex farthest along its last bone (the fingertip)."""
    ids = {}
    for finger in cv.HAND21_FINGERS:
        last = joints[cv.MANO_JOINTS.index(f"{finger}3")]
        tip = np.asarray(_FINGER_JOINTS[finger][3])
        axis = (tip - last) / np.linalg.norm(tip - last)
        score = (verts - last) @ axis - 2.0 * np.linalg.norm(np.cross(verts - last, axis), axis=1)
        ids[finger] = int(np.argmax(score))
    return ids


def _kintree() -> np.ndarray:
    table = np.zeros((2, len(cv.MANO_PARENTS)), dtype=np.int64)
    table[0] = [p if p >= 0 else 4294967295 for p in cv.MANO_PARENTS]  # MANO files store uint32 -1
    table[1] = np.arange(len(cv.MANO_PARENTS))
    return table


def hand_arrays(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The right hand's model arrays (official MANO keys) and its fingertip vertex ids."""
    rng = np.random.default_rng(seed)
    joints, tips = design_joints()
    prims = design_primitives(joints, tips)
    verts, faces = build_surface(prims)
    reg = _ring_regressor(verts, joints, cv.MANO_PARENTS)
    components, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    curl = np.zeros((15, 3))
    curl[:, 2] = 0.15  # a slight flexion of every finger joint (about z: fingers along -x, palm down)
    arrays = {
        "v_template": verts.astype(np.float64),
        "f": faces.astype(np.uint32),
        "J_regressor": reg,
        "weights": skinning_weights(verts, prims),
        "kintree_table": _kintree(),
        "shapedirs": shape_directions(verts, joints),
        "posedirs": np.zeros((len(verts), 3, 9 * (len(cv.MANO_JOINTS) - 1))),
        "hands_components": components,
        "hands_mean": curl.reshape(-1),
        "bs_style": np.array("lbs"), "bs_type": np.array("lrotmin"),
    }
    return arrays, fingertip_ids(verts, joints)


def mirror_arrays(right: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The left hand: the right one reflected across x = 0 (geometry, shape directions and the PCA
    basis mirrored, faces re-oriented so normals still point outwards)."""
    left = dict(right)
    flip = np.array([-1.0, 1.0, 1.0])
    left["v_template"] = right["v_template"] * flip
    left["shapedirs"] = right["shapedirs"] * flip[None, :, None]
    left["f"] = right["f"][:, ::-1].copy()
    aa_flip = np.tile([1.0, -1.0, -1.0], 15)
    left["hands_components"] = right["hands_components"] * aa_flip[None, :]
    left["hands_mean"] = right["hands_mean"] * aa_flip
    return left


def write_hand_models(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write MANO_RIGHT.pkl, MANO_LEFT.pkl and vertex_ids.json under ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    right, tip_ids = hand_arrays(seed)
    written = {}
    for name, arrays in (("MANO_RIGHT.pkl", right), ("MANO_LEFT.pkl", mirror_arrays(right))):
        atomic_write_bytes(out / name, pickle.dumps(arrays, protocol=4))
        written[name] = out / name
    ids = {"fingertips": tip_ids, "num_vertices": cv.MANO_NUM_VERTICES}
    atomic_write_bytes(out / "vertex_ids.json", (json.dumps(ids, indent=1, sort_keys=True) + "\n").encode())
    written["vertex_ids.json"] = out / "vertex_ids.json"
    return written
