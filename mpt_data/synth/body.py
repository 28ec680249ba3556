"""A synthetic humanoid body model in the SMPL / SMPL+H file formats, made from a seed.

The licensed SMPL family models are not on every machine; this model stands in for them in
tests and the demo, in the exact file layouts the real ones come in:

* ``smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl``: plain pickles (numpy arrays only, no chumpy) with
  ``v_template`` (V,3), ``f`` (F,3) uint32, ``J_regressor`` (24,V), ``J`` (24,3), ``weights``
  (V,24), ``kintree_table`` (2,24), ``shapedirs`` (V,3,16), ``posedirs`` (V,3,207) (zero).
* ``smplh/SMPLH_{NEUTRAL,MALE,FEMALE}.pkl``: the 52-joint SMPL+H tree (``conventions.SMPLH_*``),
  fingers skinned to the finger joints, ``posedirs`` (V,3,459) (zero) and the hand PCA keys
  ``hands_componentsl/r`` (45,45), ``hands_meanl/r`` (45,) that ``smplx.SMPLH`` reads.
* ``smplh/{male,female,neutral}/model.npz``: the AMASS distribution layout (SMPL+H without the
  hand PCA keys).
* ``vertex_ids.json``: ``{"coco_face": {nose, left_eye, right_eye, left_ear, right_ear},
  "smplx": {...}, "num_vertices": V}``; the ``smplx`` table is smplx's own vertex-id naming
  (face, finger tips, feet) and can be passed as ``smplx.SMPL(..., vertex_ids=...)`` for a
  model whose vertex count is not SMPL's 6890.

Frame: SMPL's template frame, metres, y up, the subject facing +z, the subject's left at +x,
pelvis joint at the origin, feet on y = -0.985. All genders share one mesh topology.

The surface is a smooth union of round cones, ellipsoids and boxes around the kinematic tree
(`mpt_data.synth.surface`), polygonised and decimated to exactly ``num_vertices`` vertices.
Skinning weights are a soft assignment to the nearest body parts (kinematic neighbours only),
the joint regressor is solved so that it reproduces the designed joints exactly, and the shape
directions move bone end points and scale limbs radially, blended by the skinning weights.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data import conventions as cv
from mpt_data.fileio import atomic_write_bytes
from mpt_data.synth import surface as ss
from mpt_data.synth.rig import skinning_weights, solve_regressor

GENDERS: tuple[str, ...] = ("neutral", "male", "female")
NUM_SHAPE_DIRECTIONS = 16
FLOOR_Y = -0.985  # template feet rest on this plane (m)
N_SMPLH = len(cv.SMPLH_JOINTS)  # 52
_J = {name: i for i, name in enumerate(cv.SMPLH_JOINTS)}
# Each SMPL+H joint's mirror partner (left <-> right; trunk joints are their own).
JOINT_MIRROR: tuple[int, ...] = tuple(
    _J[n.replace("left_", "right_", 1) if n.startswith("left_") else n.replace("right_", "left_", 1)]
    for n in cv.SMPLH_JOINTS)


# Fewest vertices that still enclose every finger joint (to 5 mm): at 1,300 and fewer the decimated
# fingers are too thin for their joints (see rig.solve_regressor). The tests' bodies have 1,500.
MIN_VERTICES = 1500


@dataclass(frozen=True)
class BodyConfig:
    """What `build_body` makes: the seed perturbs proportions; ``num_vertices`` is exact (>= MIN_VERTICES)."""

    seed: int = 0
    num_vertices: int = 6890
    grid_step_m: float = 0.0  # marching grid cell away from the hands (hands: x0.28); 0: by size

    def __post_init__(self) -> None:
        if self.num_vertices < MIN_VERTICES:
            raise ValueError(f"a synthetic body needs at least {MIN_VERTICES} vertices (got {self.num_vertices}): "
                             f"coarser meshes cannot enclose the finger joints")

    def step(self) -> float:
        """The grid step in metres: finer for meshes of SMPL's size, coarser for small ones."""
        if self.grid_step_m > 0:
            return self.grid_step_m
        return 0.016 if self.num_vertices >= 4000 else 0.021


