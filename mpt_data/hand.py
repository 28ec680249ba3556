"""MANO hands: read MANO files safely, pose right hands in batches, mirror left hands into right ones.

Files. The official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (chumpy objects and a ``scipy.sparse``
``J_regressor``; read by ``mpt_data.model_files`` without running code) and chumpy-free copies with the
same keys: ``v_template`` (778, 3), ``f`` (F, 3), ``J_regressor`` (16, 778), ``weights`` (778, 16),
``kintree_table`` (2, 16), ``shapedirs`` (778, 3, 10), ``posedirs`` (778, 3, 135), ``hands_components``
(45, 45) and ``hands_mean`` (45,). ``.npz`` files with those keys load too.

Forward. ``mpt_data.kinematics.lbs`` with the file's own shape directions, pose correctives, skinning
weights and tree: the same numbers as ``smplx.MANO(use_pca=False, flat_hand_mean=...)`` without its
global translation, root-centred at the wrist (MANO joint 0 at the origin), metres, the model's axes.
The pose is the full 48-value axis-angle vector (global orientation, then 15 joints x 3 in MANO's
joint order, ``conventions.MANO_JOINTS``); no PCA. ``flat_hand_mean=True`` (AMASS's convention and the
default) uses the pose as given; ``False`` adds the file's ``hands_mean`` to the 45 finger values
(the convention of MANO's own fits, e.g. FreiHAND's ``training_mano.json``).

Joint set ``hand21`` (``conventions.HAND21_JOINTS``, FreiHAND's order): the 16 skeleton joints and the
five fingertip vertices, ``conventions.MANO_FINGERTIP_VERTEX_IDS`` on the official topology or the
``fingertips`` of a ``vertex_ids.json`` beside the model file (the synthetic hand writes one).

Mirroring. MANO's left hand is its right hand reflected across the model's x = 0 plane. Reflecting a
posed hand, x -> -x, maps each joint rotation R to M R M with M = diag(-1, 1, 1), which on axis-angle is
(x, y, z) -> (x, -y, -z) (``mirror_axis_angle``); the global orientation mirrors the same way. So a left
hand's pose, mirrored, posed with the right model, is the left hand's mesh with x negated.

From AMASS (``hand_pose_from_smplh``): an SMPL+H pose (T, 156) holds both hands' 15 finger joints
(columns 66:111 left, 111:156 right) in MANO's joint order, relative to the wrists. The hand's global
orientation is the body's world rotation of the wrist: the product of the rotations along
``conventions.SMPLH_PARENTS`` from the root (whose rotation is AMASS's ``root_orient``, world axes,
z up) to the wrist. The left hand is mirrored into a right hand (a mirrored body's right hand: see
``mirror_body_pose``). This assumes MANO's rest hand has the axes of SMPL+H's rest hand, which holds
for the official files (SMPL+H's hands are MANO) and for the synthetic ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpt_data import conventions as cv
from mpt_data.model_files import ModelFileError, load_model_file

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

HAND_SIDES: tuple[str, ...] = ("right", "left")
HAND_POSE_DIM = 48  # global orientation 3 + 15 joints x 3
NUM_FINGER_VALUES = 45
REQUIRED_KEYS: tuple[str, ...] = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs")
FORWARD_BLOCK = 256  # samples per block: every product runs at one shape (see BodyModel.forward_torch)
MIRROR_AXIS_ANGLE = np.array([1.0, -1.0, -1.0])  # x -> -x reflection of a rotation, on axis-angle


@dataclass(frozen=True)
class HandModelConfig:
    """Which MANO model to pose: the folder with MANO_RIGHT / MANO_LEFT, shape coefficients used, and
    whether the finger pose is relative to the flat hand (True, AMASS) or to the file's hands_mean."""

    model_dir: str
    num_betas: int = 10
    flat_hand_mean: bool = True

    def __post_init__(self) -> None:
        if self.num_betas < 1:
            raise ValueError(f"num_betas must be >= 1, got {self.num_betas}")


def hand_model_candidates(config: HandModelConfig, side: str) -> list[Path]:
    """Where the MANO file of ``side`` may be, in the order tried: ``MANO_<SIDE>.pkl|.npz`` in
    ``model_dir`` or ``model_dir/mano``."""
    if side not in HAND_SIDES:
        raise ValueError(f"unknown hand side '{side}'; expected one of {HAND_SIDES}")
    root = Path(config.model_dir)
    return [folder / f"MANO_{side.upper()}.{ext}" for folder in (root, root / "mano") for ext in ("pkl", "npz")]


