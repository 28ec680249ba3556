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
from mpt_data.synth import hand as sh
from mpt_data.synth import motion as sm

_GENDER_COLOURS = {"neutral": (150, 170, 200), "male": (200, 160, 120), "female": (140, 120, 210)}  # BGR
# The sheet's rows: where the eye sits, as (name, weight of the body's facing direction, weight of its left side).
VIEW_ROWS: tuple[tuple[str, float, float], ...] = (("front", 1.0, 0.15), ("side", 0.0, 1.0), ("behind", -1.0, 0.3))
LABEL_PX, HEADER_PX, LEGEND_PX = 80, 26, 30  # the row-label column, the column-title strip, the key below


@dataclass(frozen=True)
class SynthConfig:
    """Options of `mpt-data synth`."""

    out: str
    seed: int = 0
    num_vertices: int = 6890
    num_sequences: int = 14
    seconds: float = 4.0
    picture: bool = True
    hands: bool = True  # also the synthetic MANO hand (hand_models/), ~8 s


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


def quiet_smplh(smplh, *args, **kwargs):
    """``smplh(*args, **kwargs)`` without smplx's notice that the file has only 10 shape coefficients, which
    it prints (not a Python warning) for every model it loads: the picture asks for 10 on purpose. Any other
    output of the constructor is passed on."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model = smplh(*args, **kwargs)
    for line in printed.getvalue().splitlines():
        if not (line.startswith("WARNING: You are using a") and line.endswith("with only 10 shape coefficients.")):
            print(line)
    return model


def pose_sheet(models_dir: str | os.PathLike, seed: int = 0, tile: int = 240) -> np.ndarray:
    """(HEADER_PX + 3*tile + LEGEND_PX, LABEL_PX + 8*tile, 3) uint8 BGR picture: the rest pose and one key
    frame of each of the 7 motions (columns, titled) seen from the front, the side and behind (rows,
    labelled), each body posed through ``smplx.SMPLH`` and coloured by its model's gender (the key below)."""
    import smplx
    import torch

    models_dir = Path(models_dir)
    ids = json.loads((models_dir / "vertex_ids.json").read_text())["smplx"]
    rng = np.random.default_rng(seed)
    columns = []
    genders = ("neutral",) + tuple(("male", "female", "neutral")[k % 3] for k in range(len(sm.MOTIONS)))
    models = {g: quiet_smplh(smplx.SMPLH, str(models_dir / "smplh"), gender=g, use_pca=False, flat_hand_mean=True,
                              vertex_ids=ids, num_betas=10)
              for g in set(genders)}
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
        for _, along, across in VIEW_ROWS:
            eye_dir = along * facing + across * side
            eye = centre + 4.0 * eye_dir / np.linalg.norm(eye_dir) + np.array([0, 0, 0.6])
            R, _ = raster.look_at(eye, centre, (0, 0, 1))
            K, t = raster.fit_camera(verts, R, (tile, tile), fill=0.85)
            canvas = np.full((tile, tile, 3), 245, np.uint8)
            canvas[tile * 3 // 4:] = (215, 225, 230)
            img = raster.render_mesh(canvas, verts @ R.T + t, faces, K, color=_GENDER_COLOURS[gender])
            tiles.append(img)
        columns.append(np.concatenate(tiles, axis=0))
    return sheet_with_key(columns, ("rest",) + sm.MOTIONS, genders)


def sheet_with_key(columns: list[np.ndarray], titles: tuple[str, ...], genders: tuple[str, ...]) -> np.ndarray:
    """The columns (each (3*tile, tile, 3) uint8 BGR, one tile per VIEW_ROWS row) side by side, with each
    column's title and body-model gender above it, the row names in a column on the left, and a key below
    that names the body colours (`_GENDER_COLOURS`) and what the columns and rows show."""
    import cv2

    font, ink, paper = cv2.FONT_HERSHEY_SIMPLEX, (40, 40, 40), (255, 255, 255)
    tile = columns[0].shape[1]
    body = np.concatenate(columns, axis=1)
    h, w = body.shape[:2]
    sheet = np.full((HEADER_PX + h + LEGEND_PX, LABEL_PX + w, 3), paper, np.uint8)
    sheet[HEADER_PX : HEADER_PX + h, LABEL_PX:] = body
    for c, (title, gender) in enumerate(zip(titles, genders)):
        cv2.putText(sheet, f"{title} ({gender})", (LABEL_PX + c * tile + 6, HEADER_PX - 8), font, 0.5, ink, 1,
                    cv2.LINE_AA)
    for r, (name, _, _) in enumerate(VIEW_ROWS):
        cv2.putText(sheet, name, (8, HEADER_PX + r * (h // len(VIEW_ROWS)) + h // (2 * len(VIEW_ROWS)) + 5), font,
                    0.55, ink, 1, cv2.LINE_AA)
        sheet[HEADER_PX + r * (h // len(VIEW_ROWS)), LABEL_PX:] = 200  # a rule above each row
    y, x = HEADER_PX + h + LEGEND_PX // 2, 8
    cv2.putText(sheet, "body model:", (x, y + 5), font, 0.5, ink, 1, cv2.LINE_AA)
    x += cv2.getTextSize("body model:", font, 0.5, 1)[0][0] + 10
    for gender, colour in _GENDER_COLOURS.items():
        cv2.rectangle(sheet, (x, y - 7), (x + 14, y + 7), colour, -1)
        cv2.putText(sheet, gender, (x + 19, y + 5), font, 0.5, ink, 1, cv2.LINE_AA)
        x += 19 + cv2.getTextSize(gender, font, 0.5, 1)[0][0] + 16
    note = "columns: the rest pose, then one key frame of each synthetic motion; rows: the same body from three sides"
    cv2.putText(sheet, note, (x + 14, y + 5), font, 0.5, ink, 1, cv2.LINE_AA)
    return sheet


def write_synthetic_inputs(config: SynthConfig) -> dict[str, Path]:
    """Write body models, hand models, motions, body.png and the resolved config under ``config.out``."""
    import cv2

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"body_models": out / "body_models", "amass": out / "amass"}
    sb.write_body_models(out / "body_models", seed=config.seed, num_vertices=config.num_vertices)
    sm.write_motions(out / "amass", seed=config.seed, num_sequences=config.num_sequences, seconds=config.seconds)
    if config.hands:
        sh.write_hand_models(out / "hand_models", seed=config.seed)
        written["hand_models"] = out / "hand_models"
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
