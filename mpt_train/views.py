"""On-device views: project the store's 3D meshes through any camera, and random virtual cameras.

Everything here is a pure, batched torch function: the same code on CUDA and on the CPU.

Frames and units. Joints (B, K, 3) and vertices (B, V, 3) come from the store root-centred, in
world (body) axes, metres (z up). A mesh is placed with its root at ``position`` (world metres:
the rig's subject position for a store's own cameras, the origin for random cameras). A camera
maps a world point X to camera coordinates ``R X + t`` (x right, y down, z forward, metres) and
to image pixels through the pinhole ``K``. This is the rule of :mod:`mpt_data.cameras`, so a
store's own cameras reproduce its stored ``views/*`` (``tests/test_views.py``):

* crop: the square centred on the bounding box of the projected vertices, side
  ``CROP_MARGIN`` (1.2) times the longer bbox edge, (x0, y0, side) in image pixels;
* joints2d: image pixels -> crop pixels in [0, ``CROP_SIZE``) (224) of that square;
* visible: in front of the camera (depth > 0), inside [0, 224) in crop pixels and, for COCO-17
  heatmaps, not a face keypoint turned away from the camera (:func:`face_facing`, the rule of
  ``mpt_data.cameras.face_facing`` with ``FACE_FACING_MIN_COS``).

The 3D targets of a view are the root-centred joints and vertices rotated into its camera's
axes (``mpt_train.inputs.to_camera_frame`` with that camera's R), as for the stored views.

Random cameras (:class:`CameraDistribution`, :func:`draw_cameras`). Each sample's camera is a
pure function of its integer key (``mpt_train.inputs.key_uniform`` on streams of its own):
the same camera on every call, on any device (within float rounding), in any batch, and after a
resume. The body's root is at the origin; the camera

* looks at a point drawn uniformly in a cube of half-side ``look_at_jitter_m`` (0.15 m) around
  the root (the pelvis, the body's centre);
* sits at distance d ~ U[``distance_m``] (2-10 m) from that point, at azimuth ~ U[0, 360)
  degrees around the vertical and elevation ~ U[``elevation_deg``] (-10 to 60 degrees: a little
  below eye level to overhead) above the horizontal;
* is rolled about its optical axis by ~ U[-``roll_deg``, ``roll_deg``] (10 degrees);
* has focal length f ~ log-uniform in ``focal_mm`` (35-135 mm equivalent on a 36 mm-wide
  sensor), f_px = f_mm / 36 * image width, fx = fy, and principal point at the image centre
  plus ~ U[-``principal_jitter``, +``principal_jitter``] (3 %) of the image width/height.

The crop rule normalises away the image-plane scale and offset, so focal length and principal
point do not change a view's crop-pixel joints (they are drawn for a complete camera and for
crops an image would clip); distance (perspective strength), direction, roll and the
look-at offset do.

Whole body in view, by construction: a vertex X has depth (X - C) . f >= d - |X| - |a|
(C camera centre, f its unit optical axis, a the look-at point, root at 0). With d >= 2 m,
|a| <= sqrt(3) * 0.15 = 0.26 m and any human mesh within 1.4 m of its pelvis (arms raised),
every depth is > 0.3 m; the crop is then built around all projected vertices, so every vertex
lies inside [0, 224) crop pixels (the 1.2 margin keeps the extreme ones 1/12 of the side away
from the border). No sample is redrawn. :class:`CameraDistribution` refuses a minimum
distance below ``MIN_DISTANCE_M`` (2 m).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mpt_data import conventions as cv
from mpt_data.cameras import CROP_MARGIN, FACE_FACING_MIN_COS
from mpt_data.schema import CROP_SIZE

from .inputs import key_uniform

# Streams of the per-sample hash for the camera draw (mpt_train.inputs uses 1-3 and 1001-1003).
_STREAM_CAMERA = 41
MIN_DISTANCE_M = 2.0
SENSOR_WIDTH_MM = 36.0
# Rows of the face keypoints in COCO-17, in conventions.COCO_FACE_KEYPOINTS order.
COCO_FACE_ROWS: tuple[int, ...] = tuple(cv.COCO_JOINTS.index(k) for k in cv.COCO_FACE_KEYPOINTS)


class CameraError(ValueError):
    """A bad camera distribution (names the file or flag and the field)."""


# ----------------------------------------------------------------------------------------
# Projection, crop and visibility.


class ViewBatch(NamedTuple):
    """B samples seen by one camera each.

    joints2d (B, K, 2) float32 crop pixels; visible (B, K) bool; crop (B, 3) float32
    (x0, y0, side) image pixels; depth (B, K) float32 metres along the optical axis;
    camera_R (B, 3, 3) float32 world -> camera rotation (for the 3D targets).
    """

    joints2d: torch.Tensor
    visible: torch.Tensor
    crop: torch.Tensor
    depth: torch.Tensor
    camera_R: torch.Tensor


def _affine(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, position: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, 3) M = K R and (B, 3) offset K (R p + t): X (root-centred) -> homogeneous pixels
    M X + offset. Composed in float64 (as the store's builder does), returned float32."""
    k, r = K.double(), R.double()
    p = position.double().expand(K.shape[0], 3)
    m = k @ r
    off = (k @ ((r @ p[..., None])[..., 0] + t.double())[..., None])[..., 0]
    return m.float(), off.float()


