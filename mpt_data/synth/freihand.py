"""`mpt-data synth-freihand`: a small synthetic dataset in exactly FreiHAND's layout, for tests and the demo.

The right hand of a MANO-format model file (the synthetic one of ``mpt-data synth``, or a real
``MANO_RIGHT.pkl``), posed by :class:`mpt_data.hand.HandModel` and drawn with :mod:`mpt_data.raster`
over the procedural backgrounds of :mod:`mpt_data.synth.images`. Written (N annotations per split)::

    OUT/training_K.json       (N, 3, 3)     OUT/training_mano.json (N, 1, 61)
    OUT/training_xyz.json     (N, 21, 3)    OUT/training_verts.json (N, 778, 3)
    OUT/training/rgb/%08d.jpg versions × N images; image i shows annotation i mod N (FreiHAND's colour
                              versions: version 0 on a green screen, the others on random backgrounds
                              with other lighting; the hand, its pose and the camera are the same)
    OUT/evaluation_K.json, evaluation_scale.json, and (``eval_truth``) evaluation_xyz.json,
    evaluation_verts.json, evaluation_mano.json (the released evaluation annotations' files)
    OUT/evaluation/rgb/%08d.jpg
    OUT/synth_freihand.json   resolved config and counts (written last: the completion marker)

Each annotation: a pose with a uniformly random global rotation (the first 3 of the 48 axis-angle values:
the hand's orientation in the camera frame, x right, y down, z forward) and finger values drawn from
N(0, ``finger_sigma``²); betas from N(0, ``shape_sigma``²); a focal length in ``focal_range`` pixels and the
hand placed so its projected box spans ``fill_range`` of the image around its centre (FreiHAND's images
are hand crops). The 3 trailing "translation" values of ``mano`` are the wrist's camera-frame position
(our hand model is wrist-centred; FreiHAND's are MANO's own translation, which the ingest does not use).
``scale`` is the length of the middle finger's first bone (joints 9 → 10), metres. Everything about
annotation ``a`` of a split is drawn from ``default_rng([seed, split, a])``, and its looks in version v
from ``default_rng([seed, split, a, v])``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mpt_data.fileio import atomic_write_json, atomic_write_text

SPLIT_CODES = {"training": 0, "evaluation": 1}
GREEN_SCREEN_BGR = (60, 180, 40)
HAND_TONES: tuple[tuple[int, int, int], ...] = ((160, 185, 230), (130, 165, 215), (100, 140, 190), (70, 105, 150))
MARKER = "synth_freihand.json"
SCALE_BONE = (9, 10)  # middle finger: base -> second joint, the reference bone of ``scale``


class SynthFreiHANDError(ValueError):
    """Settings that cannot make a dataset (the message names the field)."""


@dataclass(frozen=True)
class SynthFreiHANDConfig:
    """hand_models: folder with MANO_RIGHT.pkl (or .npz); out: output folder; training / evaluation:
    annotations per split; versions: training colour versions (1-4); eval_truth: also write the evaluation
    split's xyz, verts and mano files."""

    hand_models: str
    out: str
    training: int = 32
    evaluation: int = 8
    versions: int = 2
    eval_truth: bool = True
    image_size: int = 224
    seed: int = 0
    finger_sigma: float = 0.25
    shape_sigma: float = 0.5
    focal_range: tuple[float, float] = (450.0, 650.0)
    fill_range: tuple[float, float] = (0.6, 0.85)
    jpeg_quality: int = 92


