"""The meshes a recipe makes: SMPL / SMPL+H bodies, or MANO right hands (a left hand mirrored into a right one).

Everything the builder does that depends on the body-model type or the source kind lives here: listing and
reading the source files (`find_source_files`, `SequenceReader`), loading the model (once per process, by the
caller), the forward pass of a batch of sampled frames, the pose and shape stored per mesh, the heatmap joint
set, and the driver's static content (template, faces, coarse levels, regressors, the model files' hashes).
`mpt_data.build` runs the same plan, projection and write for all of them.

Bodies (`body_model.type: smplh | smpl`): one mesh per sampled frame, the file's betas (truncated or
zero-padded to the recipe's count), COCO-17 heatmap joints, root (placement and centring) at the pelvis.

Hands (`body_model.type: mano`): AMASS's SMPL+H files carry both hands' finger motion. Each sampled frame makes
one mesh per side listed in the recipe's `hands`, in that order, all with the right-hand MANO model:
- the right hand as posed: wrist orientation = the body's global rotation of the right wrist (the kinematic
  chain pelvis -> right wrist composed, so it includes the body's root orientation in AMASS's z-up world),
  then the 45 right-hand finger values;
- the left hand mirrored into a right hand through the body's sagittal plane: the left wrist's global rotation
  and the left finger values with each axis-angle (x, y, z) -> (x, -y, -z)
  (`mpt_data.hand.hand_pose_from_smplh`, `mirror_axis_angle`).
Shape: zero betas (the MANO mean hand). AMASS's betas describe the SMPL+H body's shape, whose hands are not
MANO's shape space, so they are not carried over. Root: the wrist (MANO joint 0) is at the origin of the
stored vertices and joints, and it is what the rig places at its subject position: the stored root-relative
targets and `conventions.root_index("hand21")` agree, and FreiHAND's scores are taken after Procrustes
alignment, where the root choice does not matter. The stored pose is MANO's 48 values (global 3 + 15 x 3),
heatmap joints `hand21` (K = 21).

Hands from MANO parameter files (`sources.kind: mano_params`, `body_model.type: mano`, no `hands`): each sampled
frame of a file makes one mesh, with the right-hand model. The stored pose is the file's 48 values as
`mpt_data.mano_params.read_params` returns them: a left file's mirrored into a right hand, a file with
`flat_hand_mean: false` made relative to the flat hand (the model's `hands_mean` added), so every stored pose
poses the flat-mean model. Shape: the file's betas, truncated or zero-padded to the model's count (they are
MANO's own shape space here, so they are carried over). Root and joints as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpt_data import conventions, schema
from mpt_data.recipe import MANO_PARAMS_SOURCE, BuildConfig, RecipeError

HAND_TYPE = "mano"
HAND_JOINT_SET = "hand21"
HAND_MODEL_SIDE = "right"  # every hand mesh is made with the right-hand model (left hands are mirrored)
MANO_POSE_DIM = 48  # global wrist rotation 3 + 15 finger joints x 3
PARAMS_SOURCE = MANO_PARAMS_SOURCE  # MANO parameter files instead of AMASS motions (recipe.SOURCE_KINDS)


def find_source_files(source_kind: str, root: str | Path) -> list[Path]:
    """The source files under `root`, sorted by relative path: AMASS motion files, or every `*.npz` of a
    parameter folder (entries that are not regular files included, for the reader to give their reason)."""
    if source_kind == PARAMS_SOURCE:
        from mpt_data.mano_params import find_param_files

        return find_param_files(root)
    from mpt_data.amass import find_motion_files

    return find_motion_files(root)


@dataclass(frozen=True)
class SequenceReader:
    """Reads one source file of the recipe's kind into the record the plan and the build tasks use: an AMASS
    `Motion` (`amass.read_motion`) or `mano_params.HandParams` (`read_params` with the right-hand model's
    `hands_mean`). Small and picklable, so the driver makes it once and ships it to the cluster's tasks.
    Called as `reader(path, root, fps_overrides)`; raises `amass.MotionError` for a file that cannot be used."""

    kind: str = "amass"
    hands_mean: tuple[float, ...] = ()  # mano_params: the MANO file's (45,) hands_mean

    def __call__(self, path: str | Path, root: str | Path, fps_overrides=None):
        if self.kind == PARAMS_SOURCE:
            from mpt_data.mano_params import read_params

            return read_params(path, root, fps_overrides, hands_mean=np.asarray(self.hands_mean, np.float64))
        from mpt_data.amass import read_motion

        return read_motion(path, root, fps_overrides)


def is_hand(model_type: str) -> bool:
    """Whether `body_model.type` selects the hand path."""
    return model_type == HAND_TYPE


def heatmap_joint_set(model_type: str) -> str:
    """The joint set of `views/joints2d` (the heatmap channels) for a body-model type."""
    return HAND_JOINT_SET if is_hand(model_type) else conventions.HEATMAP_JOINT_SET


def pose_dim(model_type: str) -> int:
    """Values per stored pose (`meshes/pose`): MANO's 48, or AMASS's SMPL+H 156."""
    return MANO_POSE_DIM if is_hand(model_type) else conventions.AMASS_SMPLH_POSE_DIM


def model_cache_key(model_type: str, gender: str) -> str:
    """The gender part of a per-process model cache key: hands ignore the file's gender (one MANO model)."""
    return "" if is_hand(model_type) else gender


