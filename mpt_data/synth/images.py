"""`mpt-data synth-images`: a synthetic image dataset in the SPIN annotation format.

Synthetic bodies (the body model files of `mpt-data synth`, posed by :class:`mpt_data.body.BodyModel`)
driven by AMASS-format motions, rendered with :mod:`mpt_data.raster` over procedural backgrounds:
random views around the body, person scale and offset in the frame, lighting, skin tone, hair,
shirt, trousers (long or short sleeves and legs) and shoes. Everything about image ``i`` of a split
is drawn from ``numpy.random.default_rng([seed, split, i])``, so the output does not depend on how
the work is divided between processes.

Output folder::

    OUT/images/<split>/<i:06d>.jpg         the pictures (image_size × image_size, JPEG)
    OUT/<dataset>_<split>.npz              SPIN-format annotations, imgname relative to OUT
    OUT/vertex_flip.npy                    (V,) mirror vertex of each vertex (when the mesh is symmetric)
    OUT/mixture.yaml                       a mixture file for `mpt-train finetune` naming the train shards
    OUT/synth_images.json                  resolved config and counts (written last: the completion marker)

Annotation keys (N persons, one per image):
  imgname (N,) str; center (N, 2) image pixels; scale (N,) = box side / 200, the box being the square
  of side BOX_MARGIN × the longer side of the projected mesh's bounding box around its centre;
  part (N, 24, 3) SPIN-24 joints in image pixels (pixel centres at integers) + 1 where inside the image;
  S (N, 24, 4) SPIN-24 joints, metres, camera frame (x right, y down, z forward) + confidence 1;
  pose (N, 72) SMPL axis-angle, the root orientation in the camera frame, SMPL's two hand joints
  zero; shape (N, 10) the first ten betas; has_smpl (N,) 1; gender (N,) 'm' / 'f' / 'n';
  vertices (N, V, 3) float32, metres, camera frame (this project's extension, read by `mpt-data images`).

SPIN-24 joints from the body: the COCO-17 joints (shoulders, elbows, wrists, hips, knees, ankles and
face points) are exactly the store's ``coco17`` set (:mod:`mpt_data.body`, COCO hips included), so a
model pre-trained on a store of the same body model sees the same joint definitions; pelvis, neck and
head are the SMPL joints; thorax is the mid-point of the SMPL collars; spine is SMPL spine2; jaw is
the mid-point of SMPL neck and head; head top is the template's highest head vertex.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mpt_data import conventions as cv
from mpt_data.fileio import atomic_write, atomic_write_text

BOX_MARGIN = 1.2  # the person box: 1.2 × the mesh's projected extent (the store's crop rule)
SPIN_BOX_UNIT_PX = 200.0
SPLIT_CODES = {"train": 0, "val": 1}

# Skin tones and clothing palette, BGR (the images are written with opencv).
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (189, 210, 243), (150, 180, 225), (120, 160, 210), (90, 130, 180), (60, 95, 140), (45, 70, 105),
)
HAIR_COLOURS: tuple[tuple[int, int, int], ...] = ((20, 20, 25), (30, 50, 90), (40, 80, 140), (120, 170, 210),
                                                   (150, 150, 150))

# Body regions by SMPL joint name: which skinning part a vertex mostly follows.
_REGIONS: dict[str, tuple[str, ...]] = {
    "head": ("head", "neck"),
    "torso": ("spine1", "spine2", "spine3", "left_collar", "right_collar"),
    "upper_arm": ("left_shoulder", "right_shoulder"),
    "forearm": ("left_elbow", "right_elbow"),
    "hand": ("left_wrist", "right_wrist"),
    "hips": ("pelvis",),
    "thigh": ("left_hip", "right_hip"),
    "shin": ("left_knee", "right_knee"),
    "foot": ("left_ankle", "right_ankle", "left_foot", "right_foot"),
}
REGION_NAMES: tuple[str, ...] = tuple(_REGIONS) + ("hair",)


class SynthImagesError(ValueError):
    """Inputs that cannot make a dataset (no motions, a missing body model, a bad setting)."""


@dataclass(frozen=True)
class SynthImagesConfig:
    """A synthetic SPIN-format image dataset.

    amass_root: AMASS-format motions (e.g. ``demo_out/synth/amass``). body_models: the body model
    folder (e.g. ``demo_out/synth/body_models``; use the one the store was built with, so the mesh
    topology matches the pre-trained model's). out: output folder. train/val: images per split.
    image_size: square picture side in pixels. seed: everything derives from it. workers: processes
    (0 or 1: this process). dataset: annotation file stem. manifest: YAML whose
    ``sources.amass.subsets`` assigns subsets to splits (AMASS's split); val images come from val
    subsets, train images from the others; when no motion is in a val subset every tenth motion file
    is held out instead. focal_range: focal length as a multiple of image_size. fill_range: person
    box side as a share of image_size. jpeg_quality: 0-100.
    """

    amass_root: str
    body_models: str
    out: str
    train: int = 2000
    val: int = 200
    image_size: int = 256
    seed: int = 0
    workers: int = 1
    dataset: str = "synth"
    model_type: str = "smplh"
    manifest: str | None = "data_manifest.yaml"
    focal_range: tuple[float, float] = (1.2, 3.0)
    fill_range: tuple[float, float] = (0.55, 0.95)
    elevation_deg: tuple[float, float] = (-10.0, 30.0)
    shape_noise: float = 0.5  # std added to the motion's first 10 betas, for more body shapes
    jpeg_quality: int = 90
    block: int = 32  # images per task

    def __post_init__(self) -> None:
        if self.train < 0 or self.val < 0 or self.train + self.val == 0:
            raise SynthImagesError(f"train={self.train}, val={self.val}: ask for at least one image")
        if self.image_size < 32:
            raise SynthImagesError(f"image_size {self.image_size} is too small (>= 32)")
        if self.model_type not in ("smplh", "smpl"):
            raise SynthImagesError(f"model_type {self.model_type!r}: smplh or smpl")


# ------------------------------------------------------------------------------------------
# Pure pieces: backgrounds, clothing, cameras, joints


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 procedural background: a gradient or smooth noise base, then random
    stripes, rectangles, circles or lines on top."""
    import cv2

    kind = rng.integers(3)
    if kind == 0:  # linear gradient between two colours
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = np.clip((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5, 0, 1)[..., None]
        img = a * (1 - t) + b * t
    elif kind == 1:  # smooth colour noise
        cells = int(rng.integers(2, 9))
        low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    else:  # flat wall with a floor band
        wall, floor = rng.uniform(30, 230, 3), rng.uniform(20, 200, 3)
        img = np.broadcast_to(wall, (size, size, 3)).copy()
        h = int(rng.uniform(0.55, 0.85) * size)
        img[h:] = floor
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(4)
        p = rng.integers(-size // 4, size + size // 4, 4)
        if shape == 0:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, -1)
        elif shape == 1:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(4, size // 4)), colour, -1, cv2.LINE_AA)
        elif shape == 2:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, int(rng.integers(1, 8)),
                     cv2.LINE_AA)
        else:  # stripes across the picture
            period = rng.uniform(6, size / 3)
            ang = rng.uniform(0, math.pi)
            yy, xx = np.mgrid[0:size, 0:size]
            band = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0)[..., None]
            img = np.where(band, np.asarray(colour, np.uint8), img)
    return img


def vertex_regions(weights: np.ndarray, joint_names: Sequence[str], template: np.ndarray) -> np.ndarray:
    """(V,) region index into REGION_NAMES of each vertex.

    weights: (V, J) skinning weights of a model with ``joint_names`` (SMPL or SMPL+H; finger joints
    count as hand). template: (V, 3) rest vertices, y up (the SMPL template frame): head vertices
    above the eyes and behind the face are hair.
    """
    owner = np.asarray(weights).argmax(axis=1)
    region_of_joint = np.full(len(joint_names), REGION_NAMES.index("hand"))
    for region, names in _REGIONS.items():
        for n in names:
            if n in joint_names:
                region_of_joint[list(joint_names).index(n)] = REGION_NAMES.index(region)
    out = region_of_joint[owner]
    head = out == REGION_NAMES.index("head")
    if head.any():
        t = np.asarray(template)
        top = t[head, 1].max()
        height = top - t[head, 1].min()
        hair = head & ((t[:, 1] > top - 0.35 * height) | ((t[:, 1] > top - 0.7 * height) & (t[:, 2] < np.median(t[head, 2]))))
        out = np.where(hair, REGION_NAMES.index("hair"), out)
    return out


def outfit(rng: np.random.Generator) -> np.ndarray:
    """(len(REGION_NAMES), 3) BGR colour per region: skin, hair, shirt, trousers, shoes; sleeves and
    legs long or short at random."""
    skin = np.asarray(SKIN_TONES[rng.integers(len(SKIN_TONES))], float) * rng.uniform(0.9, 1.1)
    hair = np.asarray(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], float)
    shirt, trousers = rng.uniform(0, 255, 3), rng.uniform(0, 200, 3)
    shoes = rng.uniform(0, 90, 3)
    long_sleeves, long_legs, bald = rng.random() < 0.5, rng.random() < 0.7, rng.random() < 0.15
    col = {
        "head": skin, "hair": skin if bald else hair, "torso": shirt, "upper_arm": shirt,
        "forearm": shirt if long_sleeves else skin, "hand": skin, "hips": trousers, "thigh": trousers,
        "shin": trousers if long_legs else skin, "foot": shoes,
    }
    return np.clip(np.stack([col[n] for n in REGION_NAMES]), 0, 255)


def random_rotation(rng: np.random.Generator, elevation_deg: tuple[float, float]) -> np.ndarray:
    """(3, 3) world → camera rotation of a camera looking at the origin from a random azimuth and
    elevation, world z up (the AMASS frame), picture up = world up."""
    from mpt_data.raster import look_at

    az = rng.uniform(0, 2 * math.pi)
    el = math.radians(rng.uniform(*elevation_deg))
    eye = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    R, _ = look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    return R


def place_person(verts_rot: np.ndarray, focal: float, size: int, fill: float, centre_px: np.ndarray) -> np.ndarray:
    """Camera translation (3,) putting rotated vertices (V, 3) (camera axes, root at the origin) so
    that their bounding box, at its centre depth, spans ``fill`` × size pixels on its longer side
    with its centre at ``centre_px``."""
    lo, hi = verts_rot.min(0), verts_rot.max(0)
    mid = (lo + hi) / 2
    extent = max(hi[0] - lo[0], hi[1] - lo[1])
    z = focal * extent / (fill * size)
    c = (size - 1) / 2
    return np.array([z * (centre_px[0] - c) / focal - mid[0], z * (centre_px[1] - c) / focal - mid[1], z - mid[2]])


def spin_joints(out: dict[str, np.ndarray], head_top: int) -> np.ndarray:
    """(B, 24, 3) SPIN-24 joints from a BodyModel forward (``smpl24``, ``coco17``, ``vertices``);
    the rules are in the module docstring."""
    smpl = {n: out["smpl24"][:, i] for i, n in enumerate(cv.SMPL_JOINTS)}
    coco = {n: out["coco17"][:, i] for i, n in enumerate(cv.COCO_JOINTS)}
    extra = {
        "neck": smpl["neck"], "head_top": out["vertices"][:, head_top], "pelvis": smpl["pelvis"],
        "thorax": (smpl["left_collar"] + smpl["right_collar"]) / 2, "spine": smpl["spine2"],
        "jaw": (smpl["neck"] + smpl["head"]) / 2, "head": smpl["head"],
    }
    return np.stack([coco[n] if n in coco else extra[n] for n in cv.SPIN_JOINTS], axis=1)


def smpl_pose_in_camera(poses156: np.ndarray, R: np.ndarray) -> np.ndarray:
    """(72,) SMPL axis-angle from an AMASS SMPL+H pose (156,): the root orientation turned into the
    camera frame by R (world → camera), body joints as they are, SMPL's hand joints zero."""
    import cv2

    out = np.zeros(72, np.float64)
    root, _ = cv2.Rodrigues(np.asarray(poses156[:3], np.float64))
    out[:3] = cv2.Rodrigues(np.asarray(R, np.float64) @ root)[0].reshape(3)
    out[3:3 * cv.NUM_BODY_JOINTS] = poses156[3:3 * cv.NUM_BODY_JOINTS]
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Motions, body models, splits


@dataclass
class _Pool:
    poses: np.ndarray  # (T, 156) all frames of the split's motions
    betas: np.ndarray  # (T, 16)
    gender: np.ndarray  # (T,) str


def _split_files(cfg: SynthImagesConfig) -> dict[str, list]:
    from mpt_data.amass import MotionError, find_motion_files, read_motion

    files = find_motion_files(cfg.amass_root)
    motions = []
    for f in files:
        try:
            motions.append(read_motion(f, cfg.amass_root))
        except MotionError:
            continue  # `mpt-data build` reports bad motion files; here they are simply not used
    if not motions:
        raise SynthImagesError(f"{cfg.amass_root}: no readable AMASS motion files (*_poses.npz, *_stageii.npz)")
    splits = {}
    if cfg.manifest and Path(cfg.manifest).is_file():
        from mpt_data.build import manifest_splits

        splits = manifest_splits(cfg.manifest)
    val = [m for m in motions if splits.get(m.subset) == "val"]
    train = [m for m in motions if splits.get(m.subset, "train") == "train"]
    if not val or not train:  # no AMASS split in these subsets: hold out every tenth file
        val = motions[::10] if len(motions) > 1 else motions
        train = [m for k, m in enumerate(motions) if k % 10 or len(motions) == 1]
    return {"train": train, "val": val}


def _pool(motions: list) -> _Pool:
    poses = np.concatenate([m.poses for m in motions]).astype(np.float32)
    betas = np.concatenate([np.broadcast_to(np.resize(m.betas, 16), (m.num_frames, 16)) for m in motions])
    gender = np.concatenate([np.full(m.num_frames, m.gender) for m in motions])
    return _Pool(poses, betas.astype(np.float32), gender)


class _Renderer:
    """Per-process state: the split pools, one body model per gender, regions, head-top vertex."""

    def __init__(self, cfg: SynthImagesConfig):
        from mpt_data.body import BodyModel, BodyModelConfig, find_model_file, load_model_file

        self.cfg = cfg
        self.pools = {k: _pool(v) for k, v in _split_files(cfg).items()}
        bcfg = BodyModelConfig(cfg.body_models, cfg.model_type)
        genders = sorted({str(g) for p in self.pools.values() for g in p.gender})  # plain str: messages name them
        self.models = {g: BodyModel.load(bcfg, g) for g in genders}
        ref = self.models[genders[0]]
        data = load_model_file(find_model_file(bcfg, genders[0]))
        template = np.asarray(data["v_template"], np.float64)
        self.regions = vertex_regions(np.asarray(data["weights"]), ref.joint_names, template)
        self.faces = ref.faces.astype(np.int64)
        self.face_region = self.regions[self.faces[:, 0]]
        head = self.regions == REGION_NAMES.index("hair")
        head |= self.regions == REGION_NAMES.index("head")
        self.head_top = int(np.argmax(np.where(head, template[:, 1], -np.inf)))

    def block(self, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Render images start..stop-1 of ``split``; returns their annotations and writes the JPEGs."""
        import cv2

        from mpt_data.raster import project, render_mesh

        cfg, pool = self.cfg, self.pools[split]
        n = stop - start
        rngs = [np.random.default_rng([cfg.seed, SPLIT_CODES[split], i]) for i in range(start, stop)]
        frames = np.array([r.integers(len(pool.poses)) for r in rngs])
        betas = pool.betas[frames].copy()
        for k, r in enumerate(rngs):
            betas[k, :10] += r.normal(0, cfg.shape_noise, 10)
        out: dict[str, np.ndarray] = {}
        for k in range(n):  # one at a time: a batched forward's rounding would depend on the block
            res = self.models[str(pool.gender[frames[k]])].forward(pool.poses[frames[k:k + 1]], betas[k:k + 1])
            for key in ("vertices", "smpl24", "coco17"):
                if key not in out:
                    out[key] = np.zeros((n,) + res[key].shape[1:], np.float32)
                out[key][k] = res[key][0]
        spin = spin_joints(out, self.head_top)
        size = cfg.image_size
        ann = {k: [] for k in ("imgname", "center", "scale", "part", "S", "pose", "shape", "has_smpl", "gender",
                               "vertices")}
        folder = Path(cfg.out) / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for k, r in enumerate(rngs):
            R = random_rotation(r, cfg.elevation_deg)
            vr = out["vertices"][k].astype(np.float64) @ R.T
            focal = r.uniform(*cfg.focal_range) * size
            fill = r.uniform(*cfg.fill_range)
            centre = (size - 1) / 2 + r.uniform(-0.15, 0.15, 2) * size
            t = place_person(vr, focal, size, fill, centre)
            verts = vr + t
            joints = spin[k].astype(np.float64) @ R.T + t
            K = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1.0]])
            colours = outfit(r)[self.face_region]
            light = np.array([r.uniform(-1, 1), r.uniform(-0.2, 1.0), r.uniform(0.3, 1.0)])
            img = background(r, size)
            img = render_mesh(img, verts, self.faces, K, face_colors=colours, light_dir=light,
                              ambient=float(r.uniform(0.25, 0.6)))
            img = _camera_noise(img, r)
            name = f"images/{split}/{start + k:06d}.jpg"
            if not cv2.imwrite(str(Path(cfg.out) / name), img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
                raise OSError(f"cannot write {Path(cfg.out) / name}")
            uv = project(joints, K)
            inside = (uv >= -0.5).all(1) & (uv < size - 0.5).all(1)
            vuv = project(verts, K)
            lo, hi = vuv.min(0), vuv.max(0)
            ann["imgname"].append(name)
            ann["center"].append((lo + hi) / 2)
            ann["scale"].append(BOX_MARGIN * float(max(hi - lo)) / SPIN_BOX_UNIT_PX)
            ann["part"].append(np.concatenate([uv, inside[:, None]], 1))
            ann["S"].append(np.concatenate([joints, np.ones((len(joints), 1))], 1))
            ann["pose"].append(smpl_pose_in_camera(pool.poses[frames[k]], R))
            ann["shape"].append(betas[k, :10])
            ann["has_smpl"].append(1.0)
            ann["gender"].append(str(pool.gender[frames[k]])[0])
            ann["vertices"].append(verts.astype(np.float32))
        return {k: np.asarray(v, np.float32 if k not in ("imgname", "gender") else None) for k, v in ann.items()}


def _camera_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild sensor noise and, sometimes, defocus blur."""
    import cv2

    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.normal(0, rng.uniform(0, 6), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# Driver

_WORKER: _Renderer | None = None


def _init_worker(cfg: SynthImagesConfig) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)
    _WORKER = _Renderer(cfg)


def _run_block(task: tuple[str, int, int]) -> tuple[str, int, dict]:
    split, a, b = task
    assert _WORKER is not None
    return split, a, _WORKER.block(split, a, b)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def write_synth_images(cfg: SynthImagesConfig, progress: bool = False) -> dict:
    """Render the dataset described by ``cfg`` (layout in the module docstring); returns the summary.

    Same config, same bytes of every annotation array and image, whatever ``workers``.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "synth_images.json"
    if marker.exists():
        marker.unlink()
    tasks = [(s, a, min(a + cfg.block, n)) for s, n in (("train", cfg.train), ("val", cfg.val))
             for a in range(0, n, cfg.block)]
    results: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train + cfg.val, unit="img", desc="synth images")
    if cfg.workers <= 1:
        _init_worker(cfg)
        it = map(_run_block, tasks)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,))
        it = pool.imap_unordered(_run_block, tasks)
    try:
        for split, a, ann in it:
            results[split][a] = ann
            if bar is not None:
                bar.update(len(ann["imgname"]))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    renderer = _WORKER if cfg.workers <= 1 else None
    files = {}
    for split, blocks in results.items():
        if not blocks:
            continue
        ann = {k: np.concatenate([blocks[a][k] for a in sorted(blocks)]) for k in blocks[min(blocks)]}
        path = out / f"{cfg.dataset}_{split}.npz"
        _save_npz(path, ann)
        files[split] = path.name
    flip = _vertex_flip(cfg, renderer)
    if flip is not None:
        atomic_write(out / "vertex_flip.npy", lambda f: np.save(f, flip))
    mixture = {"seed": cfg.seed, "datasets": [{"name": f"{cfg.dataset}_train", "shards": f"shards/{cfg.dataset}_train",
                                               "weight": 1.0}]}
    if flip is not None:
        mixture["vertex_flip"] = "vertex_flip.npy"
    import yaml

    atomic_write_text(out / "mixture.yaml", yaml.safe_dump(mixture, sort_keys=False))
    summary = {"config": asdict(cfg), "files": files, "counts": {"train": cfg.train, "val": cfg.val},
               "vertex_flip": flip is not None}
    atomic_write_text(marker, json.dumps(summary, indent=2))
    return summary


def _vertex_flip(cfg: SynthImagesConfig, renderer: _Renderer | None) -> np.ndarray | None:
    """The mirror map of the body model's zero-shape template (x across the body), or None."""
    from mpt_data.body import BodyModel, BodyModelConfig
    from mpt_data.topology import symmetric_vertex_map

    if renderer is not None:
        model = next(iter(renderer.models.values()))
    else:
        bcfg = BodyModelConfig(cfg.body_models, cfg.model_type)
        try:
            model = BodyModel.load(bcfg, "neutral")
        except FileNotFoundError:
            model = BodyModel.load(bcfg, "male")
    flip = symmetric_vertex_map(model.template())
    if flip is None or not np.array_equal(np.sort(flip), np.arange(len(flip))):
        return None
    return flip
