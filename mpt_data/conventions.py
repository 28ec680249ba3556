"""Joint orders, kinematic trees, flip pairs and skeleton edges: the one source of truth.

Every other module (data side and trainer) takes its joint conventions from here.
Indices are 0-based. "left"/"right" are the subject's own left and right.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------
# SMPL: 24 joints. SMPL+H shares the first 22 and replaces SMPL's two hand joints by
# 2 x 15 finger joints (52 in all). SMPL-X adds jaw and eyes (55).
SMPL_JOINTS: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)
SMPL_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (22, 23),
)

NUM_BODY_JOINTS = 22  # joints shared by SMPL, SMPL+H and SMPL-X (root included)

_FINGERS = ("index", "middle", "pinky", "ring", "thumb")
SMPLH_HAND_JOINTS: tuple[str, ...] = tuple(
    f"{side}_{finger}{k}" for side in ("left", "right") for finger in _FINGERS for k in (1, 2, 3)
)
SMPLH_JOINTS: tuple[str, ...] = SMPL_JOINTS[:NUM_BODY_JOINTS] + SMPLH_HAND_JOINTS


def _hand_parents(wrist: int, first: int) -> list[int]:
    parents = []
    for f in range(len(_FINGERS)):
        base = first + 3 * f
        parents += [wrist, base, base + 1]
    return parents


SMPLH_PARENTS: tuple[int, ...] = (
    SMPL_PARENTS[:NUM_BODY_JOINTS]
    + tuple(_hand_parents(20, 22))
    + tuple(_hand_parents(21, 37))
)
# SMPL's hand joints taken from an SMPL+H skeleton: the middle-finger base joints.
SMPLH_TO_SMPL24: tuple[int, ...] = tuple(range(NUM_BODY_JOINTS)) + (
    SMPLH_JOINTS.index("left_middle1"),
    SMPLH_JOINTS.index("right_middle1"),
)

# AMASS pose vector layouts (axis-angle, 3 values per joint).
AMASS_SMPLH_POSE_DIM = 156  # root 3 + body 63 + hands 90  (52 joints)
AMASS_SMPLX_POSE_DIM = 165  # root 3 + body 63 + jaw 3 + eyes 6 + hands 90  (55 joints)
# Columns of an SMPL-X pose vector that form the SMPL+H pose vector (drop jaw and eyes).
SMPLX_TO_SMPLH_POSE_COLUMNS: tuple[int, ...] = tuple(range(66)) + tuple(range(75, 165))

# ---------------------------------------------------------------------------------------
# COCO-17: the heatmap joints (K = 17) of pre-training and of the 2D pose backbones.
COCO_JOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
    (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
COCO_FACE_KEYPOINTS: tuple[str, ...] = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")

# COCO body keypoints taken from SMPL joints (the face keypoints come from mesh vertices;
# the hips get a documented correction, see mpt_data.body).
COCO_FROM_SMPL: dict[str, str] = {
    "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow",
    "left_wrist": "left_wrist", "right_wrist": "right_wrist",
    "left_hip": "left_hip", "right_hip": "right_hip",
    "left_knee": "left_knee", "right_knee": "right_knee",
    "left_ankle": "left_ankle", "right_ankle": "right_ankle",
}
# COCO hips as fixed affine combinations of SMPL joints (weights sum to 1): COCO marks the
# hips on the outside of the pelvis, wider and higher than SMPL's hip-joint centres, so
# each is hip + 0.3 (hip - other hip) + 0.1 (hip - same-side knee). Overrides the plain
# hip entries of COCO_FROM_SMPL; mpt_data.body applies it to joints and regressors alike.
COCO_HIP_FROM_SMPL: dict[str, tuple[tuple[str, float], ...]] = {
    "left_hip": (("left_hip", 1.4), ("right_hip", -0.3), ("left_knee", -0.1)),
    "right_hip": (("right_hip", 1.4), ("left_hip", -0.3), ("right_knee", -0.1)),
}

# ---------------------------------------------------------------------------------------
# Human3.6M 17 joints, in the order of the public H36M regressor (J_regressor_h36m.npy).
H36M_JOINTS: tuple[str, ...] = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "torso", "neck", "nose", "head", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
H36M_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
H36M_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 4), (2, 5), (3, 6), (11, 14), (12, 15), (13, 16))
# Protocol-2 evaluation joints: H36M-17 without pelvis, torso and nose (14 joints).
H36M_TO_EVAL14: tuple[int, ...] = (3, 2, 1, 4, 5, 6, 16, 15, 14, 11, 12, 13, 8, 10)
H36M_PELVIS = 0

# ---------------------------------------------------------------------------------------
# MANO hands (778 vertices, 16 joints). The official MANO_RIGHT.pkl / MANO_LEFT.pkl order:
# the wrist, then per finger its three joints from the palm outwards, fingers in the order
# index, middle, pinky, ring, thumb (the order of SMPL+H's 15 joints per hand, which are MANO's).
MANO_NUM_VERTICES = 778
MANO_FINGERS: tuple[str, ...] = _FINGERS  # index, middle, pinky, ring, thumb
MANO_JOINTS: tuple[str, ...] = ("wrist",) + tuple(f"{finger}{k}" for finger in _FINGERS for k in (1, 2, 3))
MANO_PARENTS: tuple[int, ...] = (-1,) + tuple(_hand_parents(0, 1))
# Fingertip vertices of the official MANO topology: the ids smplx uses for MANO's five extra
# tip joints (smplx, `vertex_joint_selector` / `joint_names.TIP_IDS['mano']`); Mesh Graphormer,
# METRO and 4D-Humans use the same vertices. A model with another topology ships its own ids
# (the synthetic hand writes `vertex_ids.json` beside its files).
MANO_FINGERTIP_VERTEX_IDS: dict[str, int] = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "pinky": 671}

# HAND-21: FreiHAND's (and the 2D hand-pose datasets') 21 keypoints: the wrist, then per finger
# from the thumb to the little finger its base, two middle joints and its tip. The little finger
# is MANO's pinky.
HAND21_FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
HAND21_JOINTS: tuple[str, ...] = ("wrist",) + tuple(f"{finger}{k}" for finger in HAND21_FINGERS for k in (1, 2, 3, 4))
HAND21_PARENTS: tuple[int, ...] = (-1,) + tuple(0 if k == 0 else 1 + 4 * f + k - 1 for f in range(5) for k in range(4))
HAND21_SKELETON: tuple[tuple[int, int], ...] = tuple((p, c) for c, p in enumerate(HAND21_PARENTS) if p >= 0)
# HAND-21 joint k is MANO joint HAND21_FROM_MANO[k]; -1 marks a fingertip, a mesh vertex
# (MANO_FINGERTIP_VERTEX_IDS[HAND21_FINGERS[(k - 1) // 4]]).
HAND21_FROM_MANO: tuple[int, ...] = (0,) + tuple(
    MANO_JOINTS.index(f"{finger}{k}") if k < 4 else -1 for finger in HAND21_FINGERS for k in (1, 2, 3, 4)
)
HAND21_TIPS: tuple[int, ...] = tuple(k for k, m in enumerate(HAND21_FROM_MANO) if m < 0)  # rows 4, 8, 12, 16, 20

# The skeleton drawn over each heatmap joint set's 2D joints (previews, evaluation pictures).
HEATMAP_SKELETONS: dict[str, tuple[tuple[int, int], ...]] = {"coco17": COCO_SKELETON, "hand21": HAND21_SKELETON}

# ---------------------------------------------------------------------------------------
# Joint sets a store may hold, by name.
JOINT_SETS: dict[str, tuple[str, ...]] = {
    "smpl24": SMPL_JOINTS,
    "coco17": COCO_JOINTS,
    "h36m17": H36M_JOINTS,
    "hand21": HAND21_JOINTS,
}
FLIP_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    "smpl24": SMPL_FLIP_PAIRS,
    "coco17": COCO_FLIP_PAIRS,
    "h36m17": H36M_FLIP_PAIRS,
    "hand21": (),  # a store holds right hands only (left ones mirrored): nothing to swap
}
HEATMAP_JOINT_SET = "coco17"  # the K = 17 heatmap channels


def flip_permutation(joint_set: str) -> list[int]:
    """Index permutation that swaps left and right joints of ``joint_set``."""
    n = len(JOINT_SETS[joint_set])
    perm = list(range(n))
    for a, b in FLIP_PAIRS[joint_set]:
        perm[a], perm[b] = b, a
    return perm


def pelvis_index(joint_set: str) -> int | None:
    """Index of the pelvis in ``joint_set``; COCO has none (use the hip midpoint)."""
    names = JOINT_SETS[joint_set]
    return names.index("pelvis") if "pelvis" in names else None


def root_index(joint_set: str) -> int | None:
    """Index of the joint a root-centred mesh has at the origin: the pelvis of a body set, the wrist of
    ``hand21``; None for a set without one (COCO: use the hip midpoint)."""
    names = JOINT_SETS[joint_set]
    for root in ("pelvis", "wrist"):
        if root in names:
            return names.index(root)
    return None


# Vertex ids of the COCO face keypoints on the official SMPL / SMPL+H topology (6890
# vertices). A body model with another topology ships its own ids (the synthetic model
# writes them to `vertex_ids.json` beside its files).
SMPL_FACE_VERTEX_IDS: dict[str, int] = {
    "nose": 332, "left_eye": 2800, "right_eye": 6260, "left_ear": 583, "right_ear": 4071,
}
SMPL_NUM_VERTICES = 6890

# ---------------------------------------------------------------------------------------
# SPIN-style image annotation files (`part` (N,24,3) 2D, `S` (N,24,4) 3D): their 24
# ground-truth joints. 0-11 are the LSP-14 limbs, then LSP neck and head top, MPII pelvis
# and thorax, H36M spine, jaw and head, then the five COCO face points. Kept out of
# JOINT_SETS on purpose: no body-model regressor produces this set.
SPIN_JOINTS: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck", "head_top", "pelvis", "thorax", "spine", "jaw", "head",
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
SPIN_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (20, 21), (22, 23),
)
# COCO-17 joint k is SPIN joint SPIN_TO_COCO[k].
SPIN_TO_COCO: tuple[int, ...] = tuple(SPIN_JOINTS.index(name) for name in COCO_JOINTS)


def permutation_from_pairs(num_joints: int, pairs: tuple[tuple[int, int], ...]) -> list[int]:
    """Index permutation of ``num_joints`` joints that swaps each pair (left <-> right)."""
    perm = list(range(num_joints))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm
