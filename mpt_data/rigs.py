"""Camera rigs: the cameras a store's meshes are seen by, as data (built in, or a YAML file).

A ``Rig`` is a name, a tuple of ``cameras.Camera`` and the ``subject_position``: the world point
(metres, z up) where the root of a root-centred mesh is placed before it is projected.

Built-in rigs:

* ``standard_rig(n)``, n in 1, 2, 4, 8: Human3.6M subject 1's rig (``cameras.camera_rig``),
  subject at ``cameras.SUBJECT_POSITION``. What ``--cameras n`` builds without ``--rig``.
* ``sphere_rig(n)``, n in 1..64: n cameras on a Fibonacci sphere of radius ``HAND_DISTANCE_M``
  around the origin, each looking at the origin (where the subject, a wrist-rooted hand, is),
  with focal length ``HAND_FOCAL_PX`` and 224 x 224 images: a 0.2 m hand at 0.6 m spans about
  0.2 * 550 / 0.6 = 183 px, as in FreiHAND's 224 px crops (focal lengths about 450-650 px at
  0.5-0.7 m). The image's up is world +z, or world +y for cameras within 30 degrees of a pole,
  so no camera's up is (nearly) parallel to its viewing direction.

Rig files (``load_rig``, ``save_rig``; ``pipelines/rigs/*.yaml`` ship with the package)::

    name: elevated-ring                 # any string
    subject_position: [0.0, 0.0, 0.9]   # metres, world (z up): where the mesh root is placed
    min_distance_m: 0.5                 # optional (default 0.5): a camera closer than this to the
                                        # subject position is refused (inside the body)
    cameras:
      - name: cam0                      # a string (numbers are read as strings)
        image_size: [1000, 1000]        # width, height in pixels (> 0)
        # intrinsics: either K (3x3, last row [0, 0, 1], K[1][0] = 0, focal > 0) ...
        K: [[1145.0, 0.0, 500.0], [0.0, 1145.0, 500.0], [0.0, 0.0, 1.0]]
        # ... or focal: [fx, fy] + principal_point: [cx, cy]
        # extrinsics: either R (3x3 world -> camera rotation) + t (3, metres): x_cam = R x + t ...
        R: [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
        t: [0.0, 0.9, 4.0]
        # ... or centre (3, world metres) + look_at (3) [+ up (3, default [0, 0, 1]),
        # roll_deg (default 0)]: see cameras.look_at_rotation

Camera axes: x right, y down, z forward (the optical axis). Every error is a ``RigError`` whose
message names the file and the field, for example ``rigs/x.yaml: cameras[2].K: singular
intrinsics (det 0)``. A camera is refused when K is singular or has a focal length <= 0, R is
not a rotation (orthonormal with det +1 within 1e-4), the image size is not positive, a number
is not finite, the camera centre is closer than ``min_distance_m`` to the subject position, or
the subject position is not in front of it (depth <= 0).

``save_rig`` writes the canonical form (K, R, t, every float at full precision), so
``load_rig(save_rig(rig))`` gives back the same float64 numbers; ``rig_digest`` is the SHA-256 of
the content that decides a store's numbers (camera names, image sizes, K, R, t, subject
position; not the rig's name or ``min_distance_m``), the part of a recipe's hash a rig adds.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpt_data.cameras import RIG_SIZES, SUBJECT_POSITION, Camera, camera_rig, look_at_rotation
from mpt_data.fileio import atomic_write_bytes

DEFAULT_MIN_DISTANCE_M = 0.5  # body rigs: a camera nearer than this to the subject is inside the body
HAND_DISTANCE_M = 0.6  # sphere rig: camera distance from the hand (FreiHAND: about 0.5-0.7 m)
HAND_FOCAL_PX = 550.0  # sphere rig: focal length in pixels for 224 px images (FreiHAND: about 450-650 px)
HAND_MIN_DISTANCE_M = 0.1
HAND_IMAGE_SIZE = (224, 224)
SPHERE_MAX_CAMERAS = 64
ROTATION_TOLERANCE = 1e-4
BUILTIN_RIGS = ("h36m", "sphere")
RIGS_PACKAGE = "mpt_data.pipelines"  # pipelines/ installed as a package; rigs lie in its rigs/ folder
RIGS_FOLDER = "rigs"
RIG_SUFFIXES = (".yaml", ".yml")
_POLE_COS = math.cos(math.radians(30.0))  # sphere rig: within 30 degrees of a pole, up = world +y


class RigError(ValueError):
    """A rig file or rig name that cannot work; the message names the file and the field."""


@dataclass(frozen=True, eq=False)
class Rig:
    """Cameras and where the subject stands.

    name: identifier. cameras: the cameras, in store order. subject_position: (3,) float64 world
    metres where a root-centred mesh's root is put. min_distance_m: the smallest allowed distance
    of a camera centre from the subject position (validation only).
    """

    name: str
    cameras: tuple[Camera, ...]
    subject_position: np.ndarray
    min_distance_m: float = DEFAULT_MIN_DISTANCE_M


# ---------------------------------------------------------------------------------------
# Built-in rigs


def standard_rig(n: int) -> Rig:
    """Human3.6M subject 1's rig of ``n`` cameras (n in 1, 2, 4, 8; ``cameras.camera_rig``)."""
    if n not in RIG_SIZES:
        raise RigError(f"rig h36m: cameras must be one of {RIG_SIZES}, got {n}")
    return Rig(name=f"h36m-{n}", cameras=tuple(camera_rig(n)), subject_position=SUBJECT_POSITION.copy())


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere: z = 1 - (2 i + 1) / n (never exactly a
    pole), azimuth i times the golden angle."""
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def sphere_rig(n: int, distance_m: float = HAND_DISTANCE_M, focal_px: float = HAND_FOCAL_PX,
               image_size: tuple[int, int] = HAND_IMAGE_SIZE) -> Rig:
    """``n`` cameras on a Fibonacci sphere of radius ``distance_m`` around the origin, each looking at
    the origin with focal ``focal_px`` and the principal point at the image centre; the subject is at
    the origin (see the module docstring for the up vector)."""
    if not 1 <= n <= SPHERE_MAX_CAMERAS:
        raise RigError(f"rig sphere: cameras must be in 1..{SPHERE_MAX_CAMERAS}, got {n}")
    if not (distance_m > HAND_MIN_DISTANCE_M and focal_px > 0):
        raise RigError(f"rig sphere: need distance_m > {HAND_MIN_DISTANCE_M} and focal_px > 0, got {distance_m}, {focal_px}")
    w, h = int(image_size[0]), int(image_size[1])
    K = np.array([[focal_px, 0.0, w / 2], [0.0, focal_px, h / 2], [0.0, 0.0, 1.0]])
    cams = []
    for i, d in enumerate(fibonacci_sphere(n)):
        up = (0.0, 1.0, 0.0) if abs(d[2]) > _POLE_COS else (0.0, 0.0, 1.0)
        centre = distance_m * d
        R = look_at_rotation(centre, np.zeros(3), up)
        cams.append(Camera(name=f"sphere{i:02d}", K=K.copy(), R=R, t=-R @ centre, image_size=(w, h)))
    return Rig(name=f"sphere-{n}", cameras=tuple(cams), subject_position=np.zeros(3),
               min_distance_m=HAND_MIN_DISTANCE_M)


# ---------------------------------------------------------------------------------------
# Validation


def check_rig(rig: Rig, where: str = "rig") -> None:
    """Raise RigError (prefixed by ``where``, usually the file) for a camera that cannot work."""
    pos = np.asarray(rig.subject_position, np.float64)
    if pos.shape != (3,) or not np.isfinite(pos).all():
        raise RigError(f"{where}: subject_position: need 3 finite numbers, got {pos.tolist()}")
    if not (math.isfinite(rig.min_distance_m) and rig.min_distance_m >= 0):
        raise RigError(f"{where}: min_distance_m: need a finite number >= 0, got {rig.min_distance_m}")
    if not rig.cameras:
        raise RigError(f"{where}: cameras: the rig has no cameras")
    names = [c.name for c in rig.cameras]
    for i, cam in enumerate(rig.cameras):
        at = f"{where}: cameras[{i}]"
        if names.index(cam.name) != i:
            raise RigError(f"{at}.name: {cam.name!r} is used twice")
        _check_camera(cam, at, pos, rig.min_distance_m)


def _check_camera(cam: Camera, at: str, pos: np.ndarray, min_distance: float) -> None:
    w, h = cam.image_size
    if not (w > 0 and h > 0):
        raise RigError(f"{at}.image_size: width and height must be > 0, got {[w, h]}")
    K, R, t = (np.asarray(a, np.float64) for a in (cam.K, cam.R, cam.t))
    for field, a, shape in (("K", K, (3, 3)), ("R", R, (3, 3)), ("t", t, (3,))):
        if a.shape != shape:
            raise RigError(f"{at}.{field}: need shape {list(shape)}, got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise RigError(f"{at}.{field}: numbers must be finite, got {a.tolist()}")
    det = float(np.linalg.det(K))
    if abs(det) < 1e-9:
        raise RigError(f"{at}.K: singular intrinsics (det {det:g})")
    if K[2].tolist() != [0.0, 0.0, 1.0] or K[1, 0] != 0.0:
        raise RigError(f"{at}.K: must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise RigError(f"{at}.K: focal lengths must be > 0, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    rdet = float(np.linalg.det(R))
    if err > ROTATION_TOLERANCE or abs(rdet - 1.0) > ROTATION_TOLERANCE:
        raise RigError(f"{at}.R: not a rotation (max |R R^T - I| = {err:.3g}, det {rdet:.6g}; "
                       f"need orthonormal with det +1 within {ROTATION_TOLERANCE:g})")
    centre = -R.T @ t
    dist = float(np.linalg.norm(centre - pos))
    if dist < min_distance:
        raise RigError(f"{at}: the camera centre {np.round(centre, 4).tolist()} is {dist:.3f} m from the subject "
                       f"position, inside the subject (min_distance_m {min_distance:g})")
    depth = float((R @ pos + t)[2])
    if depth <= 0:
        raise RigError(f"{at}: the subject position is behind the camera (depth {depth:.3f} m); "
                       "point the camera at the subject")


# ---------------------------------------------------------------------------------------
# Files

_TOP_KEYS = ("name", "subject_position", "min_distance_m", "cameras")
_CAMERA_KEYS = ("name", "image_size", "K", "focal", "principal_point", "R", "t", "centre", "look_at", "up", "roll_deg")


def _unknown(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint} known keys: {list(known)}"


def _array(value: Any, shape: tuple[int, ...], at: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape``; RigError naming ``at`` otherwise."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise RigError(f"{at}: need numbers of shape {list(shape)}, got {value!r}") from err
    if a.shape != shape:
        raise RigError(f"{at}: need shape {list(shape)}, got {value!r}")
    if not np.isfinite(a).all():
        raise RigError(f"{at}: numbers must be finite, got {value!r}")
    return a


def _camera_from_dict(d: Any, at: str) -> Camera:
    if not isinstance(d, dict):
        raise RigError(f"{at}: need a mapping with name, image_size, intrinsics and extrinsics")
    for key in d:
        if key not in _CAMERA_KEYS:
            raise RigError(f"{at}: {_unknown(str(key), _CAMERA_KEYS)}")
    for key in ("name", "image_size"):
        if key not in d:
            raise RigError(f"{at}: missing key {key!r}")
    name = d["name"]
    if isinstance(name, bool) or not isinstance(name, (str, int)) or str(name) == "":
        raise RigError(f"{at}.name: need a non-empty string, got {name!r}")
    size = _array(d["image_size"], (2,), f"{at}.image_size")
    if not (np.all(size > 0) and np.all(size == np.round(size))):
        raise RigError(f"{at}.image_size: width and height must be whole numbers > 0, got {d['image_size']!r}")
    if "K" in d:
        for key in ("focal", "principal_point"):
            if key in d:
                raise RigError(f"{at}: give K or focal + principal_point, not both (remove {key!r})")
        K = _array(d["K"], (3, 3), f"{at}.K")
    elif "focal" in d and "principal_point" in d:
        f = _array(d["focal"], (2,), f"{at}.focal")
        c = _array(d["principal_point"], (2,), f"{at}.principal_point")
        if not (f > 0).all():
            raise RigError(f"{at}.focal: focal lengths must be > 0, got {d['focal']!r}")
        K = np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])
    else:
        raise RigError(f"{at}: missing intrinsics: give K (3x3) or focal [fx, fy] + principal_point [cx, cy]")
    look = [k for k in ("centre", "look_at", "up", "roll_deg") if k in d]
    if "R" in d or "t" in d:
        if look:
            raise RigError(f"{at}: give R + t or centre + look_at, not both (remove {look[0]!r})")
        for key in ("R", "t"):
            if key not in d:
                raise RigError(f"{at}: missing key {key!r} (R and t go together)")
        R = _array(d["R"], (3, 3), f"{at}.R")
        t = _array(d["t"], (3,), f"{at}.t")
    elif "centre" in d and "look_at" in d:
        centre = _array(d["centre"], (3,), f"{at}.centre")
        target = _array(d["look_at"], (3,), f"{at}.look_at")
        up = _array(d.get("up", [0.0, 0.0, 1.0]), (3,), f"{at}.up")
        roll = _array(d.get("roll_deg", 0.0), (), f"{at}.roll_deg")
        try:
            R = look_at_rotation(centre, target, up, float(roll))
        except ValueError as err:
            raise RigError(f"{at}.look_at: {err}") from err
        t = -R @ centre
    else:
        raise RigError(f"{at}: missing extrinsics: give R (3x3) + t [3] or centre [3] + look_at [3]")
    return Camera(name=str(name), K=K, R=R, t=t, image_size=(int(size[0]), int(size[1])))


def rig_from_dict(data: Any, where: str = "rig") -> Rig:
    """A validated Rig from the parsed YAML of a rig file; errors are prefixed by ``where``."""
    if not isinstance(data, dict):
        raise RigError(f"{where}: the top level must be a mapping with name, subject_position and cameras")
    for key in data:
        if key not in _TOP_KEYS:
            raise RigError(f"{where}: {_unknown(str(key), _TOP_KEYS)}")
    for key in ("name", "subject_position", "cameras"):
        if key not in data:
            raise RigError(f"{where}: missing key {key!r}")
    name = data["name"]
    if isinstance(name, bool) or not isinstance(name, (str, int)) or str(name) == "":
        raise RigError(f"{where}: name: need a non-empty string, got {name!r}")
    pos = _array(data["subject_position"], (3,), f"{where}: subject_position")
    min_d = float(_array(data.get("min_distance_m", DEFAULT_MIN_DISTANCE_M), (), f"{where}: min_distance_m"))
    cams = data["cameras"]
    if not isinstance(cams, list) or not cams:
        raise RigError(f"{where}: cameras: need a non-empty list of cameras")
    rig = Rig(name=str(name), cameras=tuple(_camera_from_dict(c, f"{where}: cameras[{i}]") for i, c in enumerate(cams)),
              subject_position=pos, min_distance_m=min_d)
    check_rig(rig, where)
    return rig


def load_rig(path: str | Path) -> Rig:
    """Read and validate a rig file (format in the module docstring); RigError naming the file and field."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RigError(f"{p}: rig file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RigError(f"{p}: not valid YAML{where}: {problem}") from exc
    return rig_from_dict(data, str(p))


def _floats(a: np.ndarray) -> list:
    """Nested lists of Python floats (YAML and JSON write them at full precision)."""
    return np.asarray(a, np.float64).tolist()


def rig_dict(rig: Rig) -> dict[str, Any]:
    """The canonical form of a rig (K, R, t) as plain data."""
    return {
        "name": rig.name,
        "subject_position": _floats(rig.subject_position),
        "min_distance_m": float(rig.min_distance_m),
        "cameras": [{"name": c.name, "image_size": [int(c.image_size[0]), int(c.image_size[1])],
                     "K": _floats(c.K), "R": _floats(c.R), "t": _floats(c.t)} for c in rig.cameras],
    }


def rig_yaml(rig: Rig) -> str:
    """The rig file text of ``rig`` in canonical form (``load_rig`` reads back the same float64 numbers)."""
    import yaml

    header = (f"# MPT camera rig {rig.name!r}: {len(rig.cameras)} cameras (format: README, 'Camera rigs').\n"
              "# K: intrinsics (pixels); R, t: world -> camera (x right, y down, z forward), metres; world z up.\n")
    return header + yaml.safe_dump(rig_dict(rig), sort_keys=False, default_flow_style=None, width=120)


def save_rig(rig: Rig, path: str | Path) -> None:
    """Write ``rig_yaml(rig)`` to ``path`` atomically."""
    check_rig(rig, str(path))
    atomic_write_bytes(Path(path), rig_yaml(rig).encode())


