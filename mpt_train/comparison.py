"""A picture of an image evaluation's rows side by side on the same held-out images.

One row of tiles per image, one column per model (no fine-tune, fine-tuned, from scratch, the
oracle...): each tile is the model's 224 px input crop with the 2D joints the transformer was given
(the pose network's heatmap peaks; the ground truth for the oracle) and the predicted mesh drawn
over it through the predicted weak-perspective camera, with that image's PA-MPJPE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from mpt_data import conventions
from mpt_data.fileio import atomic_write_bytes
from mpt_data.schema import CROP_SIZE, PIXEL_CENTRE

from .backbones import argmax_joints, refined_joints
from .baselines import Row
from .images import ImageEvalBatches
from .loading import BackboneMPT
from .metrics import pa_mpjpe
from .predict import perspective_from_weak

LABEL_PX = 22  # height of the caption strips


def seen_joints(model: torch.nn.Module, pred: dict, batch: dict) -> np.ndarray:
    """(B, K, 2) crop pixels (centres at integers) of the 2D joints ``model`` based its prediction on."""
    if isinstance(model, BackboneMPT):
        maps = pred["maps"].float()
        if model.feed.mode == "keypoints":
            return (refined_joints(maps, CROP_SIZE)[0] - PIXEL_CENTRE).cpu().numpy()
        return argmax_joints(maps, CROP_SIZE).cpu().numpy()
    return batch["joints2d"].float().numpy()  # the oracle: the ground truth


def _caption(tile: np.ndarray, text: str, top: bool = False) -> np.ndarray:
    import cv2

    y = 15 if top else tile.shape[0] - 7
    for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # a dark rim keeps it readable on any tile
        cv2.putText(tile, text, (5, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, width, cv2.LINE_AA)
    return tile


def _strip(width: int, text: str) -> np.ndarray:
    """A white caption strip with ``text``, in a smaller font when it would not fit the width."""
    import cv2

    strip = np.full((LABEL_PX, width, 3), 255, np.uint8)
    scale = 0.5
    while scale > 0.3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 8:
        scale -= 0.02
    cv2.putText(strip, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


@torch.no_grad()
def comparison_grid(rows: Mapping[str, Row], folder: str, count: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 BGR picture: ``count`` images of ``folder`` spread over it, one column per row."""
    from mpt_data.raster import draw_pose, render_mesh

    first = next(iter(rows.values())).model
    faces = (first.regressor if isinstance(first, BackboneMPT) else first).faces.cpu().numpy()
    samples = list(ImageEvalBatches([folder], 1, first.cfg.level_sizes[-1]))
    picks = np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int)
    batch = {k: torch.cat([samples[i][k] for i in picks]) for k in samples[0]}
    crops = (batch["image"].permute(0, 2, 3, 1).numpy()[..., ::-1] * 255).round().astype(np.uint8)  # RGB -> BGR
    hand = first.cfg.joint_set == "hand21"  # the maps a hand model reads are its 21 joints
    names = conventions.JOINT_SETS["hand21" if hand else conventions.HEATMAP_JOINT_SET]
    skeleton = conventions.HAND21_SKELETON if hand else conventions.COCO_SKELETON
    columns = []
    for name, row in rows.items():
        row.model.eval()
        inputs, targets = row.prepare(batch)
        pred = row.model(inputs)
        errors = pa_mpjpe(pred["joints"].float(), targets["joints3d"].float()).cpu() * 1000.0
        seen = seen_joints(row.model, pred, batch)
        tiles = []
        for i in range(len(picks)):
            K, t = perspective_from_weak(pred["camera"][i].float().cpu().numpy(), (0.0, 0.0, float(CROP_SIZE)))
            tile = render_mesh(crops[i].copy(), pred["vertices"][i].float().cpu().numpy() + t, faces, K,
                               color=(150, 180, 230))
            tile = draw_pose(tile, seen[i], None, names, skeleton, thickness=1, radius=2)
            tiles.append(_caption(tile, f"PA-MPJPE {float(errors[i]):.0f} mm"))
        columns.append(np.concatenate([_strip(CROP_SIZE, name), *tiles], axis=0))
    gap = np.full((columns[0].shape[0], 4, 3), 255, np.uint8)
    body = np.concatenate([c for col in columns for c in (col, gap)][:-1], axis=1)
    title = _strip(body.shape[1], "held-out images: 2D joints the transformer was given, predicted mesh")
    return np.concatenate([title, body], axis=0)


def write_comparison_grid(rows: Mapping[str, Row], folder: str, out: str | Path, count: int = 6) -> Path:
    """Write :func:`comparison_grid` as a PNG, atomically."""
    import cv2

    ok, png = cv2.imencode(".png", comparison_grid(rows, folder, count))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {out}")
    return atomic_write_bytes(out, png.tobytes())
