"""A small opencv rasteriser for pictures of meshes, skeletons and heatmaps.

Flat-shaded triangles with Lambert lighting, drawn back to front (painter's order by depth)
over any background image; skeletons, keypoints and heatmap overlays on top. Used by the
synthetic-body picture, store previews, synthetic training images and prediction overlays.

Frames: camera frame, metres, x right, y down, z forward (points in front have z > 0).
Pixels: x to the right, y down, pixel centres at integer coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mpt_data.conventions import HAND21_FINGERS

_SUBPIXEL_BITS = 4  # cv2 fixed-point drawing: coordinates scaled by 2**4

# Skeleton colours by the subject's own side (BGR), the same in every picture: left blue, right orange,
# the midline (edges joining the two sides, joints on neither) green.
SIDE_COLOURS: dict[str, tuple[int, int, int]] = {"left": (255, 150, 30), "right": (0, 140, 255),
                                                 "centre": (60, 200, 60)}
# A hand's joints are coloured by finger (BGR); the wrist keeps the midline colour.
FINGER_COLOURS: dict[str, tuple[int, int, int]] = {"thumb": (220, 80, 220), "index": (0, 210, 255),
                                                   "middle": (230, 230, 60), "ring": (255, 120, 40),
                                                   "pinky": (40, 90, 255)}
PART_COLOURS: dict[str, tuple[int, int, int]] = {**SIDE_COLOURS, **FINGER_COLOURS}


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection. points_cam (N,3) m camera frame, K (3,3) -> (N,2) pixels."""
    p = np.asarray(points_cam, dtype=np.float64)
    z = np.where(np.abs(p[:, 2]) < 1e-9, 1e-9, p[:, 2])
    uvw = p @ np.asarray(K, dtype=np.float64).T
    return uvw[:, :2] / z[:, None]


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera rotation R (3,3) and translation t (3,) of a camera at ``eye`` looking at
    ``target`` with ``up`` pointing up in the picture: x_cam = R @ x_world + t."""
    eye = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: up is parallel to the viewing direction")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    return R, -R @ eye


def render_mesh(
    canvas: np.ndarray,
    vertices_cam: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    color: Sequence[float] = (200, 170, 150),
    light_dir: Sequence[float] = (0.3, 0.5, 1.0),
    ambient: float = 0.3,
    face_colors: np.ndarray | None = None,
    cull_back: bool = True,
    near: float = 1e-3,
) -> np.ndarray:
    """Draw a flat-shaded mesh over ``canvas`` and return the new image.

    canvas: (H,W,3) uint8 background (BGR or RGB; colours are used in the canvas's order).
    vertices_cam: (V,3) metres in the camera frame (x right, y down, z forward).
    faces: (F,3) vertex indices, counter-clockwise seen from outside (outward normals).
    K: (3,3) intrinsics in pixels. color: base colour (3 values 0..255), or per-face colours
    ``face_colors`` (F,3). light_dir: direction the light travels, camera frame (need not be
    unit). ambient: 0..1 share of unlit brightness. Faces whose normal points away from the
    camera are culled when ``cull_back``; faces with any vertex nearer than ``near`` (m) are
    skipped. Painter's order: farthest faces (by mean depth) first.
    """
    img = np.ascontiguousarray(canvas, dtype=np.uint8).copy()
    v = np.asarray(vertices_cam, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]  # (F,3,3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normal, axis=1)
    keep = (tri[:, :, 2] > near).all(axis=1) & (length > 0)
    centre = tri.mean(axis=1)
    if cull_back:
        keep &= np.einsum("ij,ij->i", normal, centre) < 0  # facing the camera at the origin
    if not keep.any():
        return img
    idx = np.nonzero(keep)[0]
    n = normal[idx] / length[idx, None]
    light = -np.asarray(light_dir, dtype=np.float64)
    light /= np.linalg.norm(light)
    lambert = np.clip(n @ light, 0.0, 1.0)
    if not cull_back:  # two-sided lighting for open or inside-out meshes
        lambert = np.abs(n @ light)
    shade = ambient + (1.0 - ambient) * lambert
    base = (np.asarray(face_colors, dtype=np.float64)[idx] if face_colors is not None
            else np.broadcast_to(np.asarray(color, dtype=np.float64), (len(idx), 3)))
    cols = np.clip(base * shade[:, None], 0, 255).astype(np.int64)
    uv = project(v, K)
    pix = np.round(uv[f[idx]] * (1 << _SUBPIXEL_BITS)).astype(np.int64)  # (F',3,2)
    lim = np.iinfo(np.int32).max >> 2
    ok = (np.abs(pix) < lim).all(axis=(1, 2))
    order = np.argsort(-centre[idx, 2], kind="stable")
    for k in order:
        if ok[k]:
            cv2.fillConvexPoly(img, pix[k].astype(np.int32), cols[k].tolist(), cv2.LINE_8, _SUBPIXEL_BITS)
    return img


def draw_skeleton(
    canvas: np.ndarray,
    points: np.ndarray,
    visible: np.ndarray | None,
    edges: Sequence[tuple[int, int]],
    color: Sequence[int] = (0, 255, 0),
    thickness: int = 2,
) -> np.ndarray:
    """Lines between keypoints. points (K,2) pixels, visible (K,) bool or None (all), edges
    index pairs. An edge is drawn only when both ends are visible. Returns the new image."""
    img = np.ascontiguousarray(canvas, dtype=np.uint8).copy()
    pts = np.asarray(points, dtype=np.float64)
    vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool)
    for a, b in edges:
        if vis[a] and vis[b] and np.isfinite(pts[[a, b]]).all():
            pa = tuple(int(round(c)) for c in pts[a])
            pb = tuple(int(round(c)) for c in pts[b])
            cv2.line(img, pa, pb, tuple(int(c) for c in color), thickness, cv2.LINE_AA)
    return img


def draw_keypoints(
    canvas: np.ndarray,
    points: np.ndarray,
    visible: np.ndarray | None = None,
    color: Sequence[int] = (0, 0, 255),
    radius: int = 3,
) -> np.ndarray:
    """Filled dots at keypoints. points (K,2) pixels, visible (K,) bool or None. Returns the
    new image."""
    img = np.ascontiguousarray(canvas, dtype=np.uint8).copy()
    pts = np.asarray(points, dtype=np.float64)
    vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool)
    for k in np.nonzero(vis & np.isfinite(pts).all(axis=1))[0]:
        cv2.circle(img, (int(round(pts[k, 0])), int(round(pts[k, 1]))), radius,
                   tuple(int(c) for c in color), -1, cv2.LINE_AA)
    return img


def joint_sides(names: Sequence[str]) -> tuple[str, ...]:
    """The part each joint name of `mpt_data.conventions` is drawn in: "left" or "right" ("left_*" / "right_*"
    name the subject's own side), a hand joint's finger (`conventions.HAND21_FINGERS`: "thumb1" -> "thumb"),
    else "centre" (nose, pelvis, spine, the wrist ...). Keys of `PART_COLOURS`."""
    def part(n: str) -> str:
        if n.startswith("left_"):
            return "left"
        if n.startswith("right_"):
            return "right"
        return next((f for f in HAND21_FINGERS if n.startswith(f) and n[len(f):].isdigit()), "centre")

    return tuple(part(n) for n in names)


def edge_side(sides: Sequence[str], a: int, b: int) -> str:
    """The part an edge (a, b) is drawn in: a part both ends share or one end has while the other is on the
    midline (the nose to the left eye is left, the wrist to the thumb's base is the thumb); an edge joining
    two parts (left and right) is "centre"."""
    ends = {sides[a], sides[b]} - {"centre"}
    return ends.pop() if len(ends) == 1 else "centre"


def draw_pose(
    canvas: np.ndarray,
    points: np.ndarray,
    visible: np.ndarray | None,
    names: Sequence[str],
    edges: Sequence[tuple[int, int]],
    thickness: int = 2,
    radius: int = 3,
    colours: dict[str, tuple[int, int, int]] = PART_COLOURS,
) -> np.ndarray:
    """Skeleton and keypoints coloured by the subject's side, or a hand's finger (``colours``, see :func:`edge_side`).

    points (K,2) pixels, visible (K,) bool or None (all), names (K,) joint names, edges index pairs; a dot has a
    dark rim so it shows on light and dark backgrounds. Returns the new image."""
    img = np.ascontiguousarray(canvas, dtype=np.uint8).copy()
    sides = joint_sides(names)
    for a, b in edges:
        img = draw_skeleton(img, points, visible, [(a, b)], colours[edge_side(sides, a, b)], thickness)
    vis = np.ones(len(points), bool) if visible is None else np.asarray(visible, bool)
    for side, colour in colours.items():
        on = vis & np.array([s == side for s in sides])
        img = draw_keypoints(img, points, on, (20, 20, 20), radius + 1)
        img = draw_keypoints(img, points, on, colour, radius)
    return img


def heatmap_overlay(canvas: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend the per-pixel maximum of ``heatmaps`` (K,h,w), values in 0..1, as a colour map over
    ``canvas`` (H,W,3) uint8 (resized to the canvas when sizes differ). Returns the new image."""
    img = np.ascontiguousarray(canvas, dtype=np.uint8)
    hm = np.asarray(heatmaps, dtype=np.float32)
    peak = np.clip(hm.max(axis=0) if hm.ndim == 3 else hm, 0.0, 1.0)
    if peak.shape != img.shape[:2]:
        peak = cv2.resize(peak, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((peak * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    w = (alpha * peak)[..., None]
    return np.clip(img * (1 - w) + colour * w, 0, 255).astype(np.uint8)


def fit_camera(
    vertices: np.ndarray, R: np.ndarray, size: tuple[int, int], fill: float = 0.85, focal_px: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A camera with rotation ``R`` (world -> camera) that frames ``vertices`` (N,3) world
    metres in an image of ``size`` (width, height): returns K (3,3) and t (3,) so the points
    fill ``fill`` of the smaller image side."""
    w, h = size
    f = focal_px if focal_px is not None else 2.0 * max(w, h)
    pc = np.asarray(vertices, dtype=np.float64) @ np.asarray(R).T
    centre = 0.5 * (pc.min(axis=0) + pc.max(axis=0))
    extent = max(pc[:, 0].max() - pc[:, 0].min(), 1e-6) / w, max(pc[:, 1].max() - pc[:, 1].min(), 1e-6) / h
    depth = f * max(extent) / fill
    t = np.array([-centre[0], -centre[1], depth - pc[:, 2].min()])
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    return K, t
