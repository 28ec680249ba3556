"""The store format (schema 1): array paths, dimension names and constants shared by writer and reader.

See DESIGN.md, "Store format". This module is pure data (and one lookup over it); `mpt_train` imports it.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

VERTEX_SCALE_M = 1e-4  # int16 vertices: metres = stored * VERTEX_SCALE_M (0.1 mm)
CROP_SIZE = 224  # pixels of the square person crop
# Continuous pixel coordinates: crop pixel i covers [i, i + 1), its centre is at i + PIXEL_CENTRE;
# the crop spans [0, CROP_SIZE] (the rule of mpt_data.images and of the trainer's heatmaps).
PIXEL_CENTRE = 0.5

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Array paths inside the Zarr v3 group.
VERTICES = "meshes/vertices"  # (N, V, 3) int16, attrs: scale_m and VERTEX_CF_ATTRS
JOINTS_GROUP = "meshes/joints"  # meshes/joints/<set>: (N, J, 3) float32
POSE = "meshes/pose"  # (N, P) float32 axis-angle
BETAS = "meshes/betas"  # (N, B) float32
SEQUENCE = "meshes/sequence"  # (N,) int32: row of sequences.parquet
FRAME = "meshes/frame"  # (N,) int32: frame index in the source file
SPLIT = "meshes/split"  # (N,) int8: SPLITS value
JOINTS2D = "views/joints2d"  # (N, C, K, 2) float32 crop pixels
VISIBLE = "views/visible"  # (N, C, K) bool
CROP = "views/crop"  # (N, C, 3) float32: x0, y0, side of the crop square in image pixels
CAMERAS = "cameras"  # group of the rig's arrays below
CAMERA_K = "cameras/K"  # (C, 3, 3) float32 intrinsics in image pixels
CAMERA_R = "cameras/R"  # (C, 3, 3) float32 world -> camera rotation
CAMERA_T = "cameras/t"  # (C, 3) float32 world -> camera translation, metres
CAMERA_SIZE = "cameras/image_size"  # (C, 2) int32 width, height
TOPOLOGY = "topology"  # template (V,3), faces (F,3), level<l>/..., regressors/<set> (J,V)
SEQUENCES_TABLE = "sequences.parquet"
# Written by freeze at the group's root: per array its shape, dtype, axis-0 chunk length, attributes and
# per-chunk checksums, the group attributes that give the data its meaning, and the sequences table's
# checksum, as canonical JSON; the fingerprint is the SHA-256 of its bytes (see mpt_data.store).
INTEGRITY_MANIFEST = "integrity.json"

# Group attributes (JSON) the writer sets; the trainer checks schema, state and fingerprint.
ATTR_SCHEMA = "schema"  # int: SCHEMA_VERSION
ATTR_TOOL_VERSION = "tool_version"  # str: mpt_data.__version__ of the writer
ATTR_STATE = "state"  # str: STATE_BUILDING -> STATE_COMPLETE (build) -> STATE_FROZEN (freeze)
ATTR_FINGERPRINT = "fingerprint"  # str: content fingerprint, set by freeze (None before)
ATTR_RECIPE = "recipe"  # dict: the resolved build recipe
ATTR_RECIPE_HASH = "recipe_hash"  # str: hash of the recipe and the body-model files
ATTR_COUNTS = "counts"  # dict: meshes, cameras, views, vertices, faces, sequences, skipped, splits
ATTR_JOINT_SETS = "joint_sets"  # dict: joint set name -> number of joints
ATTR_CHUNK_MESHES = "chunk_meshes"  # int: meshes per chunk of every per-mesh array (the read unit)
ATTR_SHARD_MESHES = "shard_meshes"  # int: meshes per shard (one build partition each)
ATTR_PARTITIONS = "partitions"  # int: build partitions (= shards per per-mesh array)
ATTR_HEATMAP_JOINT_SET = "heatmap_joint_set"  # str: the joint set of views/joints2d
ATTR_BODY_MODEL = "body_model"  # dict: body-model type, sizes and file hashes
ATTR_VERTEX_SCALE_M = "vertex_scale_m"  # float: VERTEX_SCALE_M as written
ATTR_CROP_SIZE = "crop_size"  # int: CROP_SIZE as written
STATE_BUILDING = "building"
STATE_COMPLETE = "complete"
STATE_FROZEN = "frozen"
ATTR_SCALE_M = "scale_m"  # attribute of VERTICES: metres per stored integer unit
ATTR_CAMERA_NAMES = "names"  # attribute of the CAMERAS group: [str] per camera
ATTR_SUBJECT_POSITION = "subject_position"  # attribute of the CAMERAS group: [x, y, z] metres, world

# Topology layout under TOPOLOGY (level 0 is the full mesh; level l+1 is coarser than l).
TOPOLOGY_TEMPLATE = "topology/template"  # (V, 3) float32, metres, body frame
TOPOLOGY_FACES = "topology/faces"  # (F, 3) int32
TOPOLOGY_LEVEL = "topology/level{level}"  # group per coarse level l >= 1:
#   vertex_ids (V_l,) int32 ids into level l-1 kept by down-sampling
#   faces (F_l, 3) int32 over the level's vertices
#   up_index (V_{l-1}, 3) int32, up_weight (V_{l-1}, 3) float32: level l -> l-1 up-sampling rows
TOPOLOGY_REGRESSORS = "topology/regressors"  # regressors/<set>: (J, V) float32, rows sum to 1
# Arrays inside each TOPOLOGY_LEVEL group.
LEVEL_VERTEX_IDS = "vertex_ids"
LEVEL_FACES = "faces"
LEVEL_UP_INDEX = "up_index"
LEVEL_UP_WEIGHT = "up_weight"

# Zarr v3 `dimension_names` of every array the builder writes, so xarray opens any group with named axes
# (`xarray.open_zarr(store, group="meshes")`, `xarray.open_datatree(store, engine="zarr")`). Within one group a
# name means one length; a joint axis is named after its joint set (`smpl24_joint`), because the sets of one
# group differ in size, and a coarse level's own vertices and faces are `level_vertex`/`level_face`.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    VERTICES: ("mesh", "vertex", "xyz"),
    POSE: ("mesh", "pose_value"),
    BETAS: ("mesh", "beta"),
    SEQUENCE: ("mesh",),
    FRAME: ("mesh",),
    SPLIT: ("mesh",),
    JOINTS2D: ("mesh", "camera", "keypoint", "xy"),
    VISIBLE: ("mesh", "camera", "keypoint"),
    CROP: ("mesh", "camera", "crop_value"),  # x0, y0, side
    CAMERA_K: ("camera", "row", "column"),
    CAMERA_R: ("camera", "row", "column"),
    CAMERA_T: ("camera", "xyz"),
    CAMERA_SIZE: ("camera", "width_height"),
    TOPOLOGY_TEMPLATE: ("vertex", "xyz"),
    TOPOLOGY_FACES: ("face", "corner"),
}
LEVEL_DIMENSIONS: dict[str, tuple[str, ...]] = {  # arrays inside each TOPOLOGY_LEVEL group
    LEVEL_VERTEX_IDS: ("level_vertex",),
    LEVEL_FACES: ("level_face", "corner"),
    LEVEL_UP_INDEX: ("finer_vertex", "neighbour"),
    LEVEL_UP_WEIGHT: ("finer_vertex", "neighbour"),
}
# CF-convention attributes of VERTICES, so netCDF/xarray readers decode the int16 values to metres themselves
# (metres = stored * scale_factor; the quantisation has no offset, so no add_offset). MPT's own readers
# use ATTR_SCALE_M on the raw integers and never read these.
ATTR_CF_SCALE_FACTOR = "scale_factor"
ATTR_CF_UNITS = "units"
VERTEX_CF_ATTRS: dict[str, object] = {ATTR_CF_SCALE_FACTOR: VERTEX_SCALE_M, ATTR_CF_UNITS: "m"}


def joint_dimension(joint_set: str) -> str:
    """The name of a joint set's joint axis, e.g. `smpl24_joint`."""
    return f"{joint_set}_joint"


def dimension_names(path: str) -> tuple[str, ...]:
    """The `dimension_names` of the array at `path` (a path inside the group); ValueError for a path the
    format does not define."""
    if path in DIMENSIONS:
        return DIMENSIONS[path]
    head, _, name = path.rpartition("/")
    if head == JOINTS_GROUP and name:
        return ("mesh", joint_dimension(name), "xyz")
    if head == TOPOLOGY_REGRESSORS and name:
        return (joint_dimension(name), "vertex")
    level = head.rpartition("/")[2]
    if head.startswith(f"{TOPOLOGY}/") and level.startswith("level") and level[5:].isdigit() and name in LEVEL_DIMENSIONS:
        return LEVEL_DIMENSIONS[name]
    raise ValueError(f"the store format defines no dimension names for an array at {path!r} (see schema.DIMENSIONS)")


# Recipe fields that name where the inputs lie, not what is built: left out of the recipe hash and the fingerprint.
RECIPE_PATH_FIELDS = ("amass_root", "body_model_dir", "h36m_regressor")
