"""Body models: read SMPL / SMPL+H files safely, pose them in batches, derive joint sets.

Files. ``load_model_file`` reads ``.npz`` and ``.pkl`` model files. The official SMPL
``.pkl`` files contain chumpy objects and scipy sparse matrices, and chumpy breaks on
current numpy; they are read by a restricted unpickler that admits only numpy's array
reconstruction, scipy's CSC/CSR matrices (rebuilt as dense arrays without importing
scipy) and chumpy's ``Ch`` (replaced by its underlying array, without chumpy installed).
Any other global in a pickle is refused with an error naming the file, so a model file
cannot run code. AMASS's SMPL+H ``model.npz`` files have no hand PCA keys; they load too.

Forward. ``lbs`` is linear blend skinning as a free function of explicit tensors (the
model's own shape directions, pose correctives, skinning weights and kinematic tree), built
on smplx's ``batch_rodrigues`` / ``batch_rigid_transform``; ``BodyModel.forward`` runs it
in fixed blocks, root-centres the result and assembles the joint sets from the posed
vertices and skeleton (``BodyModel.joint_sets_from``). It equals ``smplx.SMPLH(use_pca=False,
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

import io
import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mpt_data import conventions as cv

if TYPE_CHECKING:  # torch is imported where it is used: `mpt_data.body`'s file readers work without it
    import torch

GENDERS: tuple[str, ...] = ("male", "female", "neutral")
MODEL_TYPES: tuple[str, ...] = ("smplh", "smpl")
REQUIRED_KEYS: tuple[str, ...] = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs")
FORWARD_BLOCK = 16  # samples per body-model product: every matmul runs at one shape (see forward_torch)


class ModelFileError(ValueError):
    """A body-model file that is missing, unreadable, unsafe or malformed."""


# ---------------------------------------------------------------------------------------
# Restricted unpickling


class _PickledSparse:
    """Stand-in for a pickled scipy CSC/CSR matrix: keeps its state, becomes dense."""

    layout = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def dense(self) -> np.ndarray:
        st = self.state if isinstance(self.state, dict) else {}
        shape = st.get("_shape", st.get("shape"))
        if shape is None or not all(k in st for k in ("data", "indices", "indptr")):
            raise ModelFileError("pickled sparse matrix without data/indices/indptr/shape")
        data = np.asarray(st["data"])
        indices = np.asarray(st["indices"], dtype=np.int64)
        indptr = np.asarray(st["indptr"], dtype=np.int64)
        out = np.zeros(tuple(int(s) for s in shape), dtype=data.dtype)
        outer = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
        if self.layout == "csc":
            np.add.at(out, (indices, outer), data)
        else:
            np.add.at(out, (outer, indices), data)
        return out


class _PickledCsc(_PickledSparse):
    layout = "csc"


class _PickledCsr(_PickledSparse):
    layout = "csr"


class _PickledChumpy:
    """Stand-in for a chumpy ``Ch``: its underlying value is the ``x`` attribute."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def array(self) -> np.ndarray:
        if not isinstance(self.state, dict) or "x" not in self.state:
            raise ModelFileError("pickled chumpy object without an 'x' array")
        return np.asarray(self.state["x"])


_STAND_INS = (_PickledCsc, _PickledCsr, _PickledChumpy)


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor restricted to our stand-ins built on plain object.
    if cls not in _STAND_INS or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from {base!r}")
    return object.__new__(cls)


