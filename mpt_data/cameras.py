"""Virtual cameras: Human3.6M subject 1's rig, interpolated rigs, projection and crops.

Frames. Human3.6M's world and AMASS's world are both z-up, metres. A ``Camera`` maps a
world point X to camera coordinates ``R @ X + t`` (x right, y down, z forward, metres) and
to pixels through the pinhole ``K`` (no lens distortion: the rig is virtual).

The four cameras are Human3.6M's subject-1 cameras 54138969, 55011271, 58860488 and
60457274 with the intrinsics (focal lengths, principal points, image sizes) and extrinsics
of the public Human3.6M camera metadata. That metadata gives each camera's orientation
as a camera-to-world quaternion (w, x, y, z) and its translation as the camera centre C in
world millimetres; here ``R = rot(q)^T`` and ``t = -R @ C / 1000``.

Placement. A root-centred mesh is put with its pelvis at ``SUBJECT_POSITION``: horizontally,
the point closest (least squares) to the four optical axes; vertically, a standing adult's
pelvis height ``PELVIS_HEIGHT_M`` above the floor (z = 0), so feet meet the floor.

Rigs (``camera_rig``): 4 = the four cameras in ring order (by azimuth around the subject);
8 = those four with one camera between each neighbouring pair: rotation by quaternion slerp
at the midpoint, position midway along the ring (mean distance from the subject, mean
height, mid azimuth on the shorter arc), intrinsics and image size averaged;
1 = 60457274 (Human3.6M's protocol-2 front camera); 2 = 60457274 and 54138969, which face
each other across the subject.

Crop rule (``person_crop``): the square centred on the bounding box of the projected mesh
vertices, with side ``CROP_MARGIN`` (1.2) times the longer bbox side; ``to_crop`` maps image
pixels into that square resampled to ``CROP_SIZE`` (224) pixels. A joint is visible when it
is in front of the camera and inside [0, 224) in crop pixels.

Face rule (``face_facing``): a face keypoint (nose, eyes, ears) is also not visible when it
faces away from the camera. With the head centre h = the ears' midpoint, keypoint p faces
camera centre c iff the angle between p - h (the keypoint's outward direction) and c - p
(the ray to the camera) has cosine >= ``FACE_FACING_MIN_COS`` (-0.2, about 102 degrees).
Seen from behind, the nose and eyes face away and are hidden while the ears (which point
sideways) stay visible; seen from the left side, the right eye and right ear are hidden.
``project_views`` applies it when given the face keypoints' rows (``face_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpt_data.conventions import COCO_FACE_KEYPOINTS
from mpt_data.schema import CROP_SIZE

CROP_MARGIN = 1.2
FACE_FACING_MIN_COS: float = -0.2
PELVIS_HEIGHT_M = 0.9
RIG_SIZES: tuple[int, ...] = (1, 2, 4, 8)


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera.

    name: identifier (Human3.6M id, or "a+b" for one interpolated between a and b).
    K: (3, 3) intrinsics in pixels. R: (3, 3) world -> camera rotation.
    t: (3,) world -> camera translation, metres. image_size: (width, height) pixels.
    """

    name: str
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    image_size: tuple[int, int]

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world metres."""
        return -self.R.T @ self.t


# Public Human3.6M metadata, subject 1: id, focal (fx, fy), centre (cx, cy), size (w, h),
# camera-to-world quaternion (w, x, y, z), camera centre in world millimetres.
_H36M_S1 = (
    ("54138969", (1145.0494384765625, 1143.7811279296875), (512.54150390625, 515.4514770507812), (1000, 1002),
     (0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
     (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
    ("55011271", (1149.6756591796875, 1147.5916748046875), (508.8486328125, 508.0649108886719), (1000, 1000),
     (0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
     (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
    ("58860488", (1149.1407470703125, 1148.7989501953125), (519.8158569335938, 501.40264892578125), (1000, 1000),
     (0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
     (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
    ("60457274", (1145.5113525390625, 1144.77392578125), (514.9682006835938, 501.88201904296875), (1000, 1002),
     (0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
     (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
)
FRONT_CAMERA = "60457274"
BACK_CAMERA = "54138969"


# ---------------------------------------------------------------------------------------
# Rotations


def look_at_rotation(centre: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0),
                     roll_deg: float = 0.0) -> np.ndarray:
    """(3, 3) world -> camera rotation of a camera at ``centre`` looking at ``target`` (world metres).

    Camera z (forward) points from centre to target; camera y (down) is -``up`` made orthogonal
    to z, so ``up`` appears upwards in the image; x = y cross z (right). ``roll_deg`` then turns
    the camera about its optical axis: positive turns it clockwise seen from behind the camera
    (its x axis towards its y axis), so the scene appears turned counter-clockwise in the image.
    Raises ValueError when centre == target or ``up`` is parallel to the view.
    """
    forward = np.asarray(target, np.float64) - np.asarray(centre, np.float64)
    norm = np.linalg.norm(forward)
    if not norm > 1e-9:
        raise ValueError("the camera centre and the look-at point coincide")
    z = forward / norm
    up = np.asarray(up, np.float64)
    down = -(up - (up @ z) * z)
    dn = np.linalg.norm(down)
    if not dn > 1e-6 * max(np.linalg.norm(up), 1e-12):
        raise ValueError("the up vector is parallel to the viewing direction")
    y = down / dn
    x = np.cross(y, z)
    a = np.deg2rad(roll_deg)
    xr = np.cos(a) * x + np.sin(a) * y
    yr = -np.sin(a) * x + np.cos(a) * y
    return np.stack([xr, yr, z])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    m = np.asarray(m, np.float64)
    # The largest of the four squared components gives a well-conditioned division.
    tr = np.trace(m)
    cands = np.array([1 + tr, 1 + m[0, 0] - m[1, 1] - m[2, 2], 1 - m[0, 0] + m[1, 1] - m[2, 2],
                      1 - m[0, 0] - m[1, 1] + m[2, 2]])
    i = int(np.argmax(cands))
    s = 2.0 * np.sqrt(cands[i])
    if i == 0:
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (w, x, y, z) at u in [0, 1], along the
    shorter arc; returns a unit quaternion."""
    q0 = np.asarray(q0, np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, np.float64) / np.linalg.norm(q1)
    dot = float(q0 @ q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 1 - 1e-12:
        q = q0 + u * (q1 - q0)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - u) * theta) * q0 + np.sin(u * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


# ---------------------------------------------------------------------------------------
# The rig


def h36m_s1_cameras() -> list[Camera]:
    """Human3.6M subject 1's four cameras, in the metadata's order (see module docstring)."""
    cams = []
    for name, f, c, size, q, centre_mm in _H36M_S1:
        K = np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])
        R = quat_to_matrix(np.array(q)).T
        t = -R @ (np.array(centre_mm) / 1000.0)
        cams.append(Camera(name=name, K=K, R=R, t=t, image_size=(int(size[0]), int(size[1]))))
    return cams