def load_model(model_dir: str, model_type: str, gender: str, num_betas: int, h36m: str | None,
               device: str = "cpu"):
    """The body model of `gender`, or the right-hand MANO model (any gender), on `device`."""
    if is_hand(model_type):
        from mpt_data.hand import HandModel, HandModelConfig

        return HandModel.load(HandModelConfig(model_dir=model_dir, num_betas=num_betas), HAND_MODEL_SIDE, device)
    from mpt_data.body import BodyModel, BodyModelConfig

    return BodyModel.load(BodyModelConfig(model_dir=model_dir, model_type=model_type, num_betas=num_betas,
                                          h36m_regressor=h36m), gender, device)


def mesh_betas(model_type: str, file_betas: np.ndarray, num: int, source_kind: str = "amass") -> np.ndarray:
    """(num,) float32 shape of every mesh of one sequence: the file's betas truncated or zero-padded (bodies,
    and hands from MANO parameter files), zeros (hands from AMASS: see the module docstring)."""
    out = np.zeros(num, dtype=np.float32)
    if not is_hand(model_type) or source_kind == PARAMS_SOURCE:
        k = min(num, file_betas.shape[0])
        out[:k] = file_betas[:k]
    return out


def forward_frames(model, model_type: str, poses: np.ndarray, betas: np.ndarray, sides: np.ndarray | None = None,
                   hands: tuple[str, ...] = (), source_kind: str = "amass",
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The meshes of a batch sharing one betas vector.

    poses: (B, 156) SMPL+H axis-angle of each mesh's source frame, or for `source_kind` mano_params (B, 48)
    right-hand MANO poses relative to the flat hand (`mano_params.HandParams.poses`). betas: (nb,).
    sides: (B,) index into `hands` of each mesh (hands from AMASS only). Returns the stored pose (B, P)
    float32 (the SMPL+H pose, or the mesh's own 48-value MANO pose), root-centred vertices (B, V, 3) and
    {joint set: (B, J, 3)}, metres, the source's world axes (AMASS's z-up world; a parameter file's frame).
    """
    if source_kind == PARAMS_SOURCE:
        if not is_hand(model_type) or poses.ndim != 2 or poses.shape[1] != MANO_POSE_DIM:
            raise ValueError(f"MANO parameter poses (B, {MANO_POSE_DIM}) pose a mano model, got {poses.shape} "
                             f"for {model_type!r}")
        stored = np.asarray(poses, np.float32)
    elif is_hand(model_type):
        from mpt_data.hand import hand_pose_from_smplh

        if sides is None or sides.shape[0] != poses.shape[0]:
            raise ValueError("hand meshes need the side of every mesh")
        stored = np.zeros((poses.shape[0], MANO_POSE_DIM), np.float32)
        for s in np.unique(sides):
            rows = sides == s
            stored[rows] = hand_pose_from_smplh(poses[rows], hands[int(s)])
    else:
        stored = np.asarray(poses, np.float32)
    out = model.forward(stored, np.repeat(betas[None], stored.shape[0], axis=0))
    return stored, out["vertices"], {name: out[name] for name in model.joint_sets}


def _file_hashes(model_files: dict[str, Path]) -> dict[str, str]:
    """{"<key>:<file name>": sha256} of the model files used and a vertex_ids.json beside each."""
    from mpt_data.amass import file_sha256

    files: dict[str, str] = {}
    for key, p in sorted(model_files.items()):
        files[f"{key}:{p.name}"] = file_sha256(p)
        ids = p.parent / "vertex_ids.json"
        if ids.is_file():
            files[f"{key}:vertex_ids.json"] = file_sha256(ids)
    return files


def _load_for_static(cfg: BuildConfig) -> tuple[Any, dict[str, Path], str, list[str]]:
    """(model whose topology the store keeps, {key: model file}, the key it came from, genders the build can
    make). RecipeError when no file is found or one is malformed."""
    from mpt_data.body import GENDERS
    from mpt_data.model_files import ModelFileError

    if is_hand(cfg.body_model_type):
        from mpt_data.hand import HandModel, HandModelConfig, find_hand_model_file

        hcfg = HandModelConfig(model_dir=cfg.body_model_dir, num_betas=cfg.num_betas)
        try:
            path = find_hand_model_file(hcfg, HAND_MODEL_SIDE)
            model = HandModel.load(hcfg, HAND_MODEL_SIDE)
        except (ModelFileError, FileNotFoundError, ValueError) as err:
            raise RecipeError(f"hand model: {err}") from err
        # A parameter file has no gender (""): one MANO model poses every file.
        genders = sorted(GENDERS) + ([""] if cfg.source_kind == PARAMS_SOURCE else [])
        return model, {HAND_MODEL_SIDE: path}, HAND_MODEL_SIDE, genders

    from mpt_data.body import BodyModel, BodyModelConfig, find_model_file

    bcfg = BodyModelConfig(model_dir=cfg.body_model_dir, model_type=cfg.body_model_type, num_betas=cfg.num_betas,
                           h36m_regressor=cfg.h36m_regressor)
    found: dict[str, Path] = {}
    for g in GENDERS:
        try:
            found[g] = find_model_file(bcfg, g)
        except FileNotFoundError:
            continue
    if not found:
        try:
            find_model_file(bcfg, "neutral")
        except FileNotFoundError as err:
            raise RecipeError(str(err)) from err
    # The topology comes from the neutral model when there is one (all genders share faces and joint trees).
    gender = next(g for g in ("neutral", "male", "female") if g in found)
    try:
        model = BodyModel.load(bcfg, gender)
    except (ModelFileError, FileNotFoundError, ValueError) as err:
        raise RecipeError(f"body model: {err}") from err
    return model, found, gender, sorted(found)


def static_content(cfg: BuildConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The driver-owned mesh arrays (template, faces, coarse levels, regressors) and facts about the model:
    {"files" (hashes, for the recipe hash), "genders" (the motion files' genders it can make), "num_vertices",
    "num_betas", "joint_sets" ({name: J}), "heatmap_joint_set", "pose_dim", "describe" (the store's
    `body_model` attribute), "reader" (the `SequenceReader` of the recipe's source kind)}. RecipeError when no
    model file is found or one is malformed."""
    from mpt_data.amass import file_sha256

    model, model_files, source, genders = _load_for_static(cfg)
    files = _file_hashes(model_files)
    if cfg.h36m_regressor:
        files["h36m_regressor"] = file_sha256(cfg.h36m_regressor)
    arrays: dict[str, np.ndarray] = {
        schema.TOPOLOGY_TEMPLATE: model.template().astype(np.float32),
        schema.TOPOLOGY_FACES: model.faces.astype(np.int32),
    }
    regressors = model.joint_regressors()
    for name, reg in regressors.items():
        arrays[f"{schema.TOPOLOGY_REGRESSORS}/{name}"] = reg.astype(np.float32)
    arrays.update(topology_arrays(arrays[schema.TOPOLOGY_TEMPLATE], arrays[schema.TOPOLOGY_FACES]))
    describe: dict[str, Any] = {"type": cfg.body_model_type, "num_vertices": model.num_vertices,
                                "num_joints": model.num_joints, "num_betas": model.num_betas,
                                "topology_from": source, "files": files}
    reader = SequenceReader()
    if cfg.source_kind == PARAMS_SOURCE:
        reader = SequenceReader(PARAMS_SOURCE, tuple(float(x) for x in model.hands_mean))
        describe.update(source=PARAMS_SOURCE, sides="each file's side key (default right)", model_side=HAND_MODEL_SIDE,
                        left_hands="mirrored into the right model",
                        betas="from the parameter files (truncated or zero-padded to num_betas)",
                        pose="the files' pose relative to the flat hand "
                             "(hands_mean added where flat_hand_mean is false)",
                        root="wrist (MANO joint 0)")
    elif is_hand(cfg.body_model_type):  # unchanged for AMASS hand recipes: this attribute is in their fingerprint
        describe.update(sides=list(cfg.hands), model_side=HAND_MODEL_SIDE, left_hands="mirrored into the right model",
                        betas="zero (MANO mean shape)", root="wrist (MANO joint 0)")
    info = {
        "files": files,
        "genders": genders,
        "num_vertices": model.num_vertices,
        "num_betas": model.num_betas,
        "joint_sets": {name: int(reg.shape[0]) for name, reg in regressors.items()},
        "heatmap_joint_set": heatmap_joint_set(cfg.body_model_type),
        "pose_dim": pose_dim(cfg.body_model_type),
        "describe": describe,
        "reader": reader,
    }
    return arrays, info


def topology_arrays(template: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """The coarse-mesh hierarchy (V -> ~V/4 -> ~V/16) as `topology/level<l>/...` arrays."""
    from mpt_data.topology import coarse_hierarchy

    out = {}
    for level, lv in enumerate(coarse_hierarchy(template, faces), start=1):
        prefix = schema.TOPOLOGY_LEVEL.format(level=level)
        out[f"{prefix}/{schema.LEVEL_VERTEX_IDS}"] = np.asarray(lv.vertex_ids, np.int32)
        out[f"{prefix}/{schema.LEVEL_FACES}"] = np.asarray(lv.faces, np.int32)
        out[f"{prefix}/{schema.LEVEL_UP_INDEX}"] = np.asarray(lv.up_index, np.int32)
        out[f"{prefix}/{schema.LEVEL_UP_WEIGHT}"] = np.asarray(lv.up_weight, np.float32)
    return out
