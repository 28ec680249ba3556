"""`mpt-data preview`: look at one stored mesh through every camera of its store.

Each camera gets two panels of its 224 x 224 person crop (drawn at `PANEL_SCALE` times that size): the mesh (the
stored int16 vertices, placed at the rig's subject position and projected with the stored K, R, t and crop) with
the stored 2D joints and the skeleton of the store's heatmap joint set (`heatmap_joint_set`: COCO-17 for a body,
HAND-21 for a hand), limbs coloured by the subject's side; and below it the K heatmaps the trainer will render from the stored 2D joints (S = exp(-|p - x|^2 / sigma^2), sigma = 3 crop pixels, pixel i
covering [i, i + 1)), their maximum colour-mapped over the dimmed mesh. A strip at the bottom keys the colours.
The mesh and the heatmaps come from different arrays of the store, so a heatmap off its joint on the mesh means
an inconsistent store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpt_data import conventions, schema
from mpt_data import store as st

SIGMA = 3.0
PANEL_SCALE = 2
PANELS_PER_ROW = 4
TITLE_PX, LEGEND_PX = 24, 30  # the strips above and below the panels
HEATMAP_BACKGROUND = 0.45  # the mesh is dimmed under the heatmaps so their colours stand out
HEATMAP_ALPHA = 0.9  # weight of the colour map where a heatmap is 1 (it fades with the heatmap value)


def heatmap_skeleton(joint_set: str) -> tuple[tuple[int, int], ...]:
    """The skeleton edges drawn over a heatmap joint set's 2D joints (`conventions.HEATMAP_SKELETONS`: COCO-17's,
    or HAND-21's, wrist to each fingertip); StoreError for a set that has none."""
    if joint_set not in conventions.HEATMAP_SKELETONS:
        raise st.StoreError(f"no skeleton is defined for the heatmap joint set {joint_set!r}")
    return conventions.HEATMAP_SKELETONS[joint_set]


def joint_heatmaps(joints2d: np.ndarray, visible: np.ndarray, size: int = schema.CROP_SIZE,
                   sigma: float = SIGMA) -> np.ndarray:
    """(K, size, size) float32 Gaussians S(p) = exp(-|p - x|^2 / sigma^2), zero for invisible joints.

    joints2d: (K, 2) crop pixels (x, y); pixel (r, c) is evaluated at its centre (c + 0.5, r + 0.5).
    """
    centres = np.arange(size, dtype=np.float32) + schema.PIXEL_CENTRE
    dx = (centres[None, :] - joints2d[:, 0:1]) ** 2  # (K, size) along x
    dy = (centres[None, :] - joints2d[:, 1:2]) ** 2  # (K, size) along y
    hm = np.exp(-(dy[:, :, None] + dx[:, None, :]) / np.float32(sigma**2)).astype(np.float32)
    return hm * np.asarray(visible, bool)[:, None, None]


def crop_intrinsics(K: np.ndarray, crop: np.ndarray, size: int = schema.CROP_SIZE) -> np.ndarray:
    """(3, 3) intrinsics mapping camera coordinates straight to crop pixels (x0, y0, side -> 0..size)."""
    s = size / float(crop[2])
    out = np.array(K, dtype=np.float64)
    out[0, 0] *= s
    out[1, 1] *= s
    out[0, 1] *= s
    out[0, 2] = (out[0, 2] - crop[0]) * s
    out[1, 2] = (out[1, 2] - crop[1]) * s
    return out


@dataclass(frozen=True)
class MeshViews:
    """Everything the preview draws for one mesh, read from a store."""

    index: int
    vertices: np.ndarray  # (V, 3) metres, root-centred
    faces: np.ndarray  # (F, 3)
    joints2d: np.ndarray  # (C, K, 2) crop pixels
    visible: np.ndarray  # (C, K)
    crop: np.ndarray  # (C, 3)
    K: np.ndarray  # (C, 3, 3)
    R: np.ndarray
    t: np.ndarray
    names: list[str]
    subject_position: np.ndarray  # (3,)
    split: int
    joint_set: str = conventions.HEATMAP_JOINT_SET  # the store's heatmap joint set (of joints2d)


def read_mesh_views(path: str | Path, index: int, storage_options: dict | None = None) -> MeshViews:
    """Read mesh `index` and the camera rig of a store (a folder, or an fsspec URL with its storage options)."""
    group = st.open_store(path, storage_options=storage_options)
    verts = group[schema.VERTICES]
    n = verts.shape[0]
    if not 0 <= index < n:
        raise st.StoreError(f"{path}: mesh {index} is outside the store's 0..{n - 1}; give --mesh in that range")
    scale = float(verts.attrs.get(schema.ATTR_SCALE_M, schema.VERTEX_SCALE_M))
    cams = group[schema.CAMERAS].attrs
    return MeshViews(
        index=index,
        vertices=st.dequantise_vertices(np.asarray(verts[index]), scale),
        faces=np.asarray(group[schema.TOPOLOGY_FACES][:]),
        joints2d=np.asarray(group[schema.JOINTS2D][index]),
        visible=np.asarray(group[schema.VISIBLE][index]),
        crop=np.asarray(group[schema.CROP][index]),
        K=np.asarray(group[schema.CAMERA_K][:]),
        R=np.asarray(group[schema.CAMERA_R][:]),
        t=np.asarray(group[schema.CAMERA_T][:]),
        names=list(cams.get(schema.ATTR_CAMERA_NAMES, [])),
        subject_position=np.asarray(cams.get(schema.ATTR_SUBJECT_POSITION, [0.0, 0.0, 0.0]), np.float64),
        split=int(group[schema.SPLIT][index]),
        joint_set=str(group.attrs.get(schema.ATTR_HEATMAP_JOINT_SET, conventions.HEATMAP_JOINT_SET)),
    )