def find_hand_model_file(config: HandModelConfig, side: str = "right") -> Path:
    """The first existing ``hand_model_candidates``; FileNotFoundError listing them if none."""
    candidates = hand_model_candidates(config, side)
    for p in candidates:
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"no MANO {side}-hand model: looked for {', '.join(str(p) for p in candidates)}. Put the licensed "
        f"MANO_{side.upper()}.pkl (from the MANO download's models/ folder) at one of these paths."
    )


def fingertip_vertex_ids(model_file: Path, num_vertices: int) -> dict[str, int]:
    """Fingertip vertex per finger: the ``fingertips`` table of a ``vertex_ids.json`` beside the model
    file, else the official topology's (``conventions.MANO_FINGERTIP_VERTEX_IDS``)."""
    path = Path(model_file).parent / "vertex_ids.json"
    if not path.is_file():
        return dict(cv.MANO_FINGERTIP_VERTEX_IDS)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: unreadable vertex ids ({e})") from e
    table = doc.get("fingertips") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not all(k in table for k in cv.HAND21_FINGERS):
        raise ModelFileError(f"{path}: 'fingertips' must name a vertex for each of {list(cv.HAND21_FINGERS)}")
    ids = {k: int(table[k]) for k in cv.HAND21_FINGERS}
    bad = {k: v for k, v in ids.items() if not 0 <= v < num_vertices}
    if bad:
        raise ModelFileError(f"{path}: fingertip vertex ids {bad} outside 0..{num_vertices - 1}")
    return ids


