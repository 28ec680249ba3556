"""Body models: read SMPL / SMPL+H files safely, pose them in batches, derive joint sets.

Files. ``load_model_file`` (from ``mpt_data.model_files``, which reads ``.npz`` and ``.pkl`` files
without running code) gives the arrays; ``find_model_file`` says where a gender's file is.

Forward. ``mpt_data.kinematics.lbs`` is linear blend skinning as a free function of explicit
tensors (the model's own shape directions, pose correctives, skinning weights and kinematic tree,
composed one tree depth at a time); ``BodyModel.forward`` runs it in fixed blocks of
``FORWARD_BLOCK`` samples (root-centred by construction) and assembles the joint sets from the
posed vertices and skeleton (``BodyModel.joint_sets_from``). It equals ``smplx.SMPLH(use_pca=False,
flat_hand_mean=True)`` driven by the full 156-value AMASS pose (hands included), with two
differences worth knowing: (1) smplx caps SMPL/SMPL+H files that have fewer than 300 shape
directions at 10 betas, silently dropping AMASS's betas 10-15; here every shape direction
in the file is used (betas truncated or zero-padded to the file's count, capped by
``BodyModelConfig.num_betas``); (2) when a model has all-zero pose correctives their
matrix product is skipped (it adds nothing). ``trans`` is ignored: outputs are
root-centred, the pelvis joint (joint 0 of the model) at the origin, in AMASS world axes
(z up), metres, float32.

Joint sets (names and orders in ``mpt_data.conventions``):

* ``smpl24``: the model's skeleton joints; from an SMPL+H model through
  ``conventions.SMPLH_TO_SMPL24`` (SMPL's hand joints = the middle-finger bases).
* ``coco17``: nose, eyes and ears are mesh vertices (``vertex_ids.json`` beside the model
  file, else ``conventions.SMPL_FACE_VERTEX_IDS`` for the official 6890-vertex topology);
  shoulders, elbows, wrists, knees and ankles are the SMPL joints of the same name. COCO
  annotators mark the hips on the outside of the pelvis, wider and higher than SMPL's hip
  joint centres, so each COCO hip is the fixed affine combination
  ``conventions.COCO_HIP_FROM_SMPL``: hip + 0.3 (hip - other hip) + 0.1 (hip - knee of
  the same side), i.e. pushed out by 30 % of the hip-joint spacing and up the thigh by
  10 % of its length. The weights sum to one, so the rule commutes with translation and
  is also a vertex regressor (``joint_regressors``).
* ``h36m17``: ``J_regressor_h36m`` (17, V) applied to the vertices, when the config names
  that ``.npy`` file.

``joint_regressors`` gives, per set, a (J, V) matrix that maps vertices to the joints.
For ``smpl24`` and ``coco17`` it reproduces the skeleton joints exactly in the rest pose
and approximately (to skinning accuracy) when posed; the trainer uses these for L_J^reg.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpt_data import conventions as cv
from mpt_data.model_files import ModelFileError, load_model_file

if TYPE_CHECKING:  # torch is imported where it is used: `mpt_data.body`'s file readers work without it
    import torch

GENDERS: tuple[str, ...] = ("male", "female", "neutral")
MODEL_TYPES: tuple[str, ...] = ("smplh", "smpl")
REQUIRED_KEYS: tuple[str, ...] = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs")
FORWARD_BLOCK = 128  # samples per body-model block: every product runs at one shape (see forward_torch)


# ---------------------------------------------------------------------------------------
# Configuration and file lookup


@dataclass(frozen=True)
class BodyModelConfig:
    """Which body model to pose.

    model_dir: folder with the model files (see ``model_file_candidates``).
    model_type: ``"smplh"`` (52 joints, hands posed from the AMASS pose) or ``"smpl"``
        (24 joints; AMASS's finger rotations are dropped, SMPL's hand joints stay at rest).
    num_betas: the most shape coefficients used (the file's count if smaller).
    h36m_regressor: a (17, V) ``.npy`` Human3.6M joint regressor, or None for no h36m17 set.
    """

    model_dir: str
    model_type: str = "smplh"
    num_betas: int = 16
    h36m_regressor: str | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.num_betas < 1:
            raise ValueError(f"num_betas must be >= 1, got {self.num_betas}")


def model_file_candidates(config: BodyModelConfig, gender: str) -> list[Path]:
    """Where the model file for ``gender`` may be, in the order tried.

    For ``smplh``: ``SMPLH_<GENDER>.pkl|.npz`` or AMASS's ``<gender>/model.npz``, each either
    in ``model_dir`` or in ``model_dir/smplh``. For ``smpl``: ``SMPL_<GENDER>.pkl|.npz`` in
    ``model_dir`` or ``model_dir/smpl``.
    """
    if gender not in GENDERS:
        raise ValueError(f"unknown gender '{gender}'; expected one of {GENDERS}")  # '{}': a numpy string prints plain
    root = Path(config.model_dir)
    prefix = "SMPLH" if config.model_type == "smplh" else "SMPL"
    out = []
    for folder in (root, root / config.model_type):
        out += [folder / f"{prefix}_{gender.upper()}.pkl", folder / f"{prefix}_{gender.upper()}.npz"]
        if config.model_type == "smplh":
            out.append(folder / gender / "model.npz")
    return out


def find_model_file(config: BodyModelConfig, gender: str) -> Path:
    """The first existing ``model_file_candidates``; FileNotFoundError listing them if none."""
    candidates = model_file_candidates(config, gender)
    for p in candidates:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"no {config.model_type.upper()} body model for gender '{gender}': looked for {looked}. "
        f"Put the licensed model file at one of these paths (AMASS's smplh/{gender}/model.npz "
        f"or the SMPL+H {gender} file renamed), or point model_dir elsewhere."
    )


def _face_vertex_ids(model_file: Path, config: BodyModelConfig, num_vertices: int) -> dict[str, int]:
    """COCO face keypoint vertex ids: vertex_ids.json near the model file, else SMPL's."""
    folder = model_file.parent
    for candidate in (folder / "vertex_ids.json", folder.parent / "vertex_ids.json",
                      Path(config.model_dir) / "vertex_ids.json"):
        if candidate.is_file():
            ids = _parse_vertex_ids(candidate)
            bad = {k: v for k, v in ids.items() if not 0 <= v < num_vertices}
            if bad:
                raise ModelFileError(f"{candidate}: vertex ids {bad} outside 0..{num_vertices - 1}")
            return ids
    if num_vertices == cv.SMPL_NUM_VERTICES:
        return dict(cv.SMPL_FACE_VERTEX_IDS)
    raise ModelFileError(
        f"{model_file} has {num_vertices} vertices (not SMPL's {cv.SMPL_NUM_VERTICES}) and no "
        f"vertex_ids.json beside it naming the vertices of {list(cv.COCO_FACE_KEYPOINTS)}"
    )


def _parse_vertex_ids(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    # The ids may sit at the top level or one level down (e.g. under "coco_face").
    tables = [doc] + [v for v in doc.values() if isinstance(v, dict)] if isinstance(doc, dict) else []
    for table in tables:
        if all(k in table for k in cv.COCO_FACE_KEYPOINTS):
            return {k: int(table[k]) for k in cv.COCO_FACE_KEYPOINTS}
    raise ModelFileError(f"{path}: no entries for all of {list(cv.COCO_FACE_KEYPOINTS)}")


def load_h36m_regressor(path: str | Path, num_vertices: int) -> np.ndarray:
    """A (17, V) float32 Human3.6M regressor from ``.npy``; ModelFileError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"H36M regressor {path} does not exist")
    reg = np.load(path, allow_pickle=False)
    if reg.shape != (len(cv.H36M_JOINTS), num_vertices):
        raise ModelFileError(
            f"{path}: shape {reg.shape}, expected ({len(cv.H36M_JOINTS)}, {num_vertices}) for this body model"
        )
    if not np.isfinite(reg).all():
        raise ModelFileError(f"{path}: non-finite values")
    return reg.astype(np.float32)


# ---------------------------------------------------------------------------------------
# The posable model


def _skeleton_names(num_joints: int) -> tuple[str, ...]:
    if num_joints == len(cv.SMPLH_JOINTS):
        return cv.SMPLH_JOINTS
    if num_joints == len(cv.SMPL_JOINTS):
        return cv.SMPL_JOINTS
    raise ModelFileError(
        f"a model with {num_joints} joints is neither SMPL ({len(cv.SMPL_JOINTS)}) nor SMPL+H "
        f"({len(cv.SMPLH_JOINTS)}); add its joint names to mpt_data.conventions"
    )


def _smpl24_rows(names: Sequence[str]) -> list[int]:
    if tuple(names) == cv.SMPLH_JOINTS:
        return list(cv.SMPLH_TO_SMPL24)
    return [names.index(n) for n in cv.SMPL_JOINTS]


def _coco_body_weights(names: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """COCO body keypoint -> [(skeleton joint index, weight)], hips corrected."""
    smpl24 = _smpl24_rows(names)
    idx = {n: smpl24[cv.SMPL_JOINTS.index(n)] for n in cv.SMPL_JOINTS}
    out = {k: [(idx[v], 1.0)] for k, v in cv.COCO_FROM_SMPL.items()}
    for k, combo in cv.COCO_HIP_FROM_SMPL.items():
        out[k] = [(idx[n], w) for n, w in combo]
    return out


class BodyModel:
    """One gender's body model, posed in batches (see the module docstring for the maths).

    Build with ``BodyModel.load(config, gender, device)``. Attributes: ``num_vertices`` V,
    ``num_joints`` (skeleton joints), ``num_betas`` (used), ``faces`` (F, 3) int32,
    ``joint_sets`` (the set names ``forward`` returns), ``model_file``.
    """

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        face_vertex_ids: Mapping[str, int],
        *,
        model_type: str = "smplh",
        num_betas: int = 16,
        h36m_regressor: np.ndarray | None = None,
        device: str = "cpu",
        model_file: str = "<memory>",
    ) -> None:
        import torch

        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ModelFileError(f"{model_file}: missing keys {missing}")
        self.model_file = model_file
        self.model_type = model_type
        self.device = torch.device(device)
        v_template = np.asarray(data["v_template"], np.float64)
        shapedirs = np.asarray(data["shapedirs"], np.float64)
        j_reg = np.asarray(data["J_regressor"], np.float64)
        weights = np.asarray(data["weights"], np.float64)
        parents = np.asarray(data["kintree_table"], np.int64)[0].copy()
        parents[0] = -1
        num_vertices = v_template.shape[0]
        num_joints = j_reg.shape[0]
        if v_template.shape != (num_vertices, 3) or shapedirs.ndim != 3 or shapedirs.shape[:2] != (num_vertices, 3):
            raise ModelFileError(f"{model_file}: v_template {v_template.shape} / shapedirs {shapedirs.shape} disagree")
        if j_reg.shape != (num_joints, num_vertices) or weights.shape != (num_vertices, num_joints):
            raise ModelFileError(f"{model_file}: J_regressor {j_reg.shape} / weights {weights.shape} disagree")
        if parents.shape != (num_joints,):
            raise ModelFileError(f"{model_file}: kintree_table does not match {num_joints} joints")
        self.joint_names = _skeleton_names(num_joints)
        self.num_vertices = num_vertices
        self.num_joints = num_joints
        self.num_betas = min(int(num_betas), shapedirs.shape[2])
        self.faces = np.asarray(data["f"], np.int64).astype(np.int32)
        posedirs = np.asarray(data.get("posedirs", np.zeros((num_vertices, 3, 9 * (num_joints - 1)))), np.float64)
        if posedirs.shape != (num_vertices, 3, 9 * (num_joints - 1)):
            raise ModelFileError(f"{model_file}: posedirs {posedirs.shape}, expected ({num_vertices}, 3, {9 * (num_joints - 1)})")
        self.has_pose_correctives = bool(np.any(posedirs != 0))
        from mpt_data.kinematics import chain_levels, plan_skinning

        try:
            self._levels = chain_levels(parents.tolist())
        except ValueError as e:
            raise ModelFileError(f"{model_file}: kintree_table: {e}") from e

        shapedirs = shapedirs[:, :, : self.num_betas]
        f32 = dict(dtype=torch.float32, device=self.device)
        # Layouts of mpt_data.kinematics.lbs: vertex-major rows (3 V), one column per coefficient.
        self._skinning = plan_skinning(weights, self.device)
        self._v_template = torch.tensor(v_template.reshape(-1, 1), **f32)  # (3 V, 1)
        self._shapedirs = torch.tensor(shapedirs.reshape(-1, self.num_betas), **f32)  # (3 V, nb)
        # Rest joints are linear in betas: regress template and shape directions once.
        self._j_template = torch.tensor(j_reg @ v_template, **f32)
        self._j_shapedirs = torch.tensor(
            np.einsum("jv,vcb->bjc", j_reg, shapedirs).reshape(self.num_betas, -1), **f32
        )  # (nb, J*3)
        self._posedirs = (torch.tensor(posedirs.reshape(-1, posedirs.shape[2]), **f32)  # (3 V, P)
                          if self.has_pose_correctives else None)
        self.block = FORWARD_BLOCK

        self._regressors = self._build_regressors(j_reg, dict(face_vertex_ids), h36m_regressor)
        self._face_rows = [cv.COCO_JOINTS.index(k) for k in cv.COCO_FACE_KEYPOINTS]
        self._face_ids = torch.tensor([face_vertex_ids[k] for k in cv.COCO_FACE_KEYPOINTS], dtype=torch.long,
                                      device=self.device)
        self._h36m = None if h36m_regressor is None else torch.tensor(h36m_regressor, **f32)
        self.joint_sets: tuple[str, ...] = ("smpl24", "coco17") + (("h36m17",) if h36m_regressor is not None else ())
        self._set_sizes = {name: len(cv.JOINT_SETS[name]) for name in self.joint_sets}
        self._from_skeleton = torch.tensor(self._skeleton_set_matrix(), **f32)  # (24 + 17, J)

    @classmethod
    def load(cls, config: BodyModelConfig, gender: str, device: str = "cpu") -> BodyModel:
        """The model for ``gender`` from ``config.model_dir`` (FileNotFoundError naming the
        expected paths when it is missing; ModelFileError when it is malformed)."""
        path = find_model_file(config, gender)
        data = load_model_file(path)
        num_vertices = int(np.asarray(data["v_template"]).shape[0]) if "v_template" in data else 0
        face_ids = _face_vertex_ids(path, config, num_vertices)
        reg = None if config.h36m_regressor is None else load_h36m_regressor(config.h36m_regressor, num_vertices)
        return cls(data, face_ids, model_type=config.model_type, num_betas=config.num_betas,
                   h36m_regressor=reg, device=device, model_file=str(path))

    # -- regressors ------------------------------------------------------------------------

    def _build_regressors(self, j_reg: np.ndarray, face_ids: dict[str, int],
                          h36m: np.ndarray | None) -> dict[str, np.ndarray]:
        smpl24 = j_reg[_smpl24_rows(self.joint_names)]
        coco = np.zeros((len(cv.COCO_JOINTS), self.num_vertices), np.float64)
        for k in cv.COCO_FACE_KEYPOINTS:
            coco[cv.COCO_JOINTS.index(k), face_ids[k]] = 1.0
        for k, combo in _coco_body_weights(self.joint_names).items():
            coco[cv.COCO_JOINTS.index(k)] = sum(w * j_reg[j] for j, w in combo)
        out = {"smpl24": smpl24.astype(np.float32), "coco17": coco.astype(np.float32)}
        if h36m is not None:
            out["h36m17"] = h36m.astype(np.float32)
        return out

    def joint_regressors(self) -> dict[str, np.ndarray]:
        """Per joint set, a (J, V) float32 matrix mapping vertices to that set's joints
        (exact for the skeleton sets in the rest pose; see the module docstring)."""
        return {k: v.copy() for k, v in self._regressors.items()}

    def template(self) -> np.ndarray:
        """(V, 3) float32 rest-pose vertices with zero betas, root-centred (pelvis at 0)."""
        v = self._v_template.reshape(-1, 3) - self._j_template[0]
        return v.cpu().numpy().astype(np.float32)

    # -- forward ---------------------------------------------------------------------------

    def _pose_matrix(self, poses: torch.Tensor) -> torch.Tensor:
        """Model-layout axis-angle (B, 3 * num_joints) from AMASS SMPL+H poses (B, 156)."""
        import torch

        if poses.shape[1] == 3 * self.num_joints:
            return poses
        if poses.shape[1] == cv.AMASS_SMPLH_POSE_DIM and self.num_joints == len(cv.SMPL_JOINTS):
            body = poses[:, : 3 * cv.NUM_BODY_JOINTS]
            rest = torch.zeros((poses.shape[0], 3 * (self.num_joints - cv.NUM_BODY_JOINTS)),
                               dtype=poses.dtype, device=poses.device)
            return torch.cat([body, rest], dim=1)
        raise ValueError(f"poses have {poses.shape[1]} values; this model takes {3 * self.num_joints}")

    def forward_torch(self, poses: torch.Tensor | np.ndarray, betas: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """``forward`` on and into float32 torch tensors on the model's device (no copies to numpy).

        poses: (B, 156) AMASS SMPL+H axis-angle, or (B, 3 * num_joints) in the model's joint order.
        betas: (B, any) shape coefficients, truncated or zero-padded to ``num_betas``.
        Returns what ``forward`` returns, as tensors (views of buffers padded to whole blocks).

        Runs in blocks of exactly ``self.block`` samples, the last one padded with zeros: BLAS picks
        its kernel and its split across threads by the matrix shape, and vectorised sin/cos/sqrt
        take another code path for a tail shorter than a vector, so a batch-sized product would make a
        mesh's last bits depend on which other meshes share its batch. With every operation at one
        fixed shape, each sample's result depends on its own inputs only. The block is large because the
        pose-corrective matrix (38 MB for SMPL+H) is read from memory once per block.
        """
        import torch

        poses = torch.as_tensor(poses, dtype=torch.float32, device=self.device)
        betas = torch.as_tensor(betas, dtype=torch.float32, device=self.device)
        if poses.ndim != 2 or betas.ndim != 2 or poses.shape[0] != betas.shape[0]:
            raise ValueError(f"poses (B, P) and betas (B, nb) expected, got {tuple(poses.shape)}, {tuple(betas.shape)}")
        b = poses.shape[0]
        nb, blk = self.num_betas, self.block
        pose = self._pose_matrix(poses)
        n = b + (-b % blk)
        # Inputs padded to whole blocks (zero pose, zero betas: the rest pose), outputs allocated once.
        padded_pose = pose.new_zeros((n, pose.shape[1]))
        padded_pose[:b] = pose
        padded_betas = pose.new_zeros((n, nb))
        padded_betas[:b, : min(nb, betas.shape[1])] = betas[:, :nb]
        sizes = {"vertices": self.num_vertices, "skeleton": self.num_joints, **self._set_sizes}
        out = {k: pose.new_empty((n, j, 3)) for k, j in sizes.items()}
        for i in range(0, n, blk):
            self._forward_block(padded_pose[i: i + blk], padded_betas[i: i + blk],
                                {k: v[i: i + blk] for k, v in out.items()})
        return {k: v[:b] for k, v in out.items()}

    def _forward_block(self, pose: torch.Tensor, betas: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """One block: pose (block, 3 * num_joints), betas (block, num_betas) -> root-centred vertices,
        skeleton and joint sets, written into ``out``'s (block, J, 3) tensors."""
        from mpt_data.kinematics import lbs

        verts, joints = lbs(betas, pose, self._v_template, self._shapedirs, self._posedirs,
                            self._j_template, self._j_shapedirs, self._levels, self._skinning, out=out["vertices"])
        out["skeleton"].copy_(joints)
        for name, value in self.joint_sets_from(out["vertices"], joints).items():
            out[name].copy_(value)

    def _skeleton_set_matrix(self) -> np.ndarray:
        """(24 + 17, num_joints): the smpl24 and coco17 joints as combinations of the skeleton joints
        (coco17's face rows are zero: those keypoints are mesh vertices)."""
        smpl24 = _smpl24_rows(self.joint_names)
        m = np.zeros((len(cv.SMPL_JOINTS) + len(cv.COCO_JOINTS), self.num_joints), np.float64)
        m[np.arange(len(smpl24)), smpl24] = 1.0
        for k, combo in _coco_body_weights(self.joint_names).items():
            for j, w in combo:
                m[len(smpl24) + cv.COCO_JOINTS.index(k), j] += w
        return m

    def joint_sets_from(self, vertices: torch.Tensor, skeleton: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each set in ``joint_sets`` (B, J_set, 3) from posed vertices (B, V, 3) and skeleton joints
        (B, num_joints, 3), same frame and units (see the module docstring for each set's rule).

        smpl24 and coco17's body keypoints are one (41, num_joints) matrix applied to the skeleton; the
        one-hot rows reproduce the skeleton joints exactly. coco17's face keypoints are copied vertices.
        """
        import torch

        both = torch.matmul(self._from_skeleton, skeleton)  # (B, 41, 3)
        n24 = len(cv.SMPL_JOINTS)
        coco = both[:, n24:]
        coco[:, self._face_rows] = vertices[:, self._face_ids]
        out = {"smpl24": both[:, :n24], "coco17": coco}
        if self._h36m is not None:
            out["h36m17"] = torch.matmul(self._h36m, vertices)
        return out

    def forward(self, poses: np.ndarray | torch.Tensor, betas: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Pose a batch.

        poses: (B, 156) AMASS SMPL+H axis-angle (radians), or (B, 3 * num_joints) in the model's joint order.
        betas: (B, any) shape coefficients, truncated or zero-padded to ``num_betas``.

        Returns float32 numpy arrays, root-centred, metres, AMASS world axes (z up):
        ``vertices`` (B, V, 3), ``skeleton`` (B, num_joints, 3) (all model joints) and one
        (B, J, 3) array per name in ``joint_sets`` (``smpl24``, ``coco17``, ``h36m17``).
        """
        import torch

        with torch.inference_mode():
            out = self.forward_torch(poses, betas)
            return {k: v.detach().cpu().numpy() for k, v in out.items()}


def load_body_models(
    config: BodyModelConfig, genders: Sequence[str] = GENDERS, device: str = "cpu"
) -> dict[str, BodyModel]:
    """``BodyModel.load`` for each gender; fails at the first missing or bad file."""
    return {g: BodyModel.load(config, g, device) for g in genders}