@dataclass(frozen=True)
class SynthBody:
    """Arrays of one synthetic body model (all genders share faces, weights, regressor).

    templates: gender -> (V,3) float64 rest vertices (m). faces: (F,3) int64, outward.
    weights: (V,52) SMPL+H skinning weights. regressor: (52,V) non-negative rows summing to 1.
    joints: gender -> (52,3) rest joints = regressor @ template. shapedirs: (V,3,16).
    face_ids / smplx_ids: vertex ids of landmarks. hand_components / hand_means: per side
    'l'/'r' (45,45) orthonormal rows / (45,) axis-angle mean.
    """

    templates: dict[str, np.ndarray]
    faces: np.ndarray
    weights: np.ndarray
    regressor: np.ndarray
    joints: dict[str, np.ndarray]
    shapedirs: np.ndarray
    face_ids: dict[str, int]
    smplx_ids: dict[str, int]
    hand_components: dict[str, np.ndarray]
    hand_means: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------
# Design: joints and solids (left side; the right side mirrors x)

_FINGERS = ("index", "middle", "pinky", "ring", "thumb")
# finger: (base offset from wrist, splay angle deg (towards +z), segment lengths, radius)
_FINGER_DESIGN = {
    "index": ((0.088, -0.002, 0.032), 8.0, (0.040, 0.024, 0.022), 0.0078),
    "middle": ((0.092, -0.002, 0.011), 2.0, (0.045, 0.028, 0.024), 0.0080),
    "ring": ((0.088, -0.002, -0.010), -4.0, (0.042, 0.026, 0.023), 0.0076),
    "pinky": ((0.080, -0.002, -0.030), -10.0, (0.032, 0.020, 0.020), 0.0068),
}


def _left_joints() -> dict[str, np.ndarray]:
    """Neutral rest joints of the trunk and the left limbs (m)."""
    p = {
        "pelvis": (0.0, 0.0, 0.0), "left_hip": (0.088, -0.075, 0.0), "spine1": (0.0, 0.11, -0.01),
        "left_knee": (0.10, -0.50, 0.01), "spine2": (0.0, 0.24, 0.0), "left_ankle": (0.105, -0.90, -0.03),
        "spine3": (0.0, 0.30, 0.01), "left_foot": (0.115, -0.955, 0.09), "neck": (0.0, 0.49, -0.015),
        "left_collar": (0.075, 0.42, -0.01), "head": (0.0, 0.575, 0.03), "left_shoulder": (0.18, 0.43, -0.02),
        "left_elbow": (0.445, 0.425, -0.03), "left_wrist": (0.69, 0.42, -0.025),
    }
    out = {k: np.array(v, dtype=float) for k, v in p.items()}
    wrist = out["left_wrist"]
    for finger, (base, angle, lengths, _) in _FINGER_DESIGN.items():
        a = np.radians(angle)
        d = np.array([np.cos(a), -0.05, np.sin(a)])
        d /= np.linalg.norm(d)
        q = wrist + np.array(base)
        for k in range(3):
            out[f"left_{finger}{k + 1}"] = q.copy()
            q = q + lengths[k] * d
        out[f"left_{finger}_tip"] = q
    d1 = np.array([0.75, -0.35, 0.9])
    d1 /= np.linalg.norm(d1)
    d2 = np.array([1.0, -0.3, 0.6])
    d2 /= np.linalg.norm(d2)
    out["left_thumb1"] = wrist + np.array([0.022, -0.012, 0.026])
    out["left_thumb2"] = out["left_thumb1"] + 0.040 * d1
    out["left_thumb3"] = out["left_thumb2"] + 0.032 * d2
    out["left_thumb_tip"] = out["left_thumb3"] + 0.027 * d2
    return out


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, 1.0, 1.0])


def design_joints() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Neutral designed joints (52,3) in SMPL+H order and named extra points (finger tips,
    head top, toe ends) for both sides."""
    left = _left_joints()
    pts: dict[str, np.ndarray] = {}
    for name, v in left.items():
        pts[name] = v
        if name.startswith("left_"):
            pts["right_" + name[5:]] = _mirror(v)
    pts["head_top"] = np.array([0.0, 0.76, 0.015])
    for side, s in (("left", 1.0), ("right", -1.0)):
        pts[f"{side}_toe_end"] = np.array([s * 0.12, -0.968, 0.155])
    joints = np.stack([pts[n] for n in cv.SMPLH_JOINTS])
    return joints, pts


def _segments(pts: dict[str, np.ndarray]) -> np.ndarray:
    """(52,2,3) bone segment (start, end) of each SMPL+H joint's body part."""
    child = {
        "pelvis": "spine1", "spine1": "spine2", "spine2": "spine3", "spine3": "neck", "neck": "head",
        "head": "head_top",
    }
    for side in ("left", "right"):
        child.update({
            f"{side}_hip": f"{side}_knee", f"{side}_knee": f"{side}_ankle", f"{side}_ankle": f"{side}_foot",
            f"{side}_foot": f"{side}_toe_end", f"{side}_collar": f"{side}_shoulder",
            f"{side}_shoulder": f"{side}_elbow", f"{side}_elbow": f"{side}_wrist",
            f"{side}_wrist": f"{side}_middle1",
        })
        for finger in _FINGERS:
            child[f"{side}_{finger}1"] = f"{side}_{finger}2"
            child[f"{side}_{finger}2"] = f"{side}_{finger}3"
            child[f"{side}_{finger}3"] = f"{side}_{finger}_tip"
    return np.stack([np.stack([pts[n], pts[child[n]]]) for n in cv.SMPLH_JOINTS])