def _axes_meeting_point(cams: Sequence[Camera]) -> np.ndarray:
    """(3,) least-squares point closest to the cameras' optical axes."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in cams:
        d = cam.R[2]  # optical axis (camera z) in world coordinates
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ cam.center
    return np.linalg.solve(a, b)


def subject_position(cams: Sequence[Camera] | None = None) -> np.ndarray:
    """(3,) world metres where the pelvis of a root-centred mesh is placed: the optical
    axes' meeting point horizontally, ``PELVIS_HEIGHT_M`` vertically."""
    p = _axes_meeting_point(h36m_s1_cameras() if cams is None else cams)
    return np.array([p[0], p[1], PELVIS_HEIGHT_M])


SUBJECT_POSITION = subject_position()


def _azimuth(cam: Camera, centre: np.ndarray) -> float:
    d = cam.center - centre
    return float(np.arctan2(d[1], d[0]))


def ring_order(cams: Sequence[Camera], centre: np.ndarray = SUBJECT_POSITION) -> list[Camera]:
    """Cameras sorted by azimuth around ``centre`` (counter-clockwise seen from above)."""
    return sorted(cams, key=lambda c: _azimuth(c, centre))


def interpolate_cameras(a: Camera, b: Camera, u: float = 0.5, centre: np.ndarray = SUBJECT_POSITION) -> Camera:
    """A camera a fraction ``u`` of the way from ``a`` to ``b`` around ``centre``: rotation by
    slerp, position along the ring (distance, height and azimuth interpolated, shorter
    arc), intrinsics and image size interpolated linearly."""
    qa, qb = matrix_to_quat(a.R), matrix_to_quat(b.R)
    R = quat_to_matrix(slerp(qa, qb, u))
    da, db = a.center - centre, b.center - centre
    ra, rb = np.hypot(da[0], da[1]), np.hypot(db[0], db[1])
    aa, ab = np.arctan2(da[1], da[0]), np.arctan2(db[1], db[0])
    delta = (ab - aa + np.pi) % (2 * np.pi) - np.pi
    ang = aa + u * delta
    r = (1 - u) * ra + u * rb
    z = (1 - u) * da[2] + u * db[2]
    c = centre + np.array([r * np.cos(ang), r * np.sin(ang), z])
    K = (1 - u) * a.K + u * b.K
    size = tuple(int(round((1 - u) * sa + u * sb)) for sa, sb in zip(a.image_size, b.image_size))
    return Camera(name=f"{a.name}+{b.name}", K=K, R=R, t=-R @ c, image_size=(size[0], size[1]))