def mesh_in_crop(views: MeshViews, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame vertices (V, 3) and crop-pixel intrinsics (3, 3) of camera c."""
    world = views.vertices.astype(np.float64) + views.subject_position
    cam = world @ views.R[c].astype(np.float64).T + views.t[c].astype(np.float64)
    return cam, crop_intrinsics(views.K[c], views.crop[c])


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """``text`` in the top-left corner on a dark band, readable over any panel."""
    import cv2

    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    img[: h + 10, : w + 10] = (img[: h + 10, : w + 10] * 0.35).astype(np.uint8)
    cv2.putText(img, text, (5, h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def render_panels(views: MeshViews, c: int, scale: int = PANEL_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Two (224 * scale, 224 * scale, 3) uint8 BGR pictures of camera c: the mesh with the 2D joints and
    skeleton, limbs coloured by side or finger (`mpt_data.raster.PART_COLOURS`); and the K heatmaps (their maximum,
    colour-mapped) over the dimmed mesh."""
    from mpt_data import raster

    size = schema.CROP_SIZE * scale
    canvas = np.full((size, size, 3), 40, np.uint8)
    cam, k_crop = mesh_in_crop(views, c)
    # Raster pixel centres sit at integer coordinates; crop pixel centres at i + 0.5.
    k_panel = np.diag([scale, scale, 1.0]) @ k_crop
    k_panel[:2, 2] -= schema.PIXEL_CENTRE
    mesh = raster.render_mesh(canvas, cam, views.faces, k_panel)
    pts = views.joints2d[c] * scale - schema.PIXEL_CENTRE
    names = conventions.JOINT_SETS[views.joint_set]
    if len(names) != views.joints2d.shape[1]:
        raise st.StoreError(f"{views.joint_set} has {len(names)} joints, the store's views have {views.joints2d.shape[1]}")
    joints = raster.draw_pose(mesh, pts, views.visible[c], names, heatmap_skeleton(views.joint_set), thickness=2,
                              radius=3)
    dim = (mesh * HEATMAP_BACKGROUND).astype(np.uint8)
    heat = raster.heatmap_overlay(dim, joint_heatmaps(views.joints2d[c], views.visible[c]), alpha=HEATMAP_ALPHA)
    name = views.names[c] if c < len(views.names) else str(c)
    return (_label(joints, f"cam {name}: mesh, 2D joints"),
            _label(heat, f"cam {name}: {len(names)} heatmaps (max)"))


def legend_strip(width: int, height: int = LEGEND_PX, joint_set: str = "coco17") -> np.ndarray:
    """(height, width, 3) uint8 BGR key: the part colours of the skeleton (sides of a body, fingers of a hand)
    and the heatmap colour scale."""
    import cv2

    from mpt_data import raster

    strip = np.full((height, width, 3), 0, np.uint8)
    font, y = cv2.FONT_HERSHEY_SIMPLEX, height // 2
    x = 6
    parts = set(raster.joint_sides(conventions.JOINT_SETS[joint_set]))
    for side in (p for p in raster.PART_COLOURS if p in parts):
        text = ("wrist" if joint_set == "hand21" else "midline") if side == "centre" else side
        cv2.rectangle(strip, (x, y - 6), (x + 12, y + 6), raster.PART_COLOURS[side], -1)
        cv2.putText(strip, text, (x + 17, y + 5), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        x += 22 + cv2.getTextSize(text, font, 0.45, 1)[0][0] + 12
    cv2.putText(strip, "heatmap 0", (x, y + 5), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    x += cv2.getTextSize("heatmap 0", font, 0.45, 1)[0][0] + 5
    bar_w = max(20, min(120, width - x - 20))
    ramp = np.linspace(0, 255, bar_w).astype(np.uint8)[None, :]
    bar = cv2.applyColorMap(np.repeat(ramp, 12, axis=0), cv2.COLORMAP_JET)
    strip[y - 6 : y + 6, x : x + bar_w] = bar[:, : max(0, min(bar_w, width - x))]
    cv2.putText(strip, "1", (x + bar_w + 4, y + 5), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def preview_image(path: str | Path, index: int, storage_options: dict | None = None) -> np.ndarray:
    """Every camera as a column of two panels (mesh and joints above, heatmaps below), PANELS_PER_ROW columns
    to a row, with a title strip above and the colour key below."""
    import cv2

    views = read_mesh_views(path, index, storage_options)
    columns = [np.concatenate(render_panels(views, c), axis=0) for c in range(views.K.shape[0])]
    h, w = columns[0].shape[:2]
    rows = -(-len(columns) // PANELS_PER_ROW)
    cols = min(len(columns), PANELS_PER_ROW)
    sheet = np.zeros((TITLE_PX + rows * h + LEGEND_PX, cols * w, 3), np.uint8)
    for i, p in enumerate(columns):
        r, q = divmod(i, PANELS_PER_ROW)
        sheet[TITLE_PX + r * h : TITLE_PX + (r + 1) * h, q * w : (q + 1) * w] = p
    sheet[TITLE_PX + rows * h :] = legend_strip(cols * w, joint_set=views.joint_set)
    split = {v: k for k, v in schema.SPLITS.items()}.get(views.split, str(views.split))
    cv2.putText(sheet, f"{str(path).rstrip('/').rsplit('/', 1)[-1]}  mesh {index}  ({split})  heatmaps sigma={SIGMA:g} px", (6, 17),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return sheet


def write_preview(path: str | Path, index: int, out: str | Path, storage_options: dict | None = None) -> Path:
    """Write `preview_image` as a PNG; returns the file."""
    import cv2

    image = preview_image(path, index, storage_options)  # read before anything is written
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), image):
        raise OSError(f"could not write {out}")
    return out
