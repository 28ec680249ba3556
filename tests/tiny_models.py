"""A synthetic store-layout topology, tiny mesh regressors on it and targets for them, for the model,
loss and checkpoint tests: small and deterministic, so these tests run in seconds without a store.
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