def _safe_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles of bytes at protocols 0-2 call _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 keeps internals in _core
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("_codecs", "encode"): _safe_encode,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("chumpy.ch", "Ch"): _PickledChumpy,
    ("chumpy", "Ch"): _PickledChumpy,
    **{(m, n): _PickledCsc for m in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse")
       for n in ("csc_matrix", "csc_array")},
    **{(m, n): _PickledCsr for m in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse")
       for n in ("csr_matrix", "csr_array")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a model file") from None


def _plain(value: Any, key: str) -> np.ndarray | None:
    """A pickled value as an array; None for metadata that is not array-like (dicts)."""
    if isinstance(value, _PickledSparse):
        return value.dense()
    if isinstance(value, _PickledChumpy):
        return value.array()
    if isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ():
        return _plain(value.item(), key)
    if isinstance(value, (dict, type(None))):
        return None
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise ModelFileError(f"key {key!r} holds Python objects, not an array")
    return arr


def _unpickle(stream: io.BufferedIOBase | io.BytesIO, where: str) -> Any:
    try:
        return _RestrictedUnpickler(stream, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise ModelFileError(f"{where}: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ModelFileError(f"{where}: unreadable pickle ({type(e).__name__}: {e})") from e


def _read_npz(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            key = member[: -len(".npy")]
            with zf.open(member) as f:
                raw = io.BytesIO(f.read())
            version = np.lib.format.read_magic(raw)
            if version == (1, 0):
                dtype = np.lib.format.read_array_header_1_0(raw)[2]
            elif version == (2, 0):
                dtype = np.lib.format.read_array_header_2_0(raw)[2]
            else:
                raise ModelFileError(f"{path} [{key}]: unsupported .npy format version {version}")
            if dtype.hasobject:
                out[key] = _unpickle(raw, f"{path} [{key}]")
            else:
                raw.seek(0)
                out[key] = np.lib.format.read_array(raw, allow_pickle=False)
    return out


def load_model_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a body-model file (``.npz`` or ``.pkl``), as plain numpy arrays.

    Sparse matrices become dense, chumpy values become their arrays, strings stay 0-d
    string arrays; non-array metadata (dicts, None) is left out. Raises
    ``FileNotFoundError`` for a missing file and ``ModelFileError`` (naming the file) for an
    unreadable one or a pickle that references anything outside the allowed globals.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"body-model file {path} does not exist")
    try:
        if path.suffix == ".npz":
            raw = _read_npz(path)
        elif path.suffix == ".pkl":
            with open(path, "rb") as f:
                raw = _unpickle(f, str(path))
            if not isinstance(raw, dict):
                raise ModelFileError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
        else:
            raise ModelFileError(f"{path}: unknown model file type (expected .npz or .pkl)")
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(f"{path}: unreadable model file ({e})") from e
    out = {}
    for key, value in raw.items():
        try:
            arr = _plain(value, key)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: {e}") from e
        if arr is not None:
            out[str(key)] = arr
    return out


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
        raise ValueError(f"unknown gender {gender!r}; expected one of {GENDERS}")
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
        f"no {config.model_type.upper()} body model for gender {gender!r}: looked for {looked}. "
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
# Linear blend skinning


def lbs(
    betas: torch.Tensor,
    pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor | None,
    joints_template: torch.Tensor,
    joint_shapedirs: torch.Tensor,
    parents: torch.Tensor,
    lbs_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear blend skinning of a batch: smplx's ``lbs()`` with the rest joints regressed ahead of time.

    B samples, V vertices, J joints, nb shape coefficients; metres, model axes, float32 on one device.

    betas: (B, nb) shape coefficients.
    pose: (B, 3 J) axis-angle rotation of each joint relative to its parent, root first (radians).
    v_template: (V, 3) rest-pose vertices.
    shapedirs: (nb, 3 V) shape directions, each row a flattened (V, 3) displacement.
    posedirs: (9 (J - 1), 3 V) pose correctives, rows indexed by the flattened (R_j - I) of joints
        1..J-1, or None for a model without them (its product would only add zeros).
    joints_template: (J, 3) rest joints of ``v_template`` (``J_regressor @ v_template``).
    joint_shapedirs: (nb, 3 J) the joint regressor applied to each shape direction. Rest joints are
        linear in betas, so regressing the template and directions once replaces smplx's
        ``J_regressor @ v_shaped`` per batch (a (J, V) product per sample).
    parents: (J,) int64 parent of each joint, ``parents[0] = -1``.
    lbs_weights: (V, J) skinning weights, rows summing to 1.

    Returns (vertices (B, V, 3), joints (B, J, 3)): posed, in the model frame (not root-centred).
    """
    import torch
    from smplx.lbs import batch_rigid_transform, batch_rodrigues

    b = pose.shape[0]
    nv, nj = v_template.shape[0], joints_template.shape[0]
    v_shaped = (v_template.reshape(1, -1) + betas @ shapedirs).reshape(b, nv, 3)
    j_rest = (joints_template.reshape(1, -1) + betas @ joint_shapedirs).reshape(b, nj, 3)
    rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(b, nj, 3, 3)
    if posedirs is not None:
        ident = torch.eye(3, dtype=rot.dtype, device=rot.device)
        feat = (rot[:, 1:] - ident).reshape(b, -1)
        v_posed = v_shaped + (feat @ posedirs).reshape(b, nv, 3)
    else:
        v_posed = v_shaped
    joints, rel = batch_rigid_transform(rot, j_rest, parents, dtype=torch.float32)
    # Blend the joints' 3x4 transforms per vertex as one large matrix product, laid out
    # (V, B, 4, 3) (columns outermost) so that applying them is four contiguous
    # multiply-adds over (V, B, 3) rather than batched 3x3 products.
    rows = rel[:, :, :3, :].transpose(2, 3).permute(1, 0, 2, 3).reshape(nj, b * 12)
    t = (lbs_weights @ rows).reshape(nv, b, 4, 3)
    vp = v_posed.permute(1, 0, 2)  # (V, B, 3)
    verts = t[:, :, 3].clone()
    for k in range(3):
        verts.addcmul_(t[:, :, k], vp[:, :, k: k + 1])
    return verts.permute(1, 0, 2).contiguous(), joints


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

        shapedirs = shapedirs[:, :, : self.num_betas]
        f32 = dict(dtype=torch.float32, device=self.device)
        self._v_template = torch.tensor(v_template, **f32)
        self._shapedirs = torch.tensor(shapedirs.reshape(-1, self.num_betas).T.copy(), **f32)  # (nb, V*3)
        # Rest joints are linear in betas: regress template and shape directions once.
        self._j_template = torch.tensor(j_reg @ v_template, **f32)
        self._j_shapedirs = torch.tensor(
            np.einsum("jv,vcb->bjc", j_reg, shapedirs).reshape(self.num_betas, -1), **f32
        )  # (nb, J*3)
        self._posedirs = torch.tensor(posedirs.reshape(-1, posedirs.shape[2]).T.copy(), **f32)  # (P, V*3)
        self._weights = torch.tensor(weights, **f32)
        self._parents = torch.tensor(parents, dtype=torch.long, device=self.device)

        self._regressors = self._build_regressors(j_reg, dict(face_vertex_ids), h36m_regressor)
        self._face_ids = torch.tensor([face_vertex_ids[k] for k in cv.COCO_FACE_KEYPOINTS], dtype=torch.long,
                                      device=self.device)
        self._coco_body = _coco_body_weights(self.joint_names)
        self._smpl24_rows = torch.tensor(_smpl24_rows(self.joint_names), dtype=torch.long, device=self.device)
        self._h36m = None if h36m_regressor is None else torch.tensor(h36m_regressor, **f32)
        self.joint_sets: tuple[str, ...] = ("smpl24", "coco17") + (("h36m17",) if h36m_regressor is not None else ())

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
        v = self._v_template - self._j_template[0]
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
        Returns what ``forward`` returns, as tensors.

        Runs in blocks of exactly ``FORWARD_BLOCK`` samples, the last one padded with zeros: BLAS
        picks its kernel and its split across threads by the matrix shape (on MKL, 1-3 rows, or 5-11
        rows with two threads, round differently from larger batches), so a batch-sized matmul
        would make a mesh's last bits depend on which other meshes share its batch. With every
        product at one fixed shape, each sample's result depends on its own inputs only.
        """
        import torch

        poses = torch.as_tensor(poses, dtype=torch.float32, device=self.device)
        betas = torch.as_tensor(betas, dtype=torch.float32, device=self.device)
        if poses.ndim != 2 or betas.ndim != 2 or poses.shape[0] != betas.shape[0]:
            raise ValueError(f"poses (B, P) and betas (B, nb) expected, got {tuple(poses.shape)}, {tuple(betas.shape)}")
        b = poses.shape[0]
        nb = self.num_betas
        if betas.shape[1] >= nb:
            betas = betas[:, :nb]
        else:
            betas = torch.cat([betas, betas.new_zeros((b, nb - betas.shape[1]))], dim=1)
        pose = self._pose_matrix(poses)
        pad = -b % FORWARD_BLOCK
        if pad:
            pose = torch.cat([pose, pose.new_zeros((pad, pose.shape[1]))])
            betas = torch.cat([betas, betas.new_zeros((pad, nb))])
        blocks = [self._forward_block(pose[i: i + FORWARD_BLOCK], betas[i: i + FORWARD_BLOCK])
                  for i in range(0, b + pad, FORWARD_BLOCK)]
        return {k: torch.cat([blk[k] for blk in blocks])[:b] for k in blocks[0]}

    def _forward_block(self, pose: torch.Tensor, betas: torch.Tensor) -> dict[str, torch.Tensor]:
        """One block: pose (FORWARD_BLOCK, 3 * num_joints), betas (FORWARD_BLOCK, num_betas) -> root-centred
        vertices, skeleton and joint sets."""
        verts, joints = lbs(betas, pose, self._v_template, self._shapedirs,
                            self._posedirs if self.has_pose_correctives else None,
                            self._j_template, self._j_shapedirs, self._parents, self._weights)
        root = joints[:, :1]
        verts.sub_(root)
        joints = joints - root
        return {"vertices": verts, "skeleton": joints, **self.joint_sets_from(verts, joints)}

    def joint_sets_from(self, vertices: torch.Tensor, skeleton: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each set in ``joint_sets`` (B, J_set, 3) from posed vertices (B, V, 3) and skeleton joints
        (B, num_joints, 3), same frame and units (see the module docstring for each set's rule)."""
        import torch

        b = vertices.shape[0]
        out = {"smpl24": skeleton[:, self._smpl24_rows]}
        coco = torch.empty((b, len(cv.COCO_JOINTS), 3), dtype=vertices.dtype, device=vertices.device)
        coco[:, : len(cv.COCO_FACE_KEYPOINTS)] = vertices[:, self._face_ids]
        for k, combo in self._coco_body.items():
            coco[:, cv.COCO_JOINTS.index(k)] = sum(w * skeleton[:, j] for j, w in combo)
        out["coco17"] = coco
        if self._h36m is not None:
            out["h36m17"] = torch.einsum("jv,bvc->bjc", self._h36m, vertices)
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