def face_facing(face_points: torch.Tensor, camera_centres: torch.Tensor,
                min_cos: float = FACE_FACING_MIN_COS) -> torch.Tensor:
    """(..., 5) bool: which face keypoints face their camera.

    face_points (..., 5, 3) world metres in ``conventions.COCO_FACE_KEYPOINTS`` order (nose,
    left_eye, right_eye, left_ear, right_ear); camera_centres broadcastable to (..., 3) world
    metres. With the head centre h = (left_ear + right_ear) / 2, keypoint p faces camera c iff
    dot(p - h, c - p) >= min_cos * |p - h| * |c - p| (a zero-length p - h counts as facing):
    the rule of ``mpt_data.cameras.face_facing``.
    """
    h = (face_points[..., 3, :] + face_points[..., 4, :]) / 2
    out = face_points - h[..., None, :]
    to_cam = camera_centres[..., None, :] - face_points
    dot = (out * to_cam).sum(-1)
    return dot >= min_cos * out.norm(dim=-1) * to_cam.norm(dim=-1)


def project_batch(joints: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                  t: torch.Tensor, position: torch.Tensor | None = None,
                  face_rows: tuple[int, ...] | None = None) -> ViewBatch:
    """Project each sample's mesh through its own camera, with the store's crop and visibility rules.

    joints (B, K, 3), vertices (B, V, 3): root-centred, world axes, metres. K (B, 3, 3)
    intrinsics (pixels); R (B, 3, 3), t (B, 3) world -> camera (metres). position (3,) or
    (B, 3): where the root is placed, world metres (default the origin). face_rows: the rows
    of the joints that are the face keypoints in ``COCO_FACE_KEYPOINTS`` order (``COCO_FACE_ROWS``
    for COCO-17 heatmaps), None for joint sets without a face rule.

    Cost: the vertices go through one batched (B, V, 3) x (B, 3, 3) matmul and a min/max; the
    crop is the bounding box of all projected vertices, as at build time.
    """
    dev = joints.device
    pos = torch.zeros(3, device=dev) if position is None else position.to(dev, torch.float32)
    m, off = _affine(K.to(dev), R.to(dev), t.to(dev), pos)
    hv = torch.baddbmm(off[:, None, :], vertices.float(), m.transpose(1, 2))  # (B, V, 3)
    uv = hv[..., :2] / hv[..., 2:3]
    lo = uv.amin(1)
    hi = uv.amax(1)
    centre = (lo + hi) / 2
    side = torch.clamp(CROP_MARGIN * (hi - lo).amax(-1), min=1e-6)
    crop = torch.cat([centre - side[:, None] / 2, side[:, None]], -1)
    hj = torch.baddbmm(off[:, None, :], joints.float(), m.transpose(1, 2))  # (B, K, 3)
    depth = hj[..., 2]
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    juv = hj[..., :2] / safe[..., None]
    j2d = (juv - crop[:, None, :2]) * (CROP_SIZE / crop[:, None, 2:3])
    visible = (j2d >= 0).all(-1) & (j2d < CROP_SIZE).all(-1) & (depth > 0)
    if face_rows is not None:
        r = R.to(dev).float()
        centres = -(r.transpose(1, 2) @ t.to(dev).float()[..., None])[..., 0]  # (B, 3)
        face = joints[:, list(face_rows)].float() + pos.expand(joints.shape[0], 3)[:, None, :]
        visible[:, list(face_rows)] &= face_facing(face, centres)
    return ViewBatch(joints2d=j2d, visible=visible, crop=crop, depth=depth, camera_R=R.to(dev).float())


# ----------------------------------------------------------------------------------------
# Random cameras.