def camera_rig(n: int) -> list[Camera]:
    """The virtual rig of ``n`` cameras, n in ``RIG_SIZES`` (1, 2, 4, 8; see module docstring)."""
    if n not in RIG_SIZES:
        raise ValueError(f"--cameras must be one of {RIG_SIZES}, got {n}")
    by_name = {c.name: c for c in h36m_s1_cameras()}
    if n == 1:
        return [by_name[FRONT_CAMERA]]
    if n == 2:
        return [by_name[FRONT_CAMERA], by_name[BACK_CAMERA]]
    ring = ring_order(list(by_name.values()))
    if n == 4:
        return ring
    out = []
    for i, cam in enumerate(ring):
        out += [cam, interpolate_cameras(cam, ring[(i + 1) % len(ring)])]
    return out


def stack_cameras(cams: Sequence[Camera]) -> dict[str, np.ndarray]:
    """The rig as arrays for the store: ``name`` (C,) str, ``K`` (C, 3, 3), ``R`` (C, 3, 3),
    ``t`` (C, 3) float32 and ``image_size`` (C, 2) int32 (width, height)."""
    return {
        "name": np.array([c.name for c in cams]),
        "K": np.stack([c.K for c in cams]).astype(np.float32),
        "R": np.stack([c.R for c in cams]).astype(np.float32),
        "t": np.stack([c.t for c in cams]).astype(np.float32),
        "image_size": np.array([c.image_size for c in cams], dtype=np.int32),
    }


# ---------------------------------------------------------------------------------------
# Projection and crops


