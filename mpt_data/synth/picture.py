"""`mpt-data synth`: write the synthetic inputs and a contact sheet of the body in motion.

`write_synthetic_inputs` writes ``<out>/body_models`` (`mpt_data.synth.body`), ``<out>/amass``
(`mpt_data.synth.motion`), ``<out>/body.png`` and ``<out>/synth_config.json``. The picture
poses the synthetic SMPL+H model through smplx (``use_pca=False, flat_hand_mean=True``, the
way AMASS poses are meant to be applied) in the rest pose and one frame of each named motion,
seen from the front, the side and behind, drawn with `mpt_data.raster`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mpt_data import raster
from mpt_data.fileio import atomic_write_bytes, atomic_write_text
from mpt_data.synth import body as sb
from mpt_data.synth import motion as sm

_GENDER_COLOURS = {"neutral": (150, 170, 200), "male": (200, 160, 120), "female": (140, 120, 210)}  # BGR


@dataclass(frozen=True)
class SynthConfig:
    """Options of `mpt-data synth`."""

    out: str
    seed: int = 0
    num_vertices: int = 6890
    num_sequences: int = 14
    seconds: float = 4.0
    picture: bool = True


def _key_frame(kind: str, arrays: dict[str, np.ndarray]) -> int:
    """A frame that shows the motion: the top of a jump, the seated moment, the deepest bend."""
    z = arrays["trans"][:, 2]
    poses = arrays["poses"]
    if kind == "jump":
        return int(np.argmax(z))
    if kind == "sit":
        return int(np.argmin(z))
    if kind == "bend":
        return int(np.argmax(np.abs(poses[:, 9:12]).sum(axis=1)))
    if kind == "arm_swing":
        return int(np.argmax(np.abs(poses[:, 48:51]).sum(axis=1)))
    return len(poses) // 3


def pose_sheet(models_dir: str | os.PathLike, seed: int = 0, tile: int = 240) -> np.ndarray:
    """(3*tile, 8*tile, 3) uint8 BGR picture: rest pose and the 7 motions (columns) from the
    front, side and back (rows), each body posed through ``smplx.SMPLH``."""
    import smplx
    import torch

    models_dir = Path(models_dir)
    ids = json.loads((models_dir / "vertex_ids.json").read_text())["smplx"]
    rng = np.random.default_rng(seed)
    columns = []
    genders = ("neutral",) + tuple(("male", "female", "neutral")[k % 3] for k in range(len(sm.MOTIONS)))
    models = {
        g: smplx.SMPLH(str(models_dir / "smplh"), gender=g, use_pca=False, flat_hand_mean=True, vertex_ids=ids,
                       num_betas=10)
        for g in set(genders)
    }
    for col, kind in enumerate(("rest",) + sm.MOTIONS):
        gender = genders[col]
        subject = sm.Subject("sheet", gender, np.clip(rng.normal(0, 0.6, sm.NUM_BETAS), -1.5, 1.5))
        if kind == "rest":
            pose = np.zeros(156)
            pose[:3] = (np.pi / 2, 0, 0)
            trans = np.zeros(3)
        else:
            arrays = sm.synthesize_sequence(kind, 4.0, 30.0, subject, np.random.default_rng([seed, col]))
            k = _key_frame(kind, arrays)
            pose, trans = arrays["poses"][k], arrays["trans"][k]
        p = torch.tensor(pose[None], dtype=torch.float32)
        with torch.no_grad():
            out = models[gender](
                betas=torch.tensor(subject.betas[None, :10], dtype=torch.float32), global_orient=p[:, :3],
                body_pose=p[:, 3:66], left_hand_pose=p[:, 66:111], right_hand_pose=p[:, 111:156],
                transl=torch.tensor(trans[None], dtype=torch.float32),
            )
        verts = out.vertices[0].double().numpy()
        faces = models[gender].faces.astype(np.int64)
        root = sm.rotvec_to_matrix(pose[:3])
        facing = root @ np.array([0.0, 0.0, 1.0])
        facing[2] = 0
        facing /= max(np.linalg.norm(facing), 1e-9)
        side = np.cross(np.array([0.0, 0.0, 1.0]), facing)
        centre = 0.5 * (verts.min(axis=0) + verts.max(axis=0))
        tiles = []
        for eye_dir in (facing + 0.15 * side, side, -facing + 0.3 * side):
            eye = centre + 4.0 * eye_dir / np.linalg.norm(eye_dir) + np.array([0, 0, 0.6])
            R, _ = raster.look_at(eye, centre, (0, 0, 1))
            K, t = raster.fit_camera(verts, R, (tile, tile), fill=0.85)
            canvas = np.full((tile, tile, 3), 245, np.uint8)
            canvas[tile * 3 // 4:] = (215, 225, 230)
            img = raster.render_mesh(canvas, verts @ R.T + t, faces, K, color=_GENDER_COLOURS[gender])
            tiles.append(img)
        label = np.concatenate(tiles, axis=0)
        import cv2

        cv2.putText(label, kind, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (40, 40, 40), 1, cv2.LINE_AA)
        columns.append(label)
    return np.concatenate(columns, axis=1)


def write_synthetic_inputs(config: SynthConfig) -> dict[str, Path]:
    """Write body models, motions, body.png and the resolved config under ``config.out``."""
    import cv2

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"body_models": out / "body_models", "amass": out / "amass"}
    sb.write_body_models(out / "body_models", seed=config.seed, num_vertices=config.num_vertices)
    sm.write_motions(out / "amass", seed=config.seed, num_sequences=config.num_sequences, seconds=config.seconds)
    if config.picture:
        sheet = pose_sheet(out / "body_models", seed=config.seed)
        ok, png = cv2.imencode(".png", sheet)
        if not ok:
            raise RuntimeError("opencv could not encode body.png")
        atomic_write_bytes(out / "body.png", png.tobytes())
        written["body.png"] = out / "body.png"
    cfg_path = out / "synth_config.json"
    atomic_write_text(cfg_path, json.dumps(asdict(config), indent=1, sort_keys=True) + "\n")  # written last: the stamp
    written["config"] = cfg_path
    return written