def random_rotation_vector(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation (Haar measure) as an axis-angle (3,) vector."""
    import cv2

    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return cv2.Rodrigues(rot)[0].reshape(3)


def write_synth_freihand(cfg: SynthFreiHANDConfig) -> dict:
    """Write the dataset (module docstring); returns the summary also saved as ``synth_freihand.json``."""
    import cv2

    from mpt_data.hand import HandModel, HandModelConfig
    from mpt_data.raster import render_mesh
    from mpt_data.synth.images import background, place_person

    if not 1 <= cfg.versions <= 4:
        raise SynthFreiHANDError(f"versions {cfg.versions}: FreiHAND's training split has 1 to 4 colour versions")
    if cfg.training < 1 or cfg.evaluation < 1:
        raise SynthFreiHANDError("training and evaluation need at least one annotation each")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    model = HandModel.load(HandModelConfig(cfg.hand_models), side="right")
    faces = np.asarray(model.faces, np.int64)
    size = cfg.image_size
    c = (size - 1) / 2
    counts = {}
    for split, n in (("training", cfg.training), ("evaluation", cfg.evaluation)):
        versions = cfg.versions if split == "training" else 1
        ann = {k: [] for k in ("K", "mano", "xyz", "verts", "scale")}
        rgb = out / split / "rgb"
        rgb.mkdir(parents=True, exist_ok=True)
        for a in range(n):
            r = np.random.default_rng([cfg.seed, SPLIT_CODES[split], a])
            pose = np.concatenate([random_rotation_vector(r), r.normal(0, cfg.finger_sigma, 45)])
            betas = r.normal(0, cfg.shape_sigma, model.num_betas)
            res = model.forward(pose[None].astype(np.float32), betas[None].astype(np.float32))
            verts0, joints0 = res["vertices"][0].astype(np.float64), res["hand21"][0].astype(np.float64)
            focal = r.uniform(*cfg.focal_range)
            centre = c + r.uniform(-0.05, 0.05, 2) * size
            t = place_person(verts0, focal, size, r.uniform(*cfg.fill_range), centre)
            K = np.array([[focal, 0, c], [0, focal, c], [0, 0, 1.0]])
            verts, xyz = verts0 + t, joints0 + t
            ann["K"].append(K)
            ann["mano"].append([np.concatenate([pose, betas[:10], t]).tolist()])
            ann["xyz"].append(xyz)
            ann["verts"].append(verts)
            ann["scale"].append(float(np.linalg.norm(xyz[SCALE_BONE[0]] - xyz[SCALE_BONE[1]])))
            for v in range(versions):
                looks = np.random.default_rng([cfg.seed, SPLIT_CODES[split], a, v])
                canvas = (np.full((size, size, 3), GREEN_SCREEN_BGR, np.uint8) if split == "training" and v == 0
                          else background(looks, size))
                tone = np.asarray(HAND_TONES[int(looks.integers(len(HAND_TONES)))], np.float64)
                light = np.array([looks.uniform(-1, 1), looks.uniform(-1, 1), looks.uniform(0.3, 1.0)])
                img = render_mesh(canvas, verts, faces, K, color=tuple(tone * looks.uniform(0.85, 1.15)),
                                  light_dir=light, ambient=float(looks.uniform(0.3, 0.6)))
                path = rgb / f"{v * n + a:08d}.jpg"
                if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
                    raise OSError(f"cannot write {path}")
        files = {"K": ann["K"], "mano": ann["mano"], "xyz": ann["xyz"], "verts": ann["verts"]}
        if split == "evaluation":
            files = {"K": ann["K"], "scale": ann["scale"]} | (
                {k: files[k] for k in ("xyz", "verts", "mano")} if cfg.eval_truth else {})
        for what, value in files.items():
            atomic_write_text(out / f"{split}_{what}.json", json.dumps(_plain(value)))
        counts[split] = {"annotations": n, "images": n * versions}
    summary = {"config": asdict(cfg), "counts": counts}
    atomic_write_json(out / MARKER, summary, indent=2)
    return summary


def _plain(value):
    """Nested lists of floats for JSON (rounded to 0.1 µm: far below any figure reported)."""
    if isinstance(value, np.ndarray):
        return np.round(value.astype(np.float64), 7).tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return round(float(value), 7) if isinstance(value, float) else value