class HandModel:
    """One MANO hand (right or left file), posed in batches (see the module docstring for the maths).

    Build with ``HandModel.load(config, side, device)``. Attributes: ``num_vertices`` (778),
    ``num_joints`` (16), ``num_betas`` (used), ``faces`` (F, 3) int32, ``joint_sets`` (``("hand21",)``),
    ``model_file``, ``side``.
    """

    def __init__(self, data: Mapping[str, np.ndarray], tip_ids: Mapping[str, int], *, num_betas: int = 10,
                 flat_hand_mean: bool = True, device: str = "cpu", model_file: str = "<memory>",
                 side: str = "right") -> None:
        import torch

        from mpt_data.kinematics import chain_levels, plan_skinning

        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ModelFileError(f"{model_file}: not a MANO file: missing keys {missing}")
        v_template = np.asarray(data["v_template"], np.float64)
        if v_template.ndim != 2 or v_template.shape != (cv.MANO_NUM_VERTICES, 3):
            raise ModelFileError(f"{model_file}: v_template has shape {v_template.shape}; a MANO hand has "
                                 f"({cv.MANO_NUM_VERTICES}, 3)")
        nv, nj = cv.MANO_NUM_VERTICES, len(cv.MANO_JOINTS)
        j_reg = np.asarray(data["J_regressor"], np.float64)
        weights = np.asarray(data["weights"], np.float64)
        shapedirs = np.asarray(data["shapedirs"], np.float64)
        kintree = np.asarray(data["kintree_table"], np.int64)
        expected = {"J_regressor": (j_reg, (nj, nv)), "weights": (weights, (nv, nj)), "kintree_table": (kintree, (2, nj))}
        for key, (arr, shape) in expected.items():
            if arr.shape != shape:
                raise ModelFileError(f"{model_file}: {key} has shape {arr.shape}, expected {shape}")
        if shapedirs.ndim != 3 or shapedirs.shape[:2] != (nv, 3):
            raise ModelFileError(f"{model_file}: shapedirs has shape {shapedirs.shape}, expected ({nv}, 3, nb)")
        faces = np.asarray(data["f"], np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= nv:
            raise ModelFileError(f"{model_file}: f must be (F, 3) vertex ids in 0..{nv - 1}")
        posedirs = np.asarray(data.get("posedirs", np.zeros((nv, 3, 9 * (nj - 1)))), np.float64)
        if posedirs.shape != (nv, 3, 9 * (nj - 1)):
            raise ModelFileError(f"{model_file}: posedirs has shape {posedirs.shape}, expected ({nv}, 3, {9 * (nj - 1)})")
        hands_mean = np.asarray(data.get("hands_mean", np.zeros(NUM_FINGER_VALUES)), np.float64).reshape(-1)
        if hands_mean.shape != (NUM_FINGER_VALUES,):
            raise ModelFileError(f"{model_file}: hands_mean has {hands_mean.size} values, expected {NUM_FINGER_VALUES}")
        parents = kintree[0].copy()
        parents[0] = -1
        if tuple(parents.tolist()) != cv.MANO_PARENTS:
            raise ModelFileError(f"{model_file}: kintree_table {parents.tolist()} is not MANO's tree {list(cv.MANO_PARENTS)}")
        for name, arr in (("v_template", v_template), ("J_regressor", j_reg), ("weights", weights),
                          ("shapedirs", shapedirs), ("posedirs", posedirs)):
            if not np.isfinite(arr).all():
                raise ModelFileError(f"{model_file}: {name} holds non-finite values")

        self.model_file, self.side = model_file, side
        self.device = torch.device(device)
        self.num_vertices, self.num_joints = nv, nj
        self.num_betas = min(int(num_betas), shapedirs.shape[2])
        self.faces = faces.astype(np.int32)
        self.flat_hand_mean = bool(flat_hand_mean)
        self.hands_mean = hands_mean  # (45,) float64, the file's mean finger pose (zeros when it has none)
        self.joint_sets: tuple[str, ...] = ("hand21",)
        self.tip_ids = dict(tip_ids)
        self._levels = chain_levels(parents.tolist())
        shapedirs = shapedirs[:, :, : self.num_betas]
        f32 = dict(dtype=torch.float32, device=self.device)
        self._skinning = plan_skinning(weights, self.device)
        self._v_template = torch.tensor(v_template.reshape(-1, 1), **f32)
        self._shapedirs = torch.tensor(shapedirs.reshape(-1, self.num_betas), **f32)
        self._j_template = torch.tensor(j_reg @ v_template, **f32)
        self._j_shapedirs = torch.tensor(np.einsum("jv,vcb->bjc", j_reg, shapedirs).reshape(self.num_betas, -1), **f32)
        self._posedirs = torch.tensor(posedirs.reshape(-1, posedirs.shape[2]), **f32) if np.any(posedirs != 0) else None
        self._pose_offset = torch.tensor(np.concatenate([np.zeros(3), hands_mean]) if not flat_hand_mean
                                         else np.zeros(HAND_POSE_DIM), **f32)
        self._regressor = self._hand21_regressor(j_reg)
        skeleton_rows = [m for m in cv.HAND21_FROM_MANO if m >= 0]
        self._skeleton_rows = torch.tensor(skeleton_rows, dtype=torch.long, device=self.device)
        self._joint_rows = torch.tensor([k for k, m in enumerate(cv.HAND21_FROM_MANO) if m >= 0], dtype=torch.long,
                                        device=self.device)
        self._tip_rows = torch.tensor(cv.HAND21_TIPS, dtype=torch.long, device=self.device)
        self._tip_vertices = torch.tensor([self.tip_ids[cv.HAND21_FINGERS[(k - 1) // 4]] for k in cv.HAND21_TIPS],
                                          dtype=torch.long, device=self.device)

    @classmethod
    def load(cls, config: HandModelConfig, side: str = "right", device: str = "cpu") -> HandModel:
        """The MANO model of ``side`` from ``config.model_dir`` (FileNotFoundError naming the expected
        paths when it is missing; ModelFileError naming the file when it is malformed)."""
        path = find_hand_model_file(config, side)
        data = load_model_file(path)
        nv = int(np.asarray(data["v_template"]).shape[0]) if "v_template" in data else 0
        return cls(data, fingertip_vertex_ids(path, nv), num_betas=config.num_betas,
                   flat_hand_mean=config.flat_hand_mean, device=device, model_file=str(path), side=side)

    def _hand21_regressor(self, j_reg: np.ndarray) -> np.ndarray:
        reg = np.zeros((len(cv.HAND21_JOINTS), self.num_vertices), np.float64)
        for k, m in enumerate(cv.HAND21_FROM_MANO):
            if m >= 0:
                reg[k] = j_reg[m]
            else:
                reg[k, self.tip_ids[cv.HAND21_FINGERS[(k - 1) // 4]]] = 1.0
        return reg

    def joint_regressors(self) -> dict[str, np.ndarray]:
        """{"hand21": (21, V)}: maps vertices to the joints (exact in the rest pose and for the tips)."""
        return {"hand21": self._regressor.copy()}

    def template(self) -> np.ndarray:
        """(V, 3) float32 rest-pose vertices with zero betas, the wrist at the origin."""
        v = self._v_template.reshape(-1, 3) - self._j_template[0]
        return v.cpu().numpy().astype(np.float32)

    def forward_torch(self, poses: torch.Tensor | np.ndarray, betas: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """``forward`` on and into float32 tensors on the model's device, in fixed blocks of
        ``FORWARD_BLOCK`` samples (each sample's numbers depend on its own inputs only)."""
        import torch

        from mpt_data.kinematics import lbs

        poses = torch.as_tensor(poses, dtype=torch.float32, device=self.device)
        betas = torch.as_tensor(betas, dtype=torch.float32, device=self.device)
        if poses.ndim != 2 or poses.shape[1] != HAND_POSE_DIM or betas.ndim != 2 or betas.shape[0] != poses.shape[0]:
            raise ValueError(f"poses (B, {HAND_POSE_DIM}) and betas (B, nb) expected, got {tuple(poses.shape)}, "
                             f"{tuple(betas.shape)}")
        b, blk, nb = poses.shape[0], FORWARD_BLOCK, self.num_betas
        n = b + (-b % blk)
        pose = poses.new_zeros((n, HAND_POSE_DIM))
        pose[:b] = poses + self._pose_offset
        shape = poses.new_zeros((n, nb))
        shape[:b, : min(nb, betas.shape[1])] = betas[:, :nb]
        verts = poses.new_empty((n, self.num_vertices, 3))
        skeleton = poses.new_empty((n, self.num_joints, 3))
        for i in range(0, n, blk):
            _, joints = lbs(shape[i: i + blk], pose[i: i + blk], self._v_template, self._shapedirs, self._posedirs,
                            self._j_template, self._j_shapedirs, self._levels, self._skinning, out=verts[i: i + blk])
            skeleton[i: i + blk] = joints
        return {"vertices": verts[:b], "skeleton": skeleton[:b], "hand21": self.joint_sets_from(verts[:b], skeleton[:b])}

    def joint_sets_from(self, vertices: torch.Tensor, skeleton: torch.Tensor) -> torch.Tensor:
        """(B, 21, 3) hand21 joints from posed vertices (B, V, 3) and skeleton joints (B, 16, 3)."""
        out = vertices.new_empty((vertices.shape[0], len(cv.HAND21_JOINTS), 3))
        out[:, self._joint_rows] = skeleton[:, self._skeleton_rows]
        out[:, self._tip_rows] = vertices[:, self._tip_vertices]
        return out

    def forward(self, poses: np.ndarray | torch.Tensor, betas: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Pose a batch of hands.

        poses: (B, 48) axis-angle (radians): global orientation, then MANO's 15 joints.
        betas: (B, any) shape coefficients, truncated or zero-padded to ``num_betas``.
        Returns float32 numpy arrays, root-centred at the wrist, metres, the model's axes:
        ``vertices`` (B, V, 3), ``skeleton`` (B, 16, 3) and ``hand21`` (B, 21, 3).
        """
        import torch

        with torch.inference_mode():
            return {k: v.detach().cpu().numpy() for k, v in self.forward_torch(poses, betas).items()}


# ---------------------------------------------------------------------------------------
# Mirroring and hands from SMPL+H bodies


def mirror_axis_angle(aa: np.ndarray) -> np.ndarray:
    """Axis-angle rotations (..., 3 k) reflected across the x = 0 plane: (x, y, z) -> (x, -y, -z) per joint."""
    aa = np.asarray(aa)
    return (aa.reshape(*aa.shape[:-1], -1, 3) * MIRROR_AXIS_ANGLE).reshape(aa.shape).astype(aa.dtype, copy=False)


def _smplh_mirror_permutation() -> np.ndarray:
    """(52,) SMPL+H joint permutation swapping left and right: the body's flip pairs and the two hands."""
    perm = list(range(len(cv.SMPLH_JOINTS)))
    for a, b in cv.SMPL_FLIP_PAIRS:
        if a < cv.NUM_BODY_JOINTS and b < cv.NUM_BODY_JOINTS:
            perm[a], perm[b] = b, a
    n = len(cv.SMPLH_HAND_JOINTS) // 2
    for i in range(n):
        left, right = cv.NUM_BODY_JOINTS + i, cv.NUM_BODY_JOINTS + n + i
        perm[left], perm[right] = right, left
    return np.asarray(perm)


def mirror_body_pose(poses: np.ndarray) -> np.ndarray:
    """SMPL+H poses (T, 156) of the body reflected across the world's x = 0 plane (for a body whose
    template is left-right symmetric): left and right joints swapped, every rotation mirrored."""
    poses = np.asarray(poses)
    if poses.shape[-1] != cv.AMASS_SMPLH_POSE_DIM:
        raise ValueError(f"SMPL+H poses have {cv.AMASS_SMPLH_POSE_DIM} values, got {poses.shape[-1]}")
    joints = poses.reshape(*poses.shape[:-1], -1, 3)[..., _smplh_mirror_permutation(), :]
    return mirror_axis_angle(joints.reshape(poses.shape))


def _rotations(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices, float64 (Rodrigues)."""
    aa = np.asarray(aa, np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = np.moveaxis(axis, -1, 0)
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def rotation_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle with angle in [0, pi], float64 (through the
    unit quaternion, stable at every angle)."""
    r = np.asarray(rot, np.float64)
    tr = np.trace(r, axis1=-2, axis2=-1)
    q = np.stack([1 + tr, 1 + 2 * r[..., 0, 0] - tr, 1 + 2 * r[..., 1, 1] - tr, 1 + 2 * r[..., 2, 2] - tr], -1)
    best = np.argmax(q, axis=-1)
    # Each row of candidates is 4 |q_i| q from one of the four numerically safe formulas.
    cands = np.stack([
        np.stack([1 + tr, r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1),
        np.stack([r[..., 2, 1] - r[..., 1, 2], q[..., 1], r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0]], -1),
        np.stack([r[..., 0, 2] - r[..., 2, 0], r[..., 0, 1] + r[..., 1, 0], q[..., 2], r[..., 1, 2] + r[..., 2, 1]], -1),
        np.stack([r[..., 1, 0] - r[..., 0, 1], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1], q[..., 3]], -1),
    ], -2)
    quat = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    quat = np.where(quat[..., :1] < 0, -quat, quat)  # w >= 0: angle in [0, pi]
    half = np.arctan2(np.linalg.norm(quat[..., 1:], axis=-1), quat[..., 0])
    sin_half = np.sin(half)
    scale = np.where(sin_half > 1e-12, 2 * half / np.maximum(sin_half, 1e-12), 2.0)
    return quat[..., 1:] * scale[..., None]


def wrist_rotation(poses: np.ndarray, side: str) -> np.ndarray:
    """World rotation (T, 3, 3) of a wrist of SMPL+H bodies (T, 156): the rotations along
    ``conventions.SMPLH_PARENTS`` from the root to the wrist, composed (float64)."""
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 2 or poses.shape[1] != cv.AMASS_SMPLH_POSE_DIM:
        raise ValueError(f"SMPL+H poses (T, {cv.AMASS_SMPLH_POSE_DIM}) expected, got {poses.shape}")
    joint = cv.SMPLH_JOINTS.index(f"{side}_wrist")
    chain = []
    while joint >= 0:
        chain.append(joint)
        joint = cv.SMPLH_PARENTS[joint]
    rot = np.broadcast_to(np.eye(3), (poses.shape[0], 3, 3)).copy()
    for j in reversed(chain):  # root first: R_world(j) = R_world(parent) R_local(j)
        rot = rot @ _rotations(poses[:, 3 * j: 3 * j + 3])
    return rot


def hand_pose_from_smplh(poses: np.ndarray, side: str) -> np.ndarray:
    """Right-hand MANO poses (T, 48) float32 of one hand of SMPL+H bodies (T, 156).

    Global orientation: the body's world rotation of that wrist (``wrist_rotation``), as axis-angle;
    fingers: the hand's 15 joints of the pose vector. A left hand is mirrored into a right hand
    (``mirror_axis_angle`` on all 16 rotations): it is then the right hand of the mirrored body.
    """
    if side not in HAND_SIDES:
        raise ValueError(f"unknown hand side '{side}'; expected one of {HAND_SIDES}")
    poses = np.asarray(poses, np.float64)
    first = 3 * cv.NUM_BODY_JOINTS + (0 if side == "left" else NUM_FINGER_VALUES)
    fingers = poses[:, first: first + NUM_FINGER_VALUES]
    out = np.concatenate([rotation_to_axis_angle(wrist_rotation(poses, side)), fingers], axis=1)
    if side == "left":
        out = mirror_axis_angle(out)
    return out.astype(np.float32)
