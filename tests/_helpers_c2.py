"""Synthetic topology, data and inputs for the model / loss / checkpoint / trainer tests.

Small and deterministic, so these tests run in seconds without a store.
"""

from __future__ import annotations

import numpy as np
import torch

from mpt_train.model import ModelConfig, MeshRegressor, config_for_topology, topology_from_store


def synthetic_topology_arrays(num_vertices: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """A store-layout topology dict: template, faces, two coarse levels, coco17/h36m17 regressors."""
    rng = np.random.default_rng(seed)
    v = num_vertices
    template = (rng.normal(size=(v, 3)) * np.array([0.2, 0.5, 0.1])).astype(np.float32)
    faces = rng.integers(0, v, size=(2 * v, 3)).astype(np.int32)
    out = {"template": template, "faces": faces}
    prev = v
    for lvl, n in ((1, v // 4), (2, v // 16)):
        ids = np.sort(rng.choice(prev, size=n, replace=False)).astype(np.int32)
        up_index = rng.integers(0, n, size=(prev, 3)).astype(np.int32)
        up_index[ids, 0] = np.arange(n)  # kept vertices map to themselves
        w = rng.random((prev, 3)).astype(np.float32)
        w[ids] = [1.0, 0.0, 0.0]
        out[f"level{lvl}/vertex_ids"] = ids
        out[f"level{lvl}/faces"] = rng.integers(0, n, size=(n, 3)).astype(np.int32)
        out[f"level{lvl}/up_index"] = up_index
        out[f"level{lvl}/up_weight"] = (w / w.sum(1, keepdims=True)).astype(np.float32)
        prev = n
    for name in ("coco17", "h36m17"):
        r = rng.random((17, v)).astype(np.float32) ** 8
        out[f"regressors/{name}"] = (r / r.sum(1, keepdims=True)).astype(np.float32)
    return out


def tiny_model(num_vertices: int = 64, patch: int = 28, seed: int = 0, **overrides) -> MeshRegressor:
    """A tiny MeshRegressor on the synthetic topology with (224/patch)^2 heatmap tokens."""
    topo = topology_from_store(synthetic_topology_arrays(num_vertices, seed))
    n = (224 // patch) ** 2
    cfg = config_for_topology(ModelConfig.tiny(**overrides), topo, num_input_tokens=n,
                              input_token_dim=patch * patch * 17)
    torch.manual_seed(seed)
    return MeshRegressor(cfg, topo)


def synthetic_targets(model: MeshRegressor, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Targets in the criterion's layout: template + noise meshes, regressed joints, 2D in px."""
    g = torch.Generator().manual_seed(seed)
    nv = model.cfg.level_sizes[-1]
    base = model.query_template[model.cfg.num_joints:].mean(0).expand(nv, 3)
    verts = base + 0.05 * torch.randn(batch, nv, 3, generator=g)
    joints = torch.einsum("jv,bvc->bjc", model.regressor, verts)
    j2d = joints[..., :2] * 0.9
    visible = torch.rand(batch, 17, generator=g) > 0.2
    return {"vertices": verts, "joints3d": joints, "joints2d": j2d, "visible": visible,
            "has_joints3d": torch.ones(batch, dtype=torch.bool), "has_vertices": torch.ones(batch, dtype=torch.bool)}


def small_input_model(num_vertices: int = 64, tokens: int = 8, token_dim: int = 16, seed: int = 0,
                      **overrides) -> MeshRegressor:
    """A tiny model with few, small input tokens (for loop tests that need no heatmaps)."""
    topo = topology_from_store(synthetic_topology_arrays(num_vertices, seed))
    cfg = config_for_topology(ModelConfig.tiny(**overrides), topo, num_input_tokens=tokens,
                              input_token_dim=token_dim, input_kind="coords")
    torch.manual_seed(seed)
    return MeshRegressor(cfg, topo)


class SyntheticSource:
    """A resumable batch stream: batch i is a pure function of (seed, epoch, i).

    Meshes are the template plus a random low-dimensional deformation; 2D joints are a fixed
    projection of the 3D joints. `fail_after` raises after that many batches (a simulated crash).
    """

    def __init__(self, topo_arrays: dict, batch: int, seed: int = 0, batches_per_epoch: int = 5,
                 fail_after: int | None = None, rank: int = 0):
        self.template = torch.as_tensor(topo_arrays["template"])
        self.reg = torch.as_tensor(topo_arrays["regressors/coco17"])
        self.batch, self.seed, self.per_epoch = batch, seed, batches_per_epoch
        self.fail_after, self.rank = fail_after, rank
        self.epoch, self.index, self.served = 0, 0, 0
        g = torch.Generator().manual_seed(1234)
        self.basis = 0.05 * torch.randn(4, *self.template.shape, generator=g)

    def __iter__(self):
        while self.index < self.per_epoch:
            if self.fail_after is not None and self.served >= self.fail_after:
                raise RuntimeError("simulated crash")
            g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.epoch, self.index)) % 2**31)
            coef = torch.randn(self.batch, 4, generator=g)
            verts = self.template + torch.einsum("bk,kvc->bvc", coef, self.basis)
            joints = torch.einsum("jv,bvc->bjc", self.reg, verts)
            j2d = (joints[..., :2] * 0.9 + 1.0) * 112.0
            key = torch.stack([torch.full((self.batch,), self.epoch * 1000 + self.index),
                               torch.arange(self.batch)], 1)
            self.index += 1
            self.served += 1
            yield {"vertices": verts, "joints3d": joints, "joints2d": j2d,
                   "visible": torch.ones(self.batch, 17, dtype=torch.bool), "key": key}
        self.epoch += 1
        self.index = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def synthetic_prepare(tokens: int = 8, token_dim: int = 16):
    """prepare(batch, train) for SyntheticSource: tokens are a fixed linear map of the 2D joints."""
    w = torch.randn(34, tokens * token_dim, generator=torch.Generator().manual_seed(7)) * 0.3

    def prepare(batch: dict, train: bool):
        j = batch["joints2d"] / 112.0 - 1.0
        x = (j.reshape(j.shape[0], 34) @ w).reshape(j.shape[0], tokens, token_dim)
        targets = {k: batch[k] for k in ("vertices", "joints3d", "visible")}
        return x, targets | {"joints2d": j}

    return prepare


def write_test_store(path, num_meshes: int = 96, cameras: int = 2, num_vertices: int = 64, chunk: int = 16,
                     seed: int = 0, fingerprint: str | None = None) -> str:
    """A small frozen store in the schema-1 layout, written with plain zarr (test fixture only).

    Meshes: template + random mix of 6 smooth deformations; joints from the topology's
    regressors; cameras rotated about the vertical axis, perspective projection into a 224 crop.
    Split: the last chunk is val. The store is sealed as `mpt-data freeze` would (integrity manifest,
    fingerprint = its SHA-256); a `fingerprint` label is stored as a group attribute, so the same data
    with another label has another fingerprint.
    """
    import zarr

    from mpt_data import schema

    topo = synthetic_topology_arrays(num_vertices, seed)
    rng = np.random.default_rng(seed + 1)
    tmpl = topo["template"]
    basis = np.stack([np.sin((i + 1) * tmpl[:, [1]] + i) * rng.normal(size=3) * 0.1 for i in range(6)])
    coef = rng.normal(size=(num_meshes, 6)).astype(np.float32)
    verts = (tmpl + np.einsum("nk,kvc->nvc", coef, basis)).astype(np.float32)
    joints = {s: np.einsum("jv,nvc->njc", topo[f"regressors/{s}"], verts).astype(np.float32)
              for s in ("coco17", "h36m17")}
    rots, ts = [], []
    for c in range(cameras):
        a = 2 * np.pi * c / cameras
        ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        rots.append(np.diag([1.0, -1.0, -1.0]) @ ry)
        ts.append([0.0, 0.0, 4.0])
    rots, ts = np.asarray(rots, np.float32), np.asarray(ts, np.float32)
    cam = np.einsum("cij,njk->ncik", rots, joints["coco17"].transpose(0, 2, 1)).transpose(0, 1, 3, 2) + ts[None, :, None]
    j2d = (250.0 * cam[..., :2] / cam[..., 2:3] + 112.0).astype(np.float32)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    q = np.round(verts / schema.VERTEX_SCALE_M).astype(np.int16)
    a = g.create_array(schema.VERTICES, shape=q.shape, chunks=(chunk, num_vertices, 3), dtype="int16")
    a[:] = q
    a.attrs[schema.ATTR_SCALE_M] = schema.VERTEX_SCALE_M
    for s, j in joints.items():
        g.create_array(f"{schema.JOINTS_GROUP}/{s}", shape=j.shape, chunks=(chunk, 17, 3), dtype="float32")[:] = j
    split = np.zeros(num_meshes, np.int8)
    split[-chunk:] = schema.SPLITS["val"]
    g.create_array(schema.SPLIT, shape=split.shape, chunks=(chunk,), dtype="int8")[:] = split
    g.create_array(schema.JOINTS2D, shape=j2d.shape, chunks=(chunk, cameras, 17, 2), dtype="float32")[:] = j2d
    vis = np.ones(j2d.shape[:3], bool)
    g.create_array(schema.VISIBLE, shape=vis.shape, chunks=(chunk, cameras, 17), dtype="bool")[:] = vis
    kmat = np.tile(np.array([[250.0, 0, 112], [0, 250, 112], [0, 0, 1]], np.float32), (cameras, 1, 1))
    for name, arr in ((schema.CAMERA_K, kmat), (schema.CAMERA_R, rots), (schema.CAMERA_T, ts),
                      (schema.CAMERA_SIZE, np.full((cameras, 2), 224, np.int32))):
        g.create_array(name, shape=arr.shape, dtype=arr.dtype)[:] = arr
    for k, arr in topo.items():
        g.create_array(f"{schema.TOPOLOGY}/{k}", shape=arr.shape, dtype=arr.dtype)[:] = arr
    g.attrs.update({schema.ATTR_SCHEMA: schema.SCHEMA_VERSION, **({"label": fingerprint} if fingerprint else {})})
    from mpt_data.freeze import seal_store_as_read

    seal_store_as_read(path)  # frozen, with the integrity manifest the reader checks
    return str(path)
