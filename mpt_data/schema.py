"""The store format (schema 1): array paths and constants shared by writer and reader.

See DESIGN.md, "Store format". This module is pure data; `mpt_train` imports it.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

VERTEX_SCALE_M = 1e-4  # int16 vertices: metres = stored * VERTEX_SCALE_M (0.1 mm)
CROP_SIZE = 224  # pixels of the square person crop

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Array paths inside the Zarr v3 group.
VERTICES = "meshes/vertices"  # (N, V, 3) int16, attrs: scale_m
JOINTS_GROUP = "meshes/joints"  # meshes/joints/<set>: (N, J, 3) float32
POSE = "meshes/pose"  # (N, P) float32 axis-angle
BETAS = "meshes/betas"  # (N, B) float32
SEQUENCE = "meshes/sequence"  # (N,) int32: row of sequences.parquet
FRAME = "meshes/frame"  # (N,) int32: frame index in the source file
SPLIT = "meshes/split"  # (N,) int8: SPLITS value
JOINTS2D = "views/joints2d"  # (N, C, K, 2) float32 crop pixels
VISIBLE = "views/visible"  # (N, C, K) bool
CROP = "views/crop"  # (N, C, 3) float32: x0, y0, side of the crop square in image pixels
CAMERA_K = "cameras/K"  # (C, 3, 3) float32 intrinsics in image pixels
CAMERA_R = "cameras/R"  # (C, 3, 3) float32 world -> camera rotation
CAMERA_T = "cameras/t"  # (C, 3) float32 world -> camera translation, metres
CAMERA_SIZE = "cameras/image_size"  # (C, 2) int32 width, height
TOPOLOGY = "topology"  # template (V,3), faces (F,3), level<l>/..., regressors/<set> (J,V)
SEQUENCES_TABLE = "sequences.parquet"
