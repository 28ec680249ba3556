"""Small stores in the schema-1 layout for the loader and input tests.

`write_test_store` writes the arrays `mpt_train` reads, with zarr directly, following
`mpt_data.schema` (sharded Zarr v3, int16 vertices with scale_m, group attributes).
Its content is random but fixed by the seed, so tests compare loader output with the
arrays read back independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from mpt_data import schema


def write_test_store(
    path: Path,
    num_meshes: int = 150,
    num_cameras: int = 3,
    num_vertices: int = 40,
    chunk: int = 8,
    shard: int = 32,
    state: str = schema.STATE_FROZEN,
    seed: int = 0,
) -> Path:
    """A store with splits mixed inside chunks (train/val/test 70/20/10 %) and a partial last chunk."""
    rng = np.random.default_rng(seed)
    k = 17
    g = zarr.open_group(str(path), mode="w-", zarr_format=3)

    def put(name: str, value: np.ndarray, per_mesh: bool = True, attrs: dict | None = None) -> None:
        value = np.ascontiguousarray(value)
        chunks = (chunk, *value.shape[1:]) if per_mesh else value.shape
        shards = (shard, *value.shape[1:]) if per_mesh else None
        a = g.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks, shards=shards,
                           attributes=attrs or {}, fill_value=0)
        a[...] = value

    verts_m = rng.uniform(-1.0, 1.0, size=(num_meshes, num_vertices, 3))
    put(schema.VERTICES, np.rint(verts_m / schema.VERTEX_SCALE_M).astype(np.int16),
        attrs={schema.ATTR_SCALE_M: schema.VERTEX_SCALE_M})
    put(f"{schema.JOINTS_GROUP}/coco17", rng.normal(size=(num_meshes, 17, 3)).astype(np.float32))
    put(f"{schema.JOINTS_GROUP}/smpl24", rng.normal(size=(num_meshes, 24, 3)).astype(np.float32))
    put(schema.POSE, rng.normal(size=(num_meshes, 156)).astype(np.float32))
    put(schema.BETAS, rng.normal(size=(num_meshes, 16)).astype(np.float32))
    put(schema.SEQUENCE, (np.arange(num_meshes) // 10).astype(np.int32))
    put(schema.FRAME, (np.arange(num_meshes) % 10).astype(np.int32))
    split = rng.choice([0, 1, 2], size=num_meshes, p=[0.7, 0.2, 0.1]).astype(np.int8)
    put(schema.SPLIT, split)
    put(schema.JOINTS2D, rng.uniform(0, schema.CROP_SIZE, size=(num_meshes, num_cameras, k, 2)).astype(np.float32))
    put(schema.VISIBLE, rng.random((num_meshes, num_cameras, k)) < 0.9)
    put(schema.CROP, rng.uniform(0, 500, size=(num_meshes, num_cameras, 3)).astype(np.float32))
    rots = []
    for _ in range(num_cameras):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        rots.append(q * np.linalg.det(q))
    put(schema.CAMERA_R, np.stack(rots).astype(np.float32), per_mesh=False)
    kmat = np.tile(np.array([[1000.0, 0, 500], [0, 1000.0, 500], [0, 0, 1]], np.float32), (num_cameras, 1, 1))
    put(schema.CAMERA_K, kmat, per_mesh=False)
    put(schema.CAMERA_T, rng.normal(size=(num_cameras, 3)).astype(np.float32), per_mesh=False)
    put(schema.CAMERA_SIZE, np.tile(np.array([1000, 1000], np.int32), (num_cameras, 1)), per_mesh=False)
    put(schema.TOPOLOGY_TEMPLATE, rng.normal(size=(num_vertices, 3)).astype(np.float32), per_mesh=False)
    put(schema.TOPOLOGY_FACES, rng.integers(0, num_vertices, size=(2 * num_vertices, 3)).astype(np.int32),
        per_mesh=False)
    coarse = num_vertices // 4
    lvl = schema.TOPOLOGY_LEVEL.format(level=1)
    put(f"{lvl}/vertex_ids", np.sort(rng.choice(num_vertices, coarse, replace=False)).astype(np.int32), per_mesh=False)
    put(f"{lvl}/faces", rng.integers(0, coarse, size=(coarse, 3)).astype(np.int32), per_mesh=False)
    put(f"{lvl}/up_index", rng.integers(0, coarse, size=(num_vertices, 3)).astype(np.int32), per_mesh=False)
    w = rng.random((num_vertices, 3)).astype(np.float32)
    put(f"{lvl}/up_weight", w / w.sum(1, keepdims=True), per_mesh=False)
    for name, j in (("coco17", 17), ("smpl24", 24)):
        r = rng.random((j, num_vertices)).astype(np.float32)
        put(f"{schema.TOPOLOGY_REGRESSORS}/{name}", r / r.sum(1, keepdims=True), per_mesh=False)
    g.attrs.update({
        schema.ATTR_SCHEMA: schema.SCHEMA_VERSION,
        schema.ATTR_STATE: state,
        schema.ATTR_FINGERPRINT: f"test-{seed}-{num_meshes}" if state == schema.STATE_FROZEN else None,
    })
    return Path(path)