def project(points_world: np.ndarray, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Perspective projection. points_world: (..., N, 3) world metres.

    Returns uv (..., N, 2) image pixels and depth (..., N) metres along the optical axis
    (<= 0 behind the camera, where uv is meaningless), float32.
    """
    p = np.asarray(points_world, np.float32)
    R = cam.R.astype(np.float32)
    pc = p @ R.T + cam.t.astype(np.float32)
    z = pc[..., 2]
    safe = np.where(np.abs(z) < 1e-9, np.float32(1e-9), z)
    xy = pc[..., :2] / safe[..., None]
    K = cam.K.astype(np.float32)
    uv = xy @ K[:2, :2].T + K[:2, 2]
    return uv, z


def person_crop(vertices_uv: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """Square crop around projected vertices. vertices_uv: (..., N, 2) pixels.

    Returns (..., 3) float32 ``(x0, y0, side)``: the top-left corner and side in image
    pixels of the square centred on the points' bounding box with side ``margin`` times
    its longer edge.
    """
    uv = np.asarray(vertices_uv)
    lo = uv.min(axis=-2)
    hi = uv.max(axis=-2)
    centre = (lo + hi) / 2
    side = margin * np.max(hi - lo, axis=-1)
    side = np.maximum(side, 1e-6)
    return np.concatenate([centre - side[..., None] / 2, side[..., None]], axis=-1).astype(np.float32)


def to_crop(uv: np.ndarray, crop: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Image pixels (..., N, 2) -> crop pixels in [0, size) for crops (..., 3)."""
    crop = np.asarray(crop, np.float32)
    return ((np.asarray(uv, np.float32) - crop[..., None, :2]) * (size / crop[..., None, 2:3])).astype(np.float32)


def from_crop(uv_crop: np.ndarray, crop: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Inverse of ``to_crop``: crop pixels (..., N, 2) -> image pixels."""
    crop = np.asarray(crop, np.float32)
    return (np.asarray(uv_crop, np.float32) * (crop[..., None, 2:3] / size) + crop[..., None, :2]).astype(np.float32)


def face_facing(face_points: np.ndarray, camera_centres: np.ndarray) -> np.ndarray:
    """Which face keypoints face the camera (see the module docstring's face rule).

    face_points: (..., 5, 3) world metres in ``COCO_FACE_KEYPOINTS`` order (nose, left eye,
    right eye, left ear, right ear). camera_centres: world metres, broadcastable to (..., 3).
    Returns (..., 5) bool: dot(p - h, c - p) >= FACE_FACING_MIN_COS * |p - h| * |c - p| with
    h the ears' midpoint (a keypoint at h counts as facing). Computed in float64.
    """
    p = np.asarray(face_points, np.float64)
    c = np.asarray(camera_centres, np.float64)[..., None, :]
    h = (p[..., 3:4, :] + p[..., 4:5, :]) / 2
    out = p - h
    ray = c - p
    dot = (out * ray).sum(-1)
    return dot >= FACE_FACING_MIN_COS * np.linalg.norm(out, axis=-1) * np.linalg.norm(ray, axis=-1)


def face_rows(joint_names: Sequence[str]) -> tuple[int, ...] | None:
    """Rows of the face keypoints (``COCO_FACE_KEYPOINTS`` order) in a joint set's names, or
    None when the set has no face (HAND-21, for example)."""
    names = list(joint_names)
    if not all(k in names for k in COCO_FACE_KEYPOINTS):
        return None
    return tuple(names.index(k) for k in COCO_FACE_KEYPOINTS)


def visibility(uv_crop: np.ndarray, depth: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(..., N) bool: in front of the camera and inside [0, size) in crop pixels."""
    inside = (uv_crop >= 0).all(-1) & (uv_crop < size).all(-1)
    return inside & (np.asarray(depth) > 0)


@dataclass(frozen=True, eq=False)
class Views:
    """2D data of B meshes seen by C cameras.

    joints2d: (B, C, K, 2) float32 crop pixels. visible: (B, C, K) bool.
    crop: (B, C, 3) float32 (x0, y0, side) in image pixels. depth: (B, C, K) float32 metres.
    """

    joints2d: np.ndarray
    visible: np.ndarray
    crop: np.ndarray
    depth: np.ndarray


def project_views(
    joints: np.ndarray,
    vertices: np.ndarray,
    cams: Sequence[Camera],
    position: np.ndarray = SUBJECT_POSITION,
    chunk: int = 8,
    face_rows: Sequence[int] | None = None,
) -> Views:
    """Project root-centred meshes through a rig.

    joints: (B, K, 3) and vertices: (B, V, 3), root-centred, world axes, metres; each mesh
    is placed with its root at ``position`` (world metres). The crop of each (mesh,
    camera) comes from all of its vertices (``person_crop``); joints go to crop pixels.
    Same numbers as ``project`` + ``person_crop`` + ``to_crop`` per camera, computed for all
    cameras at once: X -> K (R (X + position) + t) is one (3C, 3) matrix and offset.
    face_rows: the 5 rows of ``joints`` holding the face keypoints in ``COCO_FACE_KEYPOINTS``
    order; a face keypoint that does not face its camera (``face_facing``) is not visible.
    """
    joints = np.asarray(joints, np.float32)
    vertices = np.asarray(vertices, np.float32)
    b, k = joints.shape[:2]
    c = len(cams)
    pos = np.asarray(position, np.float64)
    m = np.concatenate([cam.K @ cam.R for cam in cams]).astype(np.float32)  # (3C, 3)
    off = np.concatenate([cam.K @ (cam.R @ pos + cam.t) for cam in cams]).astype(np.float32)  # (3C,)
    crops = np.empty((b, c, 3), np.float32)
    for s in range(0, b, chunk):
        v = vertices[s: s + chunk]
        n, nv = v.shape[:2]
        # (C, 3, n, V): reductions over the last, contiguous axis are the fast ones.
        h = (m @ v.reshape(-1, 3).T + off[:, None]).reshape(c, 3, n, nv)
        z = h[:, 2]
        u = h[:, 0] / z
        w = h[:, 1] / z
        lo = np.stack([u.min(-1), w.min(-1)], -1).transpose(1, 0, 2)  # (n, C, 2)
        hi = np.stack([u.max(-1), w.max(-1)], -1).transpose(1, 0, 2)
        centre = (lo + hi) / 2
        side = np.maximum(CROP_MARGIN * (hi - lo).max(-1), 1e-6)
        crops[s: s + chunk, :, :2] = centre - side[..., None] / 2
        crops[s: s + chunk, :, 2] = side
    hj = (joints.reshape(-1, 3) @ m.T + off).reshape(b, k, c, 3).transpose(0, 2, 1, 3)  # (B, C, K, 3)
    depth = np.ascontiguousarray(hj[..., 2])
    safe = np.where(np.abs(depth) < 1e-9, np.float32(1e-9), depth)
    juv = hj[..., :2] / safe[..., None]
    j2d = ((juv - crops[:, :, None, :2]) * (CROP_SIZE / crops[:, :, None, 2:3])).astype(np.float32)
    visible = visibility(j2d, depth)
    if face_rows is not None:
        rows = np.asarray(face_rows, np.int64)
        if rows.shape != (len(COCO_FACE_KEYPOINTS),):
            raise ValueError(f"face_rows must hold {len(COCO_FACE_KEYPOINTS)} joint rows, got {rows.tolist()}")
        centres = np.stack([cam.center for cam in cams])  # (C, 3)
        face = joints[:, rows].astype(np.float64) + pos  # (B, 5, 3) world
        visible[:, :, rows] &= face_facing(face[:, None], centres[None])
    return Views(joints2d=j2d, visible=visible, crop=crops, depth=depth.astype(np.float32))
