"""Image augmentation for fine-tuning (opencv): scale, rotation, flip, colour.

One affine warp takes the stored person crop (with its context margin) to the 224×224 network
crop; the same map moves the 2D joints. The in-plane rotation is a rotation of the camera
about its optical axis, so camera-frame 3D joints and vertices (x right, y down, z forward)
get the same 2×2 rotation in their x-y plane, and the SMPL root orientation is turned with it.
A flip mirrors x in the image and in 3D and swaps left and right: joints by the conventions'
flip pairs, vertices by a symmetric-vertex map, SMPL pose by the SMPL flip pairs with the
axis-angle y and z components negated. Without a vertex map a flipped sample loses its
vertex label (never a silently mirrored-but-unswapped mesh).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpt_data.conventions import SMPL_FLIP_PAIRS, SMPL_JOINTS, flip_permutation, permutation_from_pairs
from mpt_data.schema import CROP_SIZE

COCO_FLIP = np.asarray(flip_permutation("coco17"))
SMPL_FLIP = np.asarray(permutation_from_pairs(len(SMPL_JOINTS), SMPL_FLIP_PAIRS))


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation ranges; ``enabled=False`` gives the plain centred crop (evaluation).

    scale: the output crop covers the person box times a factor in [1 - scale, 1 + scale].
    rotation_deg / rotation_prob: uniform in ±rotation_deg with that probability.
    translate: centre shift, fraction of the box side. colour: per-channel gain in [1 - c, 1 + c].
    """

    enabled: bool = True
    out_size: int = CROP_SIZE
    scale: float = 0.25
    rotation_deg: float = 30.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    translate: float = 0.05
    colour: float = 0.4


@dataclass(frozen=True)
class AugmentParams:
    scale: float = 1.0
    rotation_deg: float = 0.0
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)


def sample_params(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one sample's augmentation from ``rng`` (identity when disabled)."""
    if not cfg.enabled:
        return AugmentParams()
    scale = float(rng.uniform(1 - cfg.scale, 1 + cfg.scale))
    rot = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if rng.random() < cfg.rotation_prob else 0.0
    flip = bool(rng.random() < cfg.flip_prob)
    shift = tuple(float(v) for v in rng.uniform(-cfg.translate, cfg.translate, size=2))
    gains = tuple(float(v) for v in rng.uniform(1 - cfg.colour, 1 + cfg.colour, size=3))
    return AugmentParams(scale, rot, flip, shift, gains)  # type: ignore[arg-type]


def crop_affine(crop_px: int, context: float, p: AugmentParams, out_size: int) -> np.ndarray:
    """(2, 3) affine: stored-crop pixels → output pixels (pixel centres at integer coordinates).

    The stored crop is the person box widened by ``context``; the output covers the person box
    times ``p.scale``, rotated by ``p.rotation_deg`` (counter-clockwise on screen) about the
    box centre shifted by ``p.shift`` box sides, and mirrored in x when ``p.flip``.
    """
    box = crop_px / context
    k = out_size / (box * p.scale)
    # The person box's centre sits at crop_px / 2 of the stored crop (mpt_data.images.image_to_crop maps
    # the annotation's centre there); it goes to the output's centre, (out_size - 1) / 2 with pixel
    # centres at integers, i.e. out_size / 2 in the store's convention (centres at i + 0.5): the crop
    # rule of the store path, so the same person box gives the same 2D joints on both paths.
    c = crop_px / 2 + np.asarray(p.shift) * box
    rot = _rotation2(p.rotation_deg)
    lin = k * rot
    t = (out_size - 1) / 2 - lin @ c
    m = np.concatenate([lin, t[:, None]], axis=1)
    if p.flip:
        m = np.array([[-1.0, 0, out_size - 1], [0, 1, 0]]) @ np.vstack([m, [0, 0, 1]])
    return m


def _rotation2(deg: float) -> np.ndarray:
    """2×2 rotation acting on (x, y) with y down; positive turns the picture counter-clockwise."""
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def transform_points2d(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (..., 2) points."""
    return points @ m[:, :2].T + m[:, 2]


def rotate_flip_3d(points: np.ndarray, p: AugmentParams) -> np.ndarray:
    """Camera-frame points (..., 3) under the augmentation's in-plane rotation then x-mirror.

    No joint re-ordering here: callers swap left and right indices themselves.
    """
    out = points.astype(np.float32).copy()
    out[..., :2] = points[..., :2] @ _rotation2(p.rotation_deg).T
    if p.flip:
        out[..., 0] = -out[..., 0]
    return out


def augment_pose(pose: np.ndarray, p: AugmentParams) -> np.ndarray:
    """SMPL axis-angle (72,) under the same rotation (root only) and flip (all joints)."""
    import cv2

    pose = pose.astype(np.float64).reshape(24, 3).copy()
    if p.rotation_deg:
        r3 = np.eye(3)
        r3[:2, :2] = _rotation2(p.rotation_deg)
        root, _ = cv2.Rodrigues(pose[0])
        pose[0] = cv2.Rodrigues(r3 @ root)[0].reshape(3)
    if p.flip:
        pose = pose[SMPL_FLIP]
        pose[:, 1:] *= -1
    return pose.reshape(72).astype(np.float32)


def augment_sample(sample: dict, context: float, p: AugmentParams, out_size: int = CROP_SIZE,
                   vertex_flip: np.ndarray | None = None) -> dict:
    """Apply ``p`` to one decoded sample; returns a new dict.

    sample: image (H, H, 3) uint8 RGB stored crop; joints2d (17, 3) x, y stored-crop pixels +
    confidence (COCO-17); optional joints3d (17, 3) camera frame metres; vertices (V, 3);
    pose (72,); has_vertices bool. Output: image (out, out, 3) uint8, joints2d (17, 2) output
    pixels, visible (17,) bool (labelled and inside the crop), the 3D labels moved alike.
    """
    import cv2

    crop_px = sample["image"].shape[0]
    m = crop_affine(crop_px, context, p, out_size)
    image = cv2.warpAffine(sample["image"], m, (out_size, out_size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if any(g != 1.0 for g in p.gains):
        image = np.clip(image.astype(np.float32) * np.asarray(p.gains, np.float32), 0, 255).astype(np.uint8)
    j2 = sample["joints2d"]
    xy = transform_points2d(j2[:, :2].astype(np.float64), m).astype(np.float32)
    conf = j2[:, 2] > 0
    out = dict(sample)
    if p.flip:
        xy, conf = xy[COCO_FLIP], conf[COCO_FLIP]
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] < out_size - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < out_size - 0.5)
    out["image"] = image
    out["joints2d"] = xy
    out["visible"] = conf & inside
    if "joints3d" in sample:
        j3 = rotate_flip_3d(sample["joints3d"], p)
        out["joints3d"] = j3[COCO_FLIP] if p.flip else j3
        for key in ("joints3d_conf",):
            if key in sample:
                out[key] = sample[key][COCO_FLIP] if p.flip else sample[key]
    if "vertices" in sample and sample.get("has_vertices", False):
        v = rotate_flip_3d(sample["vertices"], p)
        if p.flip:
            if vertex_flip is None:
                out["has_vertices"] = False
                v = np.zeros_like(v)
            else:
                v = v[vertex_flip]
        out["vertices"] = v
    if "pose" in sample:
        out["pose"] = augment_pose(sample["pose"], p)
    return out