@dataclass(frozen=True)
class CameraDistribution:
    """Ranges of the random virtual cameras (see the module docstring for the draw).

    Angles in degrees, lengths in metres, focal lengths in mm on a 36 mm-wide sensor; every
    (lo, hi) range is drawn uniformly (the focal length log-uniformly). image_size (width,
    height) pixels; principal_jitter: fraction of the image size.
    """

    elevation_deg: tuple[float, float] = (-10.0, 60.0)
    distance_m: tuple[float, float] = (2.0, 10.0)
    focal_mm: tuple[float, float] = (35.0, 135.0)
    roll_deg: float = 10.0
    principal_jitter: float = 0.03
    look_at_jitter_m: float = 0.15
    image_size: tuple[int, int] = (1000, 1000)

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> CameraError:
            return CameraError(f"camera distribution: {field} {getattr(self, field)!r}: {why}")

        for name in ("elevation_deg", "distance_m", "focal_mm", "image_size"):
            v = getattr(self, name)
            if len(v) != 2 or not all(math.isfinite(float(x)) for x in v) or float(v[0]) > float(v[1]):
                raise bad(name, "expected [lo, hi] with lo <= hi")
        if not -89.0 <= self.elevation_deg[0] <= self.elevation_deg[1] <= 89.0:
            raise bad("elevation_deg", "must lie within [-89, 89] degrees (the camera's up is the world's z)")
        if self.distance_m[0] < MIN_DISTANCE_M:
            raise bad("distance_m", f"the nearest camera must be >= {MIN_DISTANCE_M} m away, so the whole body "
                                    "is in front of it")
        if self.focal_mm[0] <= 0:
            raise bad("focal_mm", "must be > 0")
        if self.image_size[0] < 1:
            raise bad("image_size", "must be >= 1 pixel")
        for name, hi in (("roll_deg", 90.0), ("principal_jitter", 0.5), ("look_at_jitter_m", 0.3)):
            if not 0.0 <= float(getattr(self, name)) <= hi:
                raise bad(name, f"must be in [0, {hi}]")

    @staticmethod
    def photographs(**overrides: Any) -> "CameraDistribution":
        """The default: ordinary photographs, eye level to overhead, 2-10 m, 35-135 mm."""
        return replace(CameraDistribution(), **overrides)

    @staticmethod
    def eye_level(**overrides: Any) -> "CameraDistribution":
        """Cameras near eye level (-10 to 20 degrees), 3-6 m, 35-85 mm: close to a studio rig's."""
        return replace(CameraDistribution(elevation_deg=(-10.0, 20.0), distance_m=(3.0, 6.0),
                                          focal_mm=(35.0, 85.0)), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(data: Any, where: str = "camera distribution") -> "CameraDistribution":
        """From a mapping of this class's fields (ranges as 2-lists); unknown or bad fields are
        refused naming ``where`` and the field."""
        if not isinstance(data, dict):
            raise CameraError(f"{where}: expected a mapping of {[f.name for f in fields(CameraDistribution)]}")
        names = {f.name for f in fields(CameraDistribution)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CameraError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(names)}")
        kw: dict[str, Any] = {}
        for k, v in data.items():
            try:
                if k in ("elevation_deg", "distance_m", "focal_mm"):
                    kw[k] = tuple(float(x) for x in v)
                elif k == "image_size":
                    kw[k] = tuple(int(x) for x in v)
                else:
                    kw[k] = float(v)
            except (TypeError, ValueError) as exc:
                raise CameraError(f"{where}: field {k}: {v!r} is not a number or a [lo, hi] pair") from exc
        try:
            return CameraDistribution(**kw)
        except CameraError as exc:
            raise CameraError(f"{where}: {exc}") from exc

    @staticmethod
    def load(path: str | Path) -> "CameraDistribution":
        """From a small YAML file holding some of the fields, e.g. ``distance_m: [3, 8]``."""
        import yaml

        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise CameraError(f"{path}: not valid YAML: {exc}") from exc
        return CameraDistribution.from_dict(data, where=str(path))


def look_at_rotation(centre: torch.Tensor, target: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) world -> camera rotations of cameras at ``centre`` (B, 3) looking at ``target``
    (B, 3), world z up, rolled by ``roll`` (B,) radians about the optical axis. Rows: camera x
    (right), y (down), z (forward) in world axes. The view direction must not be vertical."""
    f = target - centre
    f = f / f.norm(dim=-1, keepdim=True)
    up = torch.zeros_like(f)
    up[:, 2] = 1.0
    right = torch.linalg.cross(f, up)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(f, right)
    c, s = torch.cos(roll)[:, None], torch.sin(roll)[:, None]
    x = c * right + s * down
    y = -s * right + c * down
    return torch.stack([x, y, f], dim=1)


def draw_cameras(keys: torch.Tensor, dist: CameraDistribution) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random camera per sample key: K (B, 3, 3) pixels, R (B, 3, 3), t (B, 3) metres.

    keys (B,) int64 sample keys. World frame: the body's root at the origin, z up. A pure
    function of (key, dist) computed on the keys' device (see the module docstring).
    """
    u = key_uniform(keys, _STREAM_CAMERA, 9).double()
    d2r = math.pi / 180.0
    az = 2.0 * math.pi * u[:, 0]
    el = (dist.elevation_deg[0] + (dist.elevation_deg[1] - dist.elevation_deg[0]) * u[:, 1]) * d2r
    d = dist.distance_m[0] + (dist.distance_m[1] - dist.distance_m[0]) * u[:, 2]
    lf = math.log(dist.focal_mm[0]) + (math.log(dist.focal_mm[1]) - math.log(dist.focal_mm[0])) * u[:, 3]
    roll = (2.0 * u[:, 4] - 1.0) * dist.roll_deg * d2r
    pp = (2.0 * u[:, 5:7] - 1.0) * dist.principal_jitter
    target = (2.0 * u[:, 7:9] - 1.0) * dist.look_at_jitter_m
    target = torch.cat([target, ((2.0 * key_uniform(keys, _STREAM_CAMERA + 1, 1).double() - 1.0)
                                 * dist.look_at_jitter_m)], -1)
    direction = torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    centre = target + d[:, None] * direction
    R = look_at_rotation(centre, target, roll)
    t = -(R @ centre[..., None])[..., 0]
    w, h = dist.image_size
    f_px = torch.exp(lf) / SENSOR_WIDTH_MM * w
    K = torch.zeros(len(keys), 3, 3, dtype=torch.float64, device=keys.device)
    K[:, 0, 0] = f_px
    K[:, 1, 1] = f_px
    K[:, 0, 2] = w / 2.0 + pp[:, 0] * w
    K[:, 1, 2] = h / 2.0 + pp[:, 1] * h
    K[:, 2, 2] = 1.0
    return K.float(), R.float(), t.float()


def heatmap_joints_key(loader_joint_set: str, heatmap_joint_set: str) -> str:
    """The batch field holding the heatmap joint set's 3D joints: ``joints3d`` when the loader's
    joint set is the heatmap set, else ``joints3d_<heatmap set>`` (an extra joint set)."""
    return "joints3d" if loader_joint_set == heatmap_joint_set else f"joints3d_{heatmap_joint_set}"


def random_views(batch: dict[str, torch.Tensor], dist: CameraDistribution, heatmap_joint_set: str,
                 device: torch.device | str, joints_key: str | None = None) -> dict[str, torch.Tensor]:
    """A loader batch with its stored view replaced by one random camera per sample key.

    Needs ``key``, ``vertices`` and the heatmap joint set's 3D joints in ``joints_key`` (see
    :func:`heatmap_joints_key`; default ``joints3d_<heatmap set>``). Returns a new dict
    (the other fields as they were) with joints2d, visible and camera_R on ``device``, so
    ``mpt_train.inputs.prepare_batch`` makes the heatmaps and camera-frame targets of that view.
    """
    dev = torch.device(device)
    nb = dev.type == "cuda"
    name = joints_key or f"joints3d_{heatmap_joint_set}"
    if name not in batch:
        raise KeyError(f"random cameras need the heatmap joints {name!r} in the batch (loader extra_joint_sets)")
    if "vertices" not in batch:
        raise KeyError("random cameras need the vertices in the batch (LoaderConfig.vertices)")
    keys = batch["key"].to(dev, non_blocking=nb)
    K, R, t = draw_cameras(keys, dist)
    v = project_batch(batch[name].to(dev, non_blocking=nb), batch["vertices"].to(dev, non_blocking=nb), K, R, t,
                      face_rows=COCO_FACE_ROWS if heatmap_joint_set == "coco17" else None)
    out = dict(batch)
    out.update(joints2d=v.joints2d, visible=v.visible, camera_R=v.camera_R)
    return out


def rig_views(batch: dict[str, torch.Tensor], K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
              position: torch.Tensor, heatmap_joint_set: str, device: torch.device | str,
              joints_key: str | None = None) -> dict[str, torch.Tensor]:
    """A loader batch seen by one fixed camera (K (3, 3), R (3, 3), t (3,)) with the mesh's root at
    ``position`` (3,) world metres: the batch with joints2d, visible and camera_R of that view
    (heatmap joints in ``joints_key`` as for :func:`random_views`)."""
    dev = torch.device(device)
    j = batch[joints_key or f"joints3d_{heatmap_joint_set}"].to(dev)
    b = j.shape[0]
    ex = [x.to(dev, torch.float32).expand(b, *x.shape) for x in (K, R, t)]
    v = project_batch(j, batch["vertices"].to(dev), *ex, position=position.to(dev),
                      face_rows=COCO_FACE_ROWS if heatmap_joint_set == "coco17" else None)
    out = dict(batch)
    out.update(joints2d=v.joints2d, visible=v.visible, camera_R=v.camera_R)
    return out
