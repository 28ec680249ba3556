"""`mpt-train predict`: one image (and optionally a person box) → mesh ``.obj`` + overlay picture.

Crop rule: with a box (x, y, w, h) in image pixels the crop is the square of side
1.2·max(w, h) centred on the box (SPIN's margin); without a box it is the square of side
max(W, H) centred on the image, i.e. the whole image. The crop is resized to 224×224 and fed to
a fine-tuned model (or a pre-trained transformer behind a given backbone) as RGB in [0, 1]; the
backbone puts it in its family's channel order (``mpt_train.backbones.CHANNEL_ORDER``), so a
SimpleBaseline backbone sees the crop's BGR channels exactly as OpenCV read them.

The model's weak-perspective camera (s, tx, ty) maps camera-frame metres to normalised crop
coordinates; for the overlay it is turned into a perspective camera with a long focal length
f (5000 px at 224 px, as is customary) placed at depth f / (112·s), so the rendered mesh
lands where the model's 2D re-projection puts it. The overlay also draws the crop box and the 2D
keypoints the model saw: the maximum of each of the backbone's 17 heatmaps, mapped into the image.

Mesh files. The model predicts root-centred vertices in the camera frame (x right, y down, z forward,
metres). ``mesh.obj`` holds them in a y-up, right-handed frame, the camera frame turned 180° about its
x axis (x right, y up, z towards the camera: ``OBJ_FROM_CAMERA``), so Blender's and trimesh's default
Y-up import shows the body upright, facing the viewer; ``mesh_camera.obj`` holds the camera-frame
vertices as predicted. The turn is a rotation, so the faces keep their outward winding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpt_data.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from mpt_data.schema import CROP_SIZE, PIXEL_CENTRE

from .backbones import argmax_joints

BOX_MARGIN = 1.2
FOCAL_PX = 5000.0  # at CROP_SIZE
# camera frame (x right, y down, z forward) → the OBJ frame (x right, y up, z towards the camera): 180° about x
OBJ_FROM_CAMERA = np.diag([1.0, -1.0, -1.0])
MESH_FILE, MESH_CAMERA_FILE = "mesh.obj", "mesh_camera.obj"
MESH_FRAMES = {  # each file's axes, written into its header and into prediction.json
    MESH_FILE: "y-up frame: x right, y up, z towards the camera (the camera frame turned 180 degrees about x)",
    MESH_CAMERA_FILE: "camera frame: x right, y down, z forward",
}
BOX_COLOUR = (255, 255, 255)  # the crop box on the overlay: white over a dark rim, visible on any background
OVERLAY_MIN_PX = 448  # a smaller image is enlarged by a whole factor so its keypoints and box stay readable
CAPTION_PX = 22  # the strip above each half of the overlay that says what it shows


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: str
    image: str
    out: str
    bbox: tuple[float, float, float, float] | None = None  # x, y, w, h image pixels
    device: str = "auto"


def crop_box(image_size: tuple[int, int], bbox: tuple[float, float, float, float] | None) -> tuple[float, float, float]:
    """(x0, y0, side) of the square crop in image pixels for ``image_size`` = (W, H); see module doc."""
    w_img, h_img = image_size
    if bbox is None:
        side = float(max(w_img, h_img))
        cx, cy = (w_img - 1) / 2, (h_img - 1) / 2
    else:
        x, y, w, h = bbox
        if not (w > 0 and h > 0):
            raise ValueError(f"--bbox {bbox}: width and height must be positive")
        side = BOX_MARGIN * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        if cx + side / 2 < 0 or cy + side / 2 < 0 or cx - side / 2 > w_img or cy - side / 2 > h_img:
            raise ValueError(f"--bbox {bbox} lies outside the {w_img}x{h_img} image")
    return cx - side / 2, cy - side / 2, side


def cut(image: np.ndarray, box: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) crop of ``box`` (pixel centres at integers; black outside)."""
    import cv2

    x0, y0, side = box
    k = size / side
    m = np.array([[k, 0, -k * x0], [0, k, -k * y0]], np.float64)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def perspective_from_weak(camera: np.ndarray, box: tuple[float, float, float], size: int = CROP_SIZE
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Weak-perspective (s, tx, ty) → (K (3, 3) in image pixels, translation (3,) metres).

    A root-centred camera-frame point X then projects to the image as K @ (X + t), which equals
    the weak-perspective crop projection (s·X + t_xy + 1)·size/2 mapped back into the image.
    """
    s, tx, ty = (float(v) for v in camera)
    s = max(s, 1e-6)
    half = size / 2
    f = FOCAL_PX
    t = np.array([tx / s, ty / s, f / (half * s)])
    x0, y0, side = box
    k = size / side  # crop pixel = k * (image pixel - x0), pixel centres at integers (the cut and the shards)
    # The camera's unit: n = 2·(crop pixel + PIXEL_CENTRE)/size - 1 (mpt_train.images.crop_pixels_to_unit),
    # so crop pixel = f·X/Z + half - PIXEL_CENTRE and image pixel = crop pixel / k + x0.
    c = (half - PIXEL_CENTRE) / k
    K = np.array([[f / k, 0, c + x0], [0, f / k, c + y0], [0, 0, 1]])
    return K, t


def crop_to_image(points: np.ndarray, box: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
    """Crop pixels (..., 2) → image pixels (..., 2) for the crop ``box`` = (x0, y0, side) resized to ``size``;
    pixel centres at integers in both (the inverse of `mpt_data.images.image_to_crop` and of :func:`cut`)."""
    x0, y0, side = box
    return np.asarray(points, np.float64) * (side / size) + np.array([x0, y0])


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, frame: str) -> None:
    """Wavefront OBJ: ``v x y z`` per vertex (metres, root-centred), ``f a b c`` 1-based per triangle; atomic.
    ``frame`` describes the vertices' axes in the header comment."""
    lines = [f"# MPT mesh: {len(vertices)} vertices, {len(faces)} faces, metres, root-centred, {frame}"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices, np.float64)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, np.int64)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_meshes(out: str | Path, vertices_camera: np.ndarray, faces: np.ndarray) -> tuple[Path, Path]:
    """``out/mesh.obj`` in the y-up frame (``OBJ_FROM_CAMERA`` applied) and ``out/mesh_camera.obj`` as given.

    vertices_camera: (V, 3) metres, camera frame (x right, y down, z forward); faces (F, 3)."""
    out = Path(out)
    v = np.asarray(vertices_camera, np.float64)
    write_obj(out / MESH_FILE, v @ OBJ_FROM_CAMERA.T, faces, MESH_FRAMES[MESH_FILE])
    write_obj(out / MESH_CAMERA_FILE, v, faces, MESH_FRAMES[MESH_CAMERA_FILE])
    return out / MESH_FILE, out / MESH_CAMERA_FILE


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3), faces (F, 3) 0-based) of an OBJ written by :func:`write_obj`."""
    v, f = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            f.append([int(x.split("/")[0]) - 1 for x in line.split()[1:4]])
    return np.asarray(v), np.asarray(f, np.int64)


@torch.no_grad()
def predict(model: torch.nn.Module, image_bgr: np.ndarray, bbox=None, device: str | torch.device = "cpu") -> dict:
    """Run a BackboneMPT-like model on one (H, W, 3) uint8 BGR image (as OpenCV reads it); returns numpy
    arrays (camera-frame vertices and joints, camera, faces), the crop box and the crop, and ``keypoints``
    (17, 2): the maximum of each of the backbone's heatmaps in image pixels. The model gets the crop as RGB in
    [0, 1] (its backbone reorders)."""
    import cv2

    h, w = image_bgr.shape[:2]
    box = crop_box((w, h), bbox)
    crop = cut(image_bgr, box)
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0)[None].to(device)
    model.eval()
    out = model(x)
    keypoints_crop = argmax_joints(out["maps"].float(), CROP_SIZE)[0].cpu().numpy()
    return {"vertices": out["vertices"][0].float().cpu().numpy(), "joints": out["joints"][0].float().cpu().numpy(),
            "camera": out["camera"][0].float().cpu().numpy(), "faces": model.regressor.faces.cpu().numpy(),
            "box": box, "crop": crop, "keypoints": crop_to_image(keypoints_crop, box)}


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` under a dark strip of CAPTION_PX that holds ``text``, shrunk to the picture's width."""
    import cv2

    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    while scale > 0.3 and cv2.getTextSize(text, font, scale, 1)[0][0] > img.shape[1] - 8:
        scale -= 0.05
    strip = np.full((CAPTION_PX, img.shape[1], 3), 30, np.uint8)
    cv2.putText(strip, text, (4, CAPTION_PX - 7), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def draw_crop_box(image_bgr: np.ndarray, box: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
    """The square crop ``box`` = (x0, y0, side) outlined on the image through the image pixels nearest the
    centres of the crop's outer pixels (crop pixel 0 is image x0, crop pixel size - 1 is x0 + side·(size-1)/size),
    in BOX_COLOUR over a dark rim."""
    import cv2

    img = np.ascontiguousarray(image_bgr).copy()
    corners = np.round(crop_to_image(np.array([[0.0, 0.0], [size - 1.0, size - 1.0]]), box, size)).astype(int)
    a, b = tuple(corners[0].tolist()), tuple(corners[1].tolist())
    width = max(1, round(max(img.shape[:2]) / 300))
    cv2.rectangle(img, a, b, (0, 0, 0), width + 2, cv2.LINE_8)
    cv2.rectangle(img, a, b, BOX_COLOUR, width, cv2.LINE_8)
    return img


def enlarge(image_bgr: np.ndarray, box: tuple[float, float, float], keypoints: np.ndarray, factor: int
            ) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """The image resized by a whole ``factor`` with the crop box and the keypoints (K, 2) carried along
    (pixel centres at integers: image pixel u becomes (u + ½)·factor - ½)."""
    import cv2

    if factor == 1:
        return image_bgr, box, np.asarray(keypoints, np.float64)
    h, w = image_bgr.shape[:2]
    big = cv2.resize(image_bgr, (w * factor, h * factor), interpolation=cv2.INTER_LINEAR)
    x0, y0, side = box

    def move(u):
        return (np.asarray(u, np.float64) + PIXEL_CENTRE) * factor - PIXEL_CENTRE

    return big, (float(move(x0)), float(move(y0)), side * factor), move(keypoints)


def overlay(image_bgr: np.ndarray, result: dict) -> np.ndarray:
    """(CAPTION_PX + f·H, 2·f·W, 3) picture, f the whole factor that brings the image to OVERLAY_MIN_PX: left,
    the image with the crop box and the 2D keypoints the model saw (the heatmap maxima, limbs coloured by side
    as in `mpt_data.raster.SIDE_COLOURS`); right, the predicted mesh over the image inside the same box; a
    caption above each."""
    from mpt_data import conventions
    from mpt_data.raster import draw_pose, render_mesh

    factor = max(1, -(-OVERLAY_MIN_PX // max(image_bgr.shape[:2])))
    image, box, keypoints = enlarge(image_bgr, result["box"], result["keypoints"], factor)
    K, t = perspective_from_weak(result["camera"], box)
    size = max(image.shape[:2])
    seen = draw_pose(draw_crop_box(image, box), keypoints, None, conventions.JOINT_SETS[conventions.HEATMAP_JOINT_SET],
                     conventions.COCO_SKELETON, thickness=max(1, round(size / 250)), radius=max(3, round(size / 110)))
    mesh = render_mesh(draw_crop_box(image, box), result["vertices"] + t, result["faces"], K, color=(150, 180, 230))
    return np.concatenate([_caption(seen, "crop box and the 2D keypoints the model saw (heatmap peaks)"),
                           _caption(mesh, "predicted mesh")], axis=1)


def run(cfg: PredictConfig) -> dict:
    """Load, predict, write ``mesh.obj`` (y up), ``mesh_camera.obj`` (camera frame), ``overlay.png`` and
    ``prediction.json`` into ``cfg.out``."""
    import cv2

    from .checkpoint import CheckpointError
    from .loading import BackboneMPT, load_checkpoint_model
    from .runtime import choose_device

    image = cv2.imread(cfg.image, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{cfg.image}: missing or not a readable image")
    device = choose_device(cfg.device)
    model = load_checkpoint_model(cfg.checkpoint)
    if not isinstance(model, BackboneMPT):
        raise CheckpointError(f"{cfg.checkpoint}: a fine-tuned checkpoint (backbone + transformer) is needed to predict "
                         "from images")
    model.to(device)
    res = predict(model, image, cfg.bbox, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_meshes(out, res["vertices"], res["faces"])
    pic = overlay(image, res)
    ok, png = cv2.imencode(".png", pic)
    if not ok:
        raise OSError(f"{out / 'overlay.png'}: PNG encoding failed")
    atomic_write_bytes(out / "overlay.png", png.tobytes())
    info = {"image": cfg.image, "bbox": cfg.bbox, "crop_box": list(res["box"]), "camera": res["camera"].tolist(),
            "joints3d_coco17": res["joints"].tolist(),  # camera frame, root-centred, metres
            "keypoints2d_coco17": res["keypoints"].tolist(),  # image pixels: the backbone's heatmap maxima
            "num_vertices": int(len(res["vertices"])), "mesh_frames": MESH_FRAMES}
    atomic_write_json(out / "prediction.json", info, indent=2)
    return info
