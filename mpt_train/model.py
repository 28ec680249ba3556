"""The mesh regression transformer: input tokens + joint/vertex queries -> 3D joints, mesh, camera.

METRO-style encoder fed by heatmap patch tokens (or 2D-coordinate tokens for the paper's
Table 3a ablation, or backbone pose-feature-map patches when fine-tuning): every input is a
(B, N, D) token tensor, so the same module serves pre-training and fine-tuning.

Token sequence: [camera query | J joint queries | Vc coarse-vertex queries | N input tokens].
Three blocks of transformer layers shrink the hidden size between blocks by linear maps
(paper preset: 4 layers, 4 heads, hidden 1024 -> 256 -> 64). Joint and vertex queries are
read out as 3D coordinates (metres, camera frame, root-centred) as offsets from the
template; the coarse mesh is up-sampled to the full mesh by learned dense linear maps
initialised from the store's sparse up-sampling maps. The camera query gives a weak-
perspective camera (s, tx, ty) mapping camera-frame metres to normalised crop coordinates
([-1, 1] across the 224 px crop).

Heatmap inputs may come as :class:`mpt_train.inputs.HeatmapWindows`; the token MLP's first
layer then contracts each joint's window instead of the mostly-zero dense patches (same
numbers, a twentieth of the work).

Masked Vertex Modeling: in training, a random fraction of the joint and vertex query
tokens is replaced by a learned mask token (METRO), so the model learns to infer them from
the rest of the body. The draws come from a generator the model owns (seeded with
:meth:`MeshRegressor.seed_rng`, saved with :meth:`MeshRegressor.rng_state_dict`), never from
the global RNG: anything else that draws from the global RNG (a DataLoader starting, a
validation pass) cannot shift them, so a resumed run masks what the uninterrupted one did.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inputs import HeatmapWindows, window_linear

MODEL_STATE_VERSION = 1
MODEL_RNG_STATE_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the mesh regression transformer.

    The mesh-shape fields (`num_joints`, `level_sizes`, `num_faces`, `eval_joint_sets`) come
    from the store's topology (see :func:`config_for_topology`); the input fields from the
    input synthesis (patch size and channels). Defaults describe SMPL with COCO-17 heatmaps.
    """

    hidden_sizes: tuple[int, ...] = (1024, 256, 64)
    layers_per_block: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0  # feed-forward width = mlp_ratio * hidden
    dropout: float = 0.1
    mvm_ratio: float = 0.3  # fraction of joint/vertex queries masked in training
    # Input tokens: heatmap patches 8x8x17 at 224 px -> 784 tokens of 1088 values.
    input_kind: str = "heatmap"  # "heatmap" | "coords" | "features" (documentation of the source)
    num_input_tokens: int = 784
    input_token_dim: int = 8 * 8 * 17
    input_mlp_hidden: int = 0  # inner width of the token MLP (0: the first hidden size)
    # Mesh shape (from the store).
    joint_set: str = "coco17"  # the 3D joints the model predicts
    num_joints: int = 17
    level_sizes: tuple[int, ...] = (431, 1723, 6890)  # coarse -> full
    num_faces: int = 13776
    eval_joint_sets: tuple[str, ...] = ()  # extra regressors kept for evaluation (e.g. h36m17)
    camera_scale_init: float = 0.9  # initial weak-perspective scale (normalised units per metre)

    @staticmethod
    def paper(**overrides: Any) -> "ModelConfig":
        """The paper's configuration: 3 blocks x 4 layers, 4 heads, hidden 1024/256/64."""
        return dataclasses.replace(ModelConfig(), **overrides)

    @staticmethod
    def tiny(**overrides: Any) -> "ModelConfig":
        """Same structure, small enough to pre-train on a laptop CPU in minutes."""
        # Chosen for sample efficiency at the CPU demo's budget (~40k samples): on the demo store,
        # 2 layers per block and a 128-wide token MLP reach a val PA-MPJPE of 61 mm where 1 layer
        # and a 32-wide MLP reach 84 mm (camera-frame average: 197 mm); 2 heads instead of 4 are
        # 20 % faster per step on a CPU but 9 mm worse at equal steps; see README, "What the demo shows".
        base = ModelConfig(hidden_sizes=(128, 64, 32), layers_per_block=2, heads=4,
                           mlp_ratio=2.0, dropout=0.0, mvm_ratio=0.1, input_mlp_hidden=128)
        return dataclasses.replace(base, **overrides)

    @staticmethod
    def hand(**overrides: Any) -> "ModelConfig":
        """The paper's structure for hands (its FreiHAND model): 3 blocks x 4 layers, 4 heads, hidden
        1024/256/64, predicting the 21 `hand21` joints from 21 heatmaps, MANO's 778-vertex mesh through its
        ~195-vertex coarse level (the store's topology fills in the exact sizes)."""
        return ModelConfig.paper(**(_HAND_SHAPE | overrides))

    @staticmethod
    def tiny_hand(**overrides: Any) -> "ModelConfig":
        """The tiny model's structure (see `tiny`) for hands, for CPU runs."""
        return ModelConfig.tiny(**(_HAND_SHAPE | {"input_token_dim": 16 * 16 * 21} | overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "ModelConfig":
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return ModelConfig(**kw)


# The hand presets' mesh-shape fields: `hand21` joints and heatmaps (K = 21), MANO's 778 vertices with the
# coarse levels of `mpt_data.topology.coarse_hierarchy` (~V/16, ~V/4, V), 1538 faces; and the weak-perspective
# scale a hand starts from: a posed hand's ~0.2 m longest side fills its crop with the 1.2 margin, 2 normalised
# units / (1.2 x 0.2 m) ~ 9 per metre (a body's 1.7 m gives the default 0.9). Starting at the body's 0.9, the
# camera needs thousands of steps to reach a hand's scale, and the re-projection term meanwhile dominates the loss
# (measured on a synthetic-hand store, 300 tiny-hand steps: val MPJPE 105 mm starting from 0.9, 82 mm from 9).
_HAND_SHAPE: dict[str, Any] = {"joint_set": "hand21", "num_joints": 21, "input_token_dim": 8 * 8 * 21,
                               "level_sizes": (49, 195, 778), "num_faces": 1538, "camera_scale_init": 9.0}


@dataclass(frozen=True)
class MeshTopology:
    """What the model needs from a store's topology, as numpy arrays.

    template: (V, 3) float32 rest mesh, metres, root-centred.
    faces: (F, 3) int64 triangles of the full mesh.
    level_vertex_ids: per level from full (level 0, arange(V)) to coarse, indices into the full
        mesh of that level's vertices (the METRO down-sampling by selection).
    upsample: per step from coarse to full, a dense (V_finer, V_coarser) float32 matrix.
    regressors: joint set name -> (J, V) float32 regressor from the full mesh.
    frame_rotation: (3, 3) rotation taking the template's body axes to the typical camera
        axes the model predicts in (see :func:`typical_camera_rotation`); None = identity.
        The output base (template + learned offsets) starts in that frame, so the model
        starts upright in camera coordinates.
    """

    template: np.ndarray
    faces: np.ndarray
    level_vertex_ids: tuple[np.ndarray, ...]
    upsample: tuple[np.ndarray, ...]
    regressors: Mapping[str, np.ndarray]
    frame_rotation: np.ndarray | None = None


def typical_camera_rotation(rotations: np.ndarray) -> np.ndarray:
    """The rotation nearest (Frobenius) to the mean of (C, 3, 3) world -> camera rotations.

    For a ring of cameras around the body the yaw averages out and the result keeps the
    common part: the body's up axis mapped to the cameras' up (image y-down) axis.
    """
    m = np.asarray(rotations, np.float64).mean(axis=0)
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return (u @ np.diag([1.0, 1.0, d]) @ vt).astype(np.float32)


def sparse_to_dense(up_index: np.ndarray, up_weight: np.ndarray, num_coarse: int) -> np.ndarray:
    """Dense (V_fine, V_coarse) matrix from sparse up-sampling rows.

    up_index, up_weight: (V_fine, k) coarse-vertex indices and weights of each fine vertex.
    """
    up_index = np.asarray(up_index)
    up_weight = np.asarray(up_weight, dtype=np.float32)
    if up_index.shape != up_weight.shape or up_index.ndim != 2:
        raise ValueError(f"up_index {up_index.shape} and up_weight {up_weight.shape} must be equal (V, k)")
    if up_index.size and (up_index.min() < 0 or up_index.max() >= num_coarse):
        raise ValueError(f"up_index out of range [0, {num_coarse})")
    dense = np.zeros((up_index.shape[0], num_coarse), np.float32)
    rows = np.repeat(np.arange(up_index.shape[0]), up_index.shape[1])
    np.add.at(dense, (rows, up_index.reshape(-1)), up_weight.reshape(-1))
    return dense


def topology_from_store(arrays: Mapping[str, np.ndarray]) -> MeshTopology:
    """Build a :class:`MeshTopology` from `StoreReader.topology()` (paths relative to `topology/`).

    Store layout (mpt_data.schema): level l >= 1 has `vertex_ids` into level l-1 and
    `up_index`/`up_weight` (V_{l-1}, k) rows over level l's vertices. Here the ids are composed
    into full-mesh ids and the sparse rows made dense, ordered coarse -> full.
    """
    template = np.asarray(arrays["template"], np.float32)
    ids = [np.arange(template.shape[0], dtype=np.int64)]
    ups = []
    lvl = 1
    while f"level{lvl}/vertex_ids" in arrays:
        local = np.asarray(arrays[f"level{lvl}/vertex_ids"], np.int64)
        if local.size and (local.min() < 0 or local.max() >= len(ids[-1])):
            raise ValueError(f"topology/level{lvl}/vertex_ids out of range of level {lvl - 1}")
        ids.append(ids[-1][local])
        for key in ("up_index", "up_weight"):
            if f"level{lvl}/{key}" not in arrays:
                raise ValueError(f"topology/level{lvl}/{key} missing")
        up = sparse_to_dense(arrays[f"level{lvl}/up_index"], arrays[f"level{lvl}/up_weight"], len(local))
        if up.shape[0] != len(ids[-2]):
            raise ValueError(f"topology/level{lvl}/up_index has {up.shape[0]} rows, level {lvl - 1} has "
                             f"{len(ids[-2])} vertices")
        ups.append(up)
        lvl += 1
    regs = {k[len("regressors/"):]: np.asarray(v, np.float32) for k, v in arrays.items()
            if k.startswith("regressors/")}
    return MeshTopology(template=template, faces=np.asarray(arrays["faces"], np.int64),
                        level_vertex_ids=tuple(ids), upsample=tuple(reversed(ups)), regressors=regs)


def config_for_topology(cfg: ModelConfig, topo: MeshTopology, *, num_input_tokens: int,
                        input_token_dim: int, input_kind: str = "heatmap") -> ModelConfig:
    """Fill the mesh-shape and input fields of ``cfg`` from a topology and the input layout."""
    if cfg.joint_set not in topo.regressors:
        raise ValueError(f"store topology has no regressor for joint set {cfg.joint_set!r}; "
                         f"has {sorted(topo.regressors)}")
    sizes = tuple(int(len(ids)) for ids in reversed(topo.level_vertex_ids))
    # The body sets in their historical order (it is part of a saved config), then any other set the store has.
    known = ("h36m17", "smpl24", "coco17")
    extra = tuple(s for s in (*known, *sorted(set(topo.regressors) - set(known)))
                  if s in topo.regressors and s != cfg.joint_set)
    return dataclasses.replace(
        cfg, num_joints=int(topo.regressors[cfg.joint_set].shape[0]), level_sizes=sizes,
        num_faces=int(topo.faces.shape[0]), eval_joint_sets=extra,
        num_input_tokens=num_input_tokens, input_token_dim=input_token_dim, input_kind=input_kind)


def sincos_positions(grid: int, dim: int, base: float = 100.0) -> torch.Tensor:
    """(grid*grid, dim) fixed 2D sine-cosine codes of a row-major patch grid, values in [-1, 1].

    The first half of the features encodes the column, the second the row; each half is
    sin/cos pairs at dim/4 frequencies from 1 to 1/base radians per patch (geometric).
    """
    if dim % 4:
        raise ValueError(f"sincos positions need dim divisible by 4, got {dim}")
    q = dim // 4
    freq = base ** (-torch.arange(q, dtype=torch.float64) / max(q - 1, 1))
    i = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(i, i, indexing="ij")
    parts = []
    for coord in (cols.reshape(-1), rows.reshape(-1)):
        a = coord[:, None] * freq[None, :]
        parts += [torch.sin(a), torch.cos(a)]
    return torch.cat(parts, dim=1).to(torch.float32)


class _Layer(nn.Module):
    """Pre-norm transformer layer with scaled_dot_product_attention."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        ff = int(round(hidden * mlp_ratio))
        self.ff1 = nn.Linear(hidden, ff)
        self.ff2 = nn.Linear(ff, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, h)))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.norm2(x)))))


class MeshRegressor(nn.Module):
    """Tokens (B, N, D) -> {"joints": (B,J,3), "vertices": (B,V,3), "levels": [coarse..full],
    "camera": (B,3)}; coordinates in metres in the view's camera frame, root-centred.

    Buffers carried in the state dict (so a checkpoint alone predicts and evaluates):
    `faces` (F,3), `regressor` (J,V) for `cfg.joint_set`, `regressor_<set>` for each eval set,
    `level_ids_<l>` (V_l,) full-mesh indices per level (0 = full).
    """

    def __init__(self, cfg: ModelConfig, topo: MeshTopology | None = None):
        super().__init__()
        self.cfg = cfg
        h0, hl = cfg.hidden_sizes[0], cfg.hidden_sizes[-1]
        nj, nc, nv = cfg.num_joints, cfg.level_sizes[0], cfg.level_sizes[-1]
        hi = cfg.input_mlp_hidden or h0
        self.input_embed = nn.Sequential(nn.Linear(cfg.input_token_dim, hi), nn.GELU(), nn.Linear(hi, h0))
        grid = math.isqrt(cfg.num_input_tokens)
        if cfg.input_kind != "coords" and grid * grid == cfg.num_input_tokens:
            # Patch tokens on a square grid start from 2D sine-cosine positions (learned from
            # there): nearby patches start with similar codes, so attention can read where a
            # joint's heatmap lies from the first step instead of learning the grid from scratch.
            self.input_pos = nn.Parameter(sincos_positions(grid, h0))
        else:
            self.input_pos = nn.Parameter(torch.randn(cfg.num_input_tokens, h0) * 0.02)
        self.query_coord = nn.Linear(3, h0)  # embeds each query's template position
        self.query_embed = nn.Parameter(torch.randn(1 + nj + nc, h0) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(h0))
        blocks, shrink = [], []
        for i, h in enumerate(cfg.hidden_sizes):
            blocks.append(nn.ModuleList(_Layer(h, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                        for _ in range(cfg.layers_per_block)))
            if i + 1 < len(cfg.hidden_sizes):
                shrink.append(nn.Linear(h, cfg.hidden_sizes[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.shrink = nn.ModuleList(shrink)
        self.out_norm = nn.LayerNorm(hl)
        self.coord_head = nn.Linear(hl, 3)
        self.camera_head = nn.Linear(hl, 3)
        nn.init.zeros_(self.coord_head.weight)
        nn.init.zeros_(self.coord_head.bias)
        nn.init.zeros_(self.camera_head.weight)
        with torch.no_grad():
            self.camera_head.bias.copy_(torch.tensor([cfg.camera_scale_init, 0.0, 0.0]))
        self.upsample = nn.ModuleList(nn.Linear(a, b, bias=False)
                                      for a, b in zip(cfg.level_sizes[:-1], cfg.level_sizes[1:]))
        self.register_buffer("faces", torch.zeros(cfg.num_faces, 3, dtype=torch.long))
        self.register_buffer("regressor", torch.zeros(nj, nv))
        self.register_buffer("query_template", torch.zeros(nj + nc, 3))
        for s in cfg.eval_joint_sets:
            self.register_buffer(f"regressor_{s}", torch.zeros(0, nv))
        nlev = len(cfg.level_sizes)
        for lvl in range(nlev):
            self.register_buffer(f"level_ids_{lvl}", torch.zeros(cfg.level_sizes[nlev - 1 - lvl], dtype=torch.long))
        # The MVM generator lives on the device of the queries; it is made there on first use,
        # from the seed or from a loaded state (see seed_rng / load_rng_state_dict).
        self._rng_seed = 0
        self._rng: torch.Generator | None = None
        self._rng_pending: Mapping[str, Any] | None = None
        if topo is not None:
            self._init_from_topology(topo)

    # -- the model's own randomness (Masked Vertex Modeling) --------------------------------
    def seed_rng(self, seed: int) -> None:
        """Restart the MVM draws from ``seed`` (e.g. a hash of the run seed and the rank)."""
        self._rng_seed, self._rng, self._rng_pending = int(seed), None, None

    def rng_state_dict(self) -> dict[str, Any]:
        """The MVM generator's position: {"version", "seed", "device" (None before any draw), "state"}."""
        if self._rng is None:  # no draw since seeding (or loading): the pending state is the position
            if self._rng_pending is not None:
                return dict(self._rng_pending)
            return {"version": MODEL_RNG_STATE_VERSION, "seed": self._rng_seed, "device": None, "state": None}
        return {"version": MODEL_RNG_STATE_VERSION, "seed": self._rng_seed, "device": self._rng.device.type,
                "state": self._rng.get_state()}

    def load_rng_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the MVM draws from a saved :meth:`rng_state_dict`."""
        if state.get("version") != MODEL_RNG_STATE_VERSION:
            raise ValueError(f"model RNG state version {state.get('version')} != {MODEL_RNG_STATE_VERSION}")
        self._rng_seed, self._rng, self._rng_pending = int(state["seed"]), None, dict(state)

    @torch.compiler.disable  # a generator argument breaks the graph anyway: keep the break here
    def _mvm_mask(self, b: int, n: int, device: torch.device) -> torch.Tensor:
        """(b, n, 1) bool: the queries replaced by the mask token; the camera query (0) never is."""
        if self._rng is None or self._rng.device.type != device.type:
            gen = torch.Generator(device=device)
            pending, self._rng_pending = self._rng_pending, None
            if pending is not None and pending["state"] is not None and pending["device"] == device.type:
                gen.set_state(pending["state"])
            else:
                if pending is not None and pending["state"] is not None:
                    warnings.warn(f"MVM generator state saved on {pending['device']}, running on {device.type}: "
                                  f"its draws restart from seed {self._rng_seed} (not bit-exact)", stacklevel=2)
                gen.manual_seed(self._rng_seed)
            self._rng = gen
        masked = torch.rand(b, n, 1, device=device, generator=self._rng) < self.cfg.mvm_ratio
        masked[:, 0] = False
        return masked

    def _init_from_topology(self, topo: MeshTopology) -> None:
        cfg = self.cfg
        tmpl = torch.as_tensor(np.asarray(topo.template, np.float32))
        if tmpl.shape != (cfg.level_sizes[-1], 3):
            raise ValueError(f"template {tuple(tmpl.shape)} does not match level_sizes {cfg.level_sizes}")
        with torch.no_grad():
            self.faces.copy_(torch.as_tensor(np.asarray(topo.faces, np.int64)))
            self.regressor.copy_(torch.as_tensor(np.asarray(topo.regressors[cfg.joint_set], np.float32)))
            for s in cfg.eval_joint_sets:
                setattr(self, f"regressor_{s}", torch.as_tensor(np.asarray(topo.regressors[s], np.float32)))
            for lvl, ids in enumerate(topo.level_vertex_ids):
                getattr(self, f"level_ids_{lvl}").copy_(torch.as_tensor(np.asarray(ids, np.int64)))
            coarse = tmpl[self.level_ids(len(cfg.level_sizes) - 1)]
            base = torch.cat([self.regressor @ tmpl, coarse])
            if topo.frame_rotation is not None:
                base = base @ torch.as_tensor(np.asarray(topo.frame_rotation, np.float32)).T
            self.query_template.copy_(base)
            if len(topo.upsample) != len(self.upsample):
                raise ValueError(f"{len(topo.upsample)} up-sampling maps for {len(cfg.level_sizes)} levels")
            for lin, dense in zip(self.upsample, topo.upsample):
                d = torch.as_tensor(np.asarray(dense, np.float32))
                if d.shape != lin.weight.shape:
                    raise ValueError(f"up-sampling map {tuple(d.shape)} != expected {tuple(lin.weight.shape)}")
                lin.weight.copy_(d)

    def level_ids(self, level: int) -> torch.Tensor:
        """Full-mesh indices of the vertices of ``level`` (0 = full mesh)."""
        return getattr(self, f"level_ids_{level}")

    def extra_regressor(self, joint_set: str) -> torch.Tensor:
        if joint_set == self.cfg.joint_set:
            return self.regressor
        if joint_set not in self.cfg.eval_joint_sets:
            raise KeyError(f"model has no regressor for {joint_set!r}")
        return getattr(self, f"regressor_{joint_set}")

    def embed_inputs(self, tokens: torch.Tensor | HeatmapWindows) -> torch.Tensor:
        """Input tokens (B, N, D), or heatmap windows standing for them -> (B, N, h0) embeddings."""
        cfg = self.cfg
        if tuple(tokens.shape[1:]) != (cfg.num_input_tokens, cfg.input_token_dim):
            raise ValueError(f"model expects input tokens (B, {cfg.num_input_tokens}, {cfg.input_token_dim}), "
                             f"got {tuple(tokens.shape)}")
        if isinstance(tokens, HeatmapWindows):
            first, act, second = self.input_embed
            return second(act(window_linear(tokens, first.weight, first.bias))) + self.input_pos
        return self.input_embed(tokens) + self.input_pos

    def forward(self, tokens: torch.Tensor | HeatmapWindows) -> dict[str, Any]:
        cfg = self.cfg
        b = tokens.shape[0]
        x_in = self.embed_inputs(tokens)
        q_pos = self.query_coord(self.query_template)  # (J+Vc, h0)
        q_pos = torch.cat([q_pos.new_zeros(1, q_pos.shape[1]), q_pos])
        queries = (self.query_embed + q_pos).unsqueeze(0).expand(b, -1, -1)
        if self.training and cfg.mvm_ratio > 0:
            masked = self._mvm_mask(b, queries.shape[1], queries.device)
            queries = torch.where(masked, self.mask_token.to(queries.dtype), queries)
        x = torch.cat([queries.to(x_in.dtype), x_in], dim=1)
        for i, block in enumerate(self.blocks):
            for layer in block:
                x = layer(x)
            if i < len(self.shrink):
                x = self.shrink[i](x)
        x = self.out_norm(x)
        nq = 1 + cfg.num_joints + cfg.level_sizes[0]
        camera = self.camera_head(x[:, 0]).float()
        coords = self.coord_head(x[:, 1:nq]).float() + self.query_template
        joints, coarse = coords[:, :cfg.num_joints], coords[:, cfg.num_joints:]
        levels = [coarse]
        v = coarse
        for lin in self.upsample:
            v = lin(v.transpose(1, 2)).transpose(1, 2)
            levels.append(v)
        return {"joints": joints, "vertices": v, "levels": levels, "camera": camera}

    def state_dict_versioned(self) -> dict[str, Any]:
        """State dict plus the version and the config it was built with."""
        return {"version": MODEL_STATE_VERSION, "config": self.cfg.to_dict(), "state": self.state_dict()}

    def load_state_dict_versioned(self, blob: Mapping[str, Any]) -> None:
        if blob.get("version") != MODEL_STATE_VERSION:
            raise ValueError(f"model state version {blob.get('version')} != {MODEL_STATE_VERSION}")
        if ModelConfig.from_dict(blob["config"]) != self.cfg:
            raise ValueError("model state was saved with a different ModelConfig")
        state = dict(blob["state"])
        for s in self.cfg.eval_joint_sets:  # size known only from the saved tensor
            key = f"regressor_{s}"
            if key in state:
                setattr(self, key, torch.zeros_like(state[key]))
        self.load_state_dict(state)


def model_from_state(blob: Mapping[str, Any]) -> MeshRegressor:
    """Rebuild a model from :meth:`MeshRegressor.state_dict_versioned` output (no store needed)."""
    model = MeshRegressor(ModelConfig.from_dict(blob["config"]))
    model.load_state_dict_versioned(blob)
    return model


def weak_perspective(points: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Project camera-frame points (B, J, 3) metres with (s, tx, ty) (B, 3) -> (B, J, 2) in
    normalised crop coordinates ([-1, 1] across the crop): x_n = s * X + tx, y_n = s * Y + ty."""
    return camera[:, None, :1] * points[..., :2] + camera[:, None, 1:]


def forward_matmul_flops(cfg: ModelConfig, batch: int, window: tuple[int, int, int] | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass, counted from the config.

    ``window`` = (K, m, patch) when the inputs are :class:`HeatmapWindows` (K joints with
    m x m-patch windows): the first input layer then costs K * m^2 * patch^2 MACs per output
    feature instead of N * D.
    Counts every per-sample matmul: input MLP, per-layer QKV/projection/feed-forward,
    attention scores and weighted sums, block shrink maps, heads and the up-sampling maps.
    Not counted: LayerNorm, softmax, activations, and the batch-independent query embedding
    (all small). A training step is counted as 3 x forward (backward = 2 x forward).
    """
    n_tok = 1 + cfg.num_joints + cfg.level_sizes[0] + cfg.num_input_tokens
    h0 = cfg.hidden_sizes[0]
    hi = cfg.input_mlp_hidden or h0
    if window is None:
        macs = cfg.num_input_tokens * (cfg.input_token_dim * hi + hi * h0)
    else:
        k, m, patch = window
        macs = k * m * m * patch * patch * hi + cfg.num_input_tokens * hi * h0
    for i, h in enumerate(cfg.hidden_sizes):
        ff = int(round(h * cfg.mlp_ratio))
        per_layer = n_tok * (3 * h * h + h * h + 2 * h * ff) + 2 * n_tok * n_tok * h
        macs += cfg.layers_per_block * per_layer
        if i + 1 < len(cfg.hidden_sizes):
            macs += n_tok * h * cfg.hidden_sizes[i + 1]
    hl = cfg.hidden_sizes[-1]
    macs += (cfg.num_joints + cfg.level_sizes[0]) * hl * 3 + hl * 3
    macs += sum(3 * a * b for a, b in zip(cfg.level_sizes[:-1], cfg.level_sizes[1:]))
    return 2 * batch * macs


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ModelConfig", "MeshTopology", "typical_camera_rotation", "MeshRegressor", "topology_from_store", "MODEL_STATE_VERSION", "config_for_topology",
           "sparse_to_dense", "model_from_state", "weak_perspective", "forward_matmul_flops", "num_parameters"]