def rig_digest(rig: Rig) -> str:
    """SHA-256 (hex) of the content that decides a store's numbers: per camera its name, image size, K, R
    and t, and the subject position, as exact float64 values (not the rig's name or min_distance_m)."""
    content = {"subject_position": _floats(rig.subject_position),
               "cameras": [[c.name, [int(c.image_size[0]), int(c.image_size[1])], _floats(c.K), _floats(c.R),
                            _floats(c.t)] for c in rig.cameras]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Names


def packaged_rigs() -> dict[str, Path]:
    """{name: file} of the rigs installed with the package (``pipelines/rigs/*.yaml``, without ``.yaml``)."""
    from importlib import resources

    try:
        root = resources.files(RIGS_PACKAGE)
    except ModuleNotFoundError:
        return {}
    folder = Path(str(root)) / RIGS_FOLDER
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in sorted(folder.glob("*.yaml"))}


def is_rig_path(spec: str) -> bool:
    """Whether a rig spec names a file (a YAML suffix or a folder part) rather than a built-in or
    packaged rig name."""
    p = Path(spec)
    return p.suffix in RIG_SUFFIXES or len(p.parts) > 1


def resolve_rig(spec: str, cameras: int, base_dir: Path | None = None) -> Rig:
    """The rig ``spec`` names: ``"h36m"`` -> ``standard_rig(cameras)``; ``"sphere"`` -> ``sphere_rig(cameras)``;
    a YAML path (relative paths against ``base_dir``, else the current directory) -> ``load_rig``; a bare
    name -> the packaged rig ``pipelines/rigs/<name>.yaml`` (e.g. ``h36m-s1``, ``elevated-ring``,
    ``close-wide``). For a file or packaged rig, ``cameras`` is not used: the file says how many."""
    spec = str(spec)
    if spec == "h36m":
        return standard_rig(int(cameras))
    if spec == "sphere":
        return sphere_rig(int(cameras))
    p = Path(spec).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    if is_rig_path(spec) or p.is_file():
        return load_rig(p)
    known = packaged_rigs()
    if spec not in known:
        raise RigError(f"rig {spec!r}: no such rig file, and not a rig name; use h36m, sphere, a packaged rig "
                       f"({', '.join(known) or 'none installed'}) or the path of a rig YAML")
    return load_rig(known[spec])