def design_primitives(pts: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[ss.Primitive, ...]:
    """The solids of the neutral body; ``rng`` varies girths by a few per cent."""
    prims: list[ss.Primitive] = []
    girth = {i: float(np.clip(rng.normal(1.0, 0.03), 0.93, 1.07)) for i in range(N_SMPLH)}
    for i in range(N_SMPLH):  # a right part has its left partner's girth: the body is mirror-symmetric
        girth[i] = girth[JOINT_MIRROR[i]] if cv.SMPLH_JOINTS[i].startswith("right_") else girth[i]

    def cone(a, b, ra, rb, blend, part):
        g = girth[part]
        prims.append(ss.Primitive("cone", tuple(map(float, a)), tuple(map(float, b)), ra * g, rb * g, blend, part))

    def ell(c, r, blend, part):
        g = girth[part]
        prims.append(ss.Primitive("ellipsoid", tuple(map(float, c)), tuple(float(x) * g for x in r), 0.0, 0.0,
                                  blend, part))

    def box(c, h, corner, blend, part):
        prims.append(ss.Primitive("box", tuple(map(float, c)), tuple(map(float, h)), corner, 0.0, blend, part))

    # Trunk
    ell((0, -0.03, -0.01), (0.155, 0.11, 0.105), 0.0, _J["pelvis"])
    ell((0, 0.13, 0.005), (0.135, 0.14, 0.10), 0.05, _J["spine1"])
    ell((0, 0.26, 0.0), (0.15, 0.11, 0.105), 0.05, _J["spine2"])
    ell((0, 0.36, -0.005), (0.163, 0.10, 0.105), 0.05, _J["spine3"])
    for side, s in (("left", 1.0), ("right", -1.0)):
        ell((s * 0.068, -0.07, -0.055), (0.075, 0.085, 0.07), 0.03, _J["pelvis"])
        cone((s * 0.02, 0.43, -0.02), (s * 0.15, 0.43, -0.02), 0.062, 0.052, 0.04, _J[f"{side}_collar"])
    cone((0, 0.42, -0.015), (0, 0.57, 0.0), 0.054, 0.050, 0.03, _J["neck"])
    # Head
    ell((0, 0.655, 0.015), (0.077, 0.105, 0.095), 0.03, _J["head"])
    ell((0, 0.598, 0.045), (0.056, 0.048, 0.058), 0.03, _J["head"])
    cone((0, 0.66, 0.098), (0, 0.628, 0.118), 0.009, 0.012, 0.012, _J["head"])
    for s in (1.0, -1.0):
        ell((s * 0.077, 0.65, 0.005), (0.013, 0.030, 0.020), 0.01, _J["head"])
    for side, s in (("left", 1.0), ("right", -1.0)):
        P = {k[len(side) + 1:]: v for k, v in pts.items() if k.startswith(side + "_")}
        # Legs and feet
        cone(P["hip"], P["knee"], 0.080, 0.052, 0.04, _J[f"{side}_hip"])
        cone(P["knee"], P["ankle"], 0.050, 0.032, 0.03, _J[f"{side}_knee"])
        ell((s * 0.10, -0.62, -0.02), (0.048, 0.10, 0.048), 0.03, _J[f"{side}_knee"])
        ell((s * 0.105, -0.950, -0.055), (0.034, 0.035, 0.040), 0.02, _J[f"{side}_ankle"])
        cone((s * 0.105, -0.935, -0.04), (s * 0.113, -0.955, 0.075), 0.040, 0.027, 0.025, _J[f"{side}_ankle"])
        ell((s * 0.114, -0.960, 0.07), (0.044, 0.025, 0.055), 0.02, _J[f"{side}_ankle"])
        ell((s * 0.118, -0.966, 0.122), (0.041, 0.019, 0.035), 0.015, _J[f"{side}_foot"])
        # Arms
        ell(P["shoulder"] + np.array([s * 0.01, 0.005, 0.0]), (0.065, 0.06, 0.058), 0.03, _J[f"{side}_shoulder"])
        cone(P["shoulder"], P["elbow"], 0.050, 0.038, 0.03, _J[f"{side}_shoulder"])
        cone(P["elbow"], P["wrist"], 0.040, 0.027, 0.02, _J[f"{side}_elbow"])
        ell(P["elbow"] + (P["wrist"] - P["elbow"]) * 0.3, (0.075, 0.043, 0.045), 0.03, _J[f"{side}_elbow"])
        # Hand: palm box, fingers and thumb (small blends keep the fingers apart)
        box(P["wrist"] + np.array([s * 0.046, -0.003, 0.0]), (0.048, 0.0135, 0.040), 0.012, 0.015,
            _J[f"{side}_wrist"])
        for finger, (_, _, _, r) in _FINGER_DESIGN.items():
            names = [f"{finger}1", f"{finger}2", f"{finger}3", f"{finger}_tip"]
            radii = (r, 0.93 * r, 0.86 * r, 0.80 * r)
            for k in range(3):
                cone(P[names[k]], P[names[k + 1]], radii[k], radii[k + 1], 0.005 if k == 0 else 0.003,
                     _J[f"{side}_{finger}{k + 1}"])
        tr = (0.0115, 0.0098, 0.0090, 0.0082)
        thumb = [P["thumb1"], P["thumb2"], P["thumb3"], P["thumb_tip"]]
        for k in range(3):
            cone(thumb[k], thumb[k + 1], tr[k], tr[k + 1], 0.012 if k == 0 else 0.003, _J[f"{side}_thumb{k + 1}"])
    return tuple(prims)


# ---------------------------------------------------------------------------------------
# Surface


def _hand_centres(pts: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [pts["left_wrist"] + np.array([0.085, 0.0, 0.0]), pts["right_wrist"] + np.array([-0.085, 0.0, 0.0])]


def _sizing(x: np.ndarray, pts: dict[str, np.ndarray]) -> np.ndarray:
    """Relative edge length wanted at points ``x`` (N,3): finer on hands, face and feet."""
    s = np.ones(len(x))

    def zone(centre, r_in, r_out, value):
        d = np.linalg.norm(x - centre, axis=1)
        t = np.clip((d - r_in) / (r_out - r_in), 0.0, 1.0)
        return value + (1.0 - value) * t * t * (3 - 2 * t)

    for c in _hand_centres(pts):
        s = np.minimum(s, zone(c, 0.10, 0.20, 0.42))
    s = np.minimum(s, zone(np.array([0.0, 0.64, 0.06]), 0.08, 0.16, 0.7))
    for side in ("left", "right"):
        s = np.minimum(s, zone(pts[f"{side}_foot"], 0.06, 0.14, 0.8))
    return s


def build_surface(
    prims: tuple[ss.Primitive, ...], pts: dict[str, np.ndarray], num_vertices: int, grid_step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed, outward-oriented, mirror-symmetric triangle mesh of the implicit body with exactly
    ``num_vertices`` vertices: (V,3) float64 metres, (F,3) int64, and the (V,) mirror-vertex map
    (the vertex at each vertex's mirror image x -> -x; an involution).

    The left half (x >= 0) is polygonised and decimated with its cut on the plane x = 0 held in
    place, then closed with its mirror image, so the map is exact by construction.
    """
    factor = 0.28
    mags = tuple(ss.Magnifier(tuple(c), 0.13, factor, 0.30) for c in _hand_centres(pts))
    r1 = 0.13 / factor
    dmax = (1 - factor) * r1
    hi = np.array([0.95, 0.79, 0.22])
    lo = np.array([0.0, FLOOR_Y - 0.03, -0.20])
    for c in _hand_centres(pts):
        lo[1:] = np.minimum(lo[1:], c[1:] - r1 - 0.03)
        hi = np.maximum(hi, c + r1 + 0.03)
    hi[0] += dmax
    axes = [np.arange(lo[k], hi[k] + grid_step, grid_step) for k in range(3)]
    u = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    shape = u.shape[:3]
    x = ss.warp_points(u.reshape(-1, 3), mags)
    f = ss.body_distance_banded(prims, x, band=4 * grid_step).reshape(shape)
    if (f[-1] <= 0).any() or (f[:, 0] <= 0).any() or (f[:, -1] <= 0).any() \
            or (f[:, :, 0] <= 0).any() or (f[:, :, -1] <= 0).any():  # f[0] is the cut at x = 0
        raise RuntimeError("synthetic body does not fit its grid")
    verts, faces, _ = ss.marching_tetrahedra(f, x.reshape(*shape, 3))
    verts, faces = ss.largest_component(verts, faces)
    seam = ss.boundary_vertices(faces, len(verts))
    if not np.all(verts[seam, 0] == 0.0):
        raise RuntimeError("synthetic body: the half surface's rim is not on the plane x = 0")
    if 2 * len(verts) - seam.sum() < int(1.3 * num_vertices):
        raise ValueError(
            f"grid step {grid_step} m gives {len(verts)} vertices, too few for {num_vertices}; use a smaller step"
        )
    verts, faces, kept = ss.decimate_to(verts, faces, num_vertices, _sizing(verts, pts), seam=seam)
    cut = np.zeros(len(verts), bool)
    cut[kept[seam & (kept >= 0)]] = True
    verts, faces, pairs = ss.mirror_half(verts, faces, cut)
    verts = ss.symmetrize(ss.relax_onto(verts, faces, prims, iterations=8), pairs)
    return verts, faces, pairs


# ---------------------------------------------------------------------------------------
# Shape directions


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _direction_fields(pts: dict[str, np.ndarray], rng: np.random.Generator):
    """Per shape direction: (bone end-point displacement function p (N,3) -> (N,3), girth rate
    per part (52,), extra per-vertex field v (V,3) -> (V,3) or None)."""
    legs = [_J[f"{s}_{p}"] for s in ("left", "right") for p in ("hip", "knee")]
    arms = [_J[f"{s}_{p}"] for s in ("left", "right") for p in ("shoulder", "elbow")]
    trunk = [_J[n] for n in ("pelvis", "spine1", "spine2", "spine3")]
    hands = [j for j in range(N_SMPLH) if j >= 20]
    zero = lambda p: np.zeros_like(p)  # noqa: E731

    def girth(parts, rate):
        g = np.zeros(N_SMPLH)
        g[list(parts)] = rate
        return g

    def sx(p):
        return np.sign(p[:, :1])

    head_c = pts["head"] + np.array([0, 0.07, 0])
    wl, wr = pts["left_wrist"], pts["right_wrist"]
    dirs = [
        # 0 height: everything stretches away from the floor
        (lambda p: 0.055 * (p - np.array([0, FLOOR_Y, 0])) * np.array([0.3, 1.0, 0.3]), np.zeros(N_SMPLH), None),
        # 1 weight: the trunk and limbs thicken
        (zero, girth(trunk, 0.10) + girth(legs + arms, 0.07) + girth([_J["neck"]], 0.05), None),
        # 2 leg length
        (lambda p: np.stack([0 * p[:, 0], -0.05 * _smoothstep(-0.075, -0.90, p[:, 1]), 0 * p[:, 0]], 1),
         np.zeros(N_SMPLH), None),
        # 3 arm length
        (lambda p: 0.04 * sx(p) * np.array([1, 0, 0]) * np.clip((np.abs(p[:, :1]) - 0.18) / 0.51, 0, 1)
         * _smoothstep(0.2, 0.35, p[:, 1])[:, None], np.zeros(N_SMPLH), None),
        # 4 shoulder width
        (lambda p: 0.022 * sx(p) * np.array([1, 0, 0]) * np.clip(np.abs(p[:, :1]) / 0.18, 0, 1)
         * _smoothstep(0.25, 0.40, p[:, 1])[:, None], np.zeros(N_SMPLH), None),
        # 5 hip width
        (lambda p: 0.018 * sx(p) * np.array([1, 0, 0]) * np.clip(np.abs(p[:, :1]) / 0.09, 0, 1)
         * (1 - _smoothstep(-0.05, 0.05, p[:, 1]))[:, None], girth([_J["pelvis"]], 0.05), None),
        # 6 torso length
        (lambda p: np.array([0, 0.045, 0]) * _smoothstep(0.0, 0.5, p[:, 1])[:, None], np.zeros(N_SMPLH), None),
        # 7 head size
        (lambda p: 0.08 * (p - head_c) * _smoothstep(0.52, 0.6, p[:, 1])[:, None],
         girth([_J["head"]], 0.08), None),
        # 8 chest depth
        (zero, girth([_J["spine2"], _J["spine3"]], 0.08), None),
        # 9 belly
        (zero, girth([_J["spine1"], _J["pelvis"]], 0.06),
         lambda v: np.array([0, 0, 0.025]) * np.exp(-np.sum(((v - [0, 0.1, 0.1]) / [0.11, 0.1, 0.08]) ** 2, 1))[:, None]),
        # 10 limb muscularity
        (zero, girth(legs + arms, 0.12), None),
        # 11 neck length
        (lambda p: np.array([0, 0.025, 0]) * _smoothstep(0.45, 0.56, p[:, 1])[:, None], np.zeros(N_SMPLH), None),
        # 12 foot length
        (lambda p: np.array([0, 0, 0.025]) * (np.clip((p[:, 2:] + 0.03) / 0.18, 0, 1))
         * (1 - _smoothstep(-0.85, -0.8, p[:, 1]))[:, None], np.zeros(N_SMPLH), None),
        # 13 hand size
        (lambda p: 0.15 * (p - np.where(p[:, :1] > 0, wl, wr)) * (np.abs(p[:, :1]) > 0.68), girth(hands, 0.10), None),
    ]
    # 14-15: seeded mixtures of part girths
    while len(dirs) < NUM_SHAPE_DIRECTIONS:
        dirs.append((zero, np.clip(rng.normal(0, 0.05, N_SMPLH), -0.1, 0.1) * (np.arange(N_SMPLH) < 22), None))
    return dirs


def _part_frames(verts: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex and part: position t (V,52) along the part's bone (0..1) and radial vector
    (V,52,3) from the bone to the vertex."""
    a, b = segments[:, 0], segments[:, 1]
    ab = b - a
    t = np.clip(np.einsum("vjk,jk->vj", verts[:, None] - a[None], ab) / np.sum(ab * ab, 1), 0, 1)
    radial = verts[:, None] - (a[None] + t[..., None] * ab[None])
    return t, radial


def shape_directions(verts: np.ndarray, weights: np.ndarray, pts: dict[str, np.ndarray],
                     rng: np.random.Generator) -> np.ndarray:
    """(V,3,16) shape directions: per direction, bone end points move (lerped along each
    bone) and parts thicken radially, blended by the skinning weights; plus local fields."""
    segments = _segments(pts)
    t, radial = _part_frames(verts, segments)
    out = np.zeros((len(verts), 3, NUM_SHAPE_DIRECTIONS))
    for i, (disp, girth, extra) in enumerate(_direction_fields(pts, rng)):
        da = disp(segments[:, 0])
        db = disp(segments[:, 1])
        move = da[None] + t[..., None] * (db - da)[None] + girth[None, :, None] * radial
        out[:, :, i] = np.einsum("vj,vjk->vk", weights, move) + (extra(verts) if extra is not None else 0.0)
    return out


# Gender: coefficients on the shape directions, plus local fields (breasts).
_GENDER_BETAS = {
    "neutral": {},
    "male": {0: 0.6, 1: 0.2, 4: 1.0, 5: -0.6, 8: 0.4, 10: 0.6, 7: 0.2, 13: 0.4},
    "female": {0: -0.9, 1: -0.2, 4: -1.0, 5: 1.3, 3: -0.4, 10: -0.6, 13: -0.5, 12: -0.5},
}


def _gender_template(verts: np.ndarray, shapedirs: np.ndarray, gender: str) -> np.ndarray:
    v = verts.copy()
    for i, beta in _GENDER_BETAS[gender].items():
        v += beta * shapedirs[:, :, i]
    if gender == "female":
        for s in (1.0, -1.0):
            c = np.array([s * 0.075, 0.31, 0.08])
            bump = np.exp(-np.sum(((verts - c) / [0.055, 0.05, 0.06]) ** 2, axis=1))
            v[:, 2] += 0.035 * bump * (verts[:, 2] > 0)
    return v


# ---------------------------------------------------------------------------------------
# Landmarks, hand PCA, assembly


def _landmarks(verts: np.ndarray, weights: np.ndarray, pts: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """COCO face keypoint vertex ids and smplx's vertex-id table (face, finger tips, feet)."""
    head = weights[:, _J["head"]] > 0.5

    def nearest(p, mask=None):
        d = np.linalg.norm(verts - p, axis=1)
        if mask is not None:
            d = np.where(mask, d, np.inf)
        return int(np.argmin(d))

    centre = np.abs(verts[:, 0]) < 0.012
    nose = int(np.argmax(np.where(head & centre & (verts[:, 1] > 0.6), verts[:, 2], -np.inf)))
    face = {
        "nose": nose,
        "left_eye": nearest(np.array([0.033, 0.668, 0.10]), head),
        "right_eye": nearest(np.array([-0.033, 0.668, 0.10]), head),
        "left_ear": nearest(np.array([0.095, 0.65, 0.005]), head),
        "right_ear": nearest(np.array([-0.095, 0.65, 0.005]), head),
    }
    smplx_ids = {"nose": face["nose"], "reye": face["right_eye"], "leye": face["left_eye"],
                 "rear": face["right_ear"], "lear": face["left_ear"]}
    for side, tag in (("left", "l"), ("right", "r")):
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = pts[f"{side}_{finger}_tip"]
            smplx_ids[f"{tag}{finger}"] = nearest(tip + 0.02 * (tip - pts[f"{side}_{finger}3"]))
    for side, tag, s in (("left", "L", 1.0), ("right", "R", -1.0)):
        smplx_ids[f"{tag}BigToe"] = nearest(np.array([s * 0.10, -0.96, 0.18]))
        smplx_ids[f"{tag}SmallToe"] = nearest(np.array([s * 0.15, -0.96, 0.15]))
        smplx_ids[f"{tag}Heel"] = nearest(np.array([s * 0.105, -0.98, -0.11]))
    return face, smplx_ids


def _hand_pca(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Orthonormal (45,45) hand pose components per side and a relaxed-curl mean (45,)."""
    comps, means = {}, {}
    curl = np.zeros((15, 3))
    for f in range(4):  # index, middle, pinky, ring: flex towards the palm (left hand: -z)
        curl[3 * f: 3 * f + 3, 2] = (-0.25, -0.3, -0.2)
    curl[12:15, 1] = (0.2, 0.1, 0.1)
    for side, sign in (("l", 1.0), ("r", -1.0)):
        q, r = np.linalg.qr(rng.normal(size=(45, 45)))
        comps[side] = (q * np.sign(np.diag(r))).T
        means[side] = (curl * np.array([1.0, sign, sign])).reshape(-1)
    return comps, means


def build_body(config: BodyConfig = BodyConfig()) -> SynthBody:
    """Make the synthetic body model (all genders) from ``config``; deterministic."""
    rng = np.random.default_rng(config.seed)
    joints, pts = design_joints()
    prims = design_primitives(pts, rng)
    verts, faces, mirror = build_surface(prims, pts, config.num_vertices, config.step())
    # Weights, regressor and shape directions are made mirror-symmetric as the surface is: vertex i
    # and joint j behave as vertex mirror[i] and joint JOINT_MIRROR[j] seen in a mirror.
    jm = np.asarray(JOINT_MIRROR)
    weights = skinning_weights(verts, prims)
    weights = (weights + weights[mirror][:, jm]) / 2
    regressor = solve_regressor(verts, weights, joints)
    regressor = (regressor + regressor[jm][:, mirror]) / 2
    shapedirs = shape_directions(verts, weights, pts, rng)
    shapedirs = (shapedirs + shapedirs[mirror] * ss.MIRROR[None, :, None]) / 2
    templates = {g: _gender_template(verts, shapedirs, g) for g in GENDERS}
    face_ids, smplx_ids = _landmarks(verts, weights, pts)
    # the nose is a midline vertex (its own mirror); right-side landmarks are the mirror vertices of the
    # left ones, so a flip maps each keypoint onto its partner exactly
    on_midline = (mirror == np.arange(len(verts))) & (weights[:, _J["head"]] > 0.5) & (verts[:, 1] > 0.6)
    face_ids["nose"] = smplx_ids["nose"] = int(np.argmax(np.where(on_midline, verts[:, 2], -np.inf)))
    for left, right in (("left_eye", "right_eye"), ("left_ear", "right_ear")):
        face_ids[right] = int(mirror[face_ids[left]])
    smplx_ids.update(reye=face_ids["right_eye"], rear=face_ids["right_ear"])
    for name in ("thumb", "index", "middle", "ring", "pinky", "BigToe", "SmallToe", "Heel"):
        left = "l" + name if name.islower() else "L" + name
        smplx_ids[left[0].swapcase().replace("l", "r").replace("L", "R") + name] = int(mirror[smplx_ids[left]])
    comps, means = _hand_pca(rng)
    return SynthBody(
        templates=templates, faces=faces, weights=weights, regressor=regressor,
        joints={g: regressor @ templates[g] for g in GENDERS}, shapedirs=shapedirs,
        face_ids=face_ids, smplx_ids=smplx_ids, hand_components=comps, hand_means=means,
    )


def _kintree(parents: tuple[int, ...]) -> np.ndarray:
    table = np.zeros((2, len(parents)), dtype=np.int64)
    table[0] = [p if p >= 0 else 4294967295 for p in parents]  # SMPL files store uint32 -1
    table[1] = np.arange(len(parents))
    return table


def model_arrays(body: SynthBody, gender: str, kind: str) -> dict[str, np.ndarray]:
    """The arrays of one model file. kind: 'smpl' (24 joints), 'smplh' (52, with hand PCA
    keys) or 'amass' (52, the AMASS ``model.npz`` layout without hand PCA keys)."""
    V = len(body.faces) // 2 + 2
    if kind == "smpl":
        rows = list(cv.SMPLH_TO_SMPL24)
        w = body.weights[:, :24].copy()
        w[:, 22] = body.weights[:, 22:37].sum(axis=1)
        w[:, 23] = body.weights[:, 37:52].sum(axis=1)
        reg = body.regressor[rows]
        parents = cv.SMPL_PARENTS
    else:
        w, reg, parents = body.weights, body.regressor, cv.SMPLH_PARENTS
    n_pose = 9 * (len(parents) - 1)
    out = {
        "v_template": body.templates[gender].astype(np.float64),
        "f": body.faces.astype(np.uint32),
        "J_regressor": reg.astype(np.float64),
        "J": (reg @ body.templates[gender]).astype(np.float64),
        "weights": w.astype(np.float64),
        "kintree_table": _kintree(parents),
        "shapedirs": body.shapedirs.astype(np.float64),
        "posedirs": np.zeros((V, 3, n_pose), dtype=np.float32),
        "bs_style": np.array("lbs"), "bs_type": np.array("lrotmin"),
        "gender": np.array(gender),
    }
    assert out["v_template"].shape[0] == V
    if kind == "smplh":
        out["hands_componentsl"] = body.hand_components["l"]
        out["hands_componentsr"] = body.hand_components["r"]
        out["hands_meanl"] = body.hand_means["l"]
        out["hands_meanr"] = body.hand_means["r"]
    return out


def save_npz_reproducible(path: str | os.PathLike, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    """Write an ``.npz`` (readable by ``np.load``) whose bytes depend only on ``arrays``
    (numpy's own writer stamps the current time into the zip), atomically."""
    path = Path(path)
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for key, val in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.external_attr = 0o644 << 16
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.asanyarray(val), allow_pickle=False)
            zf.writestr(info, arr.getvalue())
    atomic_write_bytes(path, buf.getvalue())


def write_body_models(out_dir: str | os.PathLike, seed: int = 0, num_vertices: int = 6890) -> dict[str, Path]:
    """Write the synthetic body model files under ``out_dir`` (layout in the module docstring):
    smpl/SMPL_<G>.pkl, smplh/SMPLH_<G>.pkl, smplh/<g>/model.npz, vertex_ids.json and
    body_config.json. Byte-identical for the same (seed, num_vertices). Returns name -> path."""
    out = Path(out_dir)
    config = BodyConfig(seed=seed, num_vertices=num_vertices)
    body = build_body(config)
    written: dict[str, Path] = {}
    for gender in GENDERS:
        for kind, rel in (("smpl", f"smpl/SMPL_{gender.upper()}.pkl"), ("smplh", f"smplh/SMPLH_{gender.upper()}.pkl")):
            atomic_write_bytes(out / rel, pickle.dumps(model_arrays(body, gender, kind), protocol=4))
            written[rel] = out / rel
        rel = f"smplh/{gender}/model.npz"
        save_npz_reproducible(out / rel, model_arrays(body, gender, "amass"), compress=True)
        written[rel] = out / rel
    ids = {"coco_face": body.face_ids, "smplx": body.smplx_ids, "num_vertices": num_vertices}
    atomic_write_bytes(out / "vertex_ids.json", (json.dumps(ids, indent=1, sort_keys=True) + "\n").encode())
    written["vertex_ids.json"] = out / "vertex_ids.json"
    cfg = {"seed": seed, "num_vertices": num_vertices, "grid_step_m": config.step()}
    atomic_write_bytes(out / "body_config.json", (json.dumps(cfg, sort_keys=True) + "\n").encode())
    written["body_config.json"] = out / "body_config.json"
    return written
