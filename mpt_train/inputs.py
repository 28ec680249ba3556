"""On-device input synthesis: camera-frame targets, Gaussian heatmaps, Masked Heatmap Modeling, patches.

Everything here is a pure, batched torch function that runs on the training device
(CUDA or CPU, same code). Pixel convention (`mpt_data.schema.PIXEL_CENTRE`): continuous
coordinates, crop pixel (column i, row j) covers [i, i+1) x [j, j+1) with its centre at
(i + 0.5, j + 0.5); the crop spans x, y in [0, size].

Heatmaps travel as windows (:class:`HeatmapWindows`): a joint's Gaussian is non-zero only
near the joint, so each joint carries an m x m-patch window around it (every pixel within
4 sigma; the values left out are below e^-16 ~ 1e-7) and its place on the patch grid. The
model's token embedding contracts the windows directly (:func:`window_linear`): the same
numbers as the dense (B, (size/patch)^2, K*patch^2) tokens through a Linear layer, at 1/20
(tiny) to 1/30 (paper) of the multiply-adds, without materialising 50k pixels per joint.
`HeatmapWindows.dense()` gives the dense tokens for inspection and tests.

Randomness (which joints are masked, jitter) is a hash of each sample's integer key and
the joint index, so a sample is augmented the same way whatever batch or device it is in;
heatmap noise comes from a generator seeded by a hash of the batch's keys (one kernel
instead of a hash per pixel), so a resumed run, which sees the same batches, sees the
same noise on the same device type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from mpt_data import schema

# Streams of the per-sample hash, so masking and jitter draw independent numbers.
_STREAM_MASK = 1
_STREAM_JITTER_U = 2
_STREAM_JITTER_V = 3
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class InputConfig:
    """Heatmap synthesis and augmentation.

    sigma: Gaussian width in pixels, S(p) = exp(-|p - x|^2 / sigma^2) (the paper's eq. 1).
    mask_ratio: probability that each joint is removed (Masked Heatmap Modeling).
    noise_std: std of Gaussian noise added to every pixel of the heatmap window of each joint
    present (removed and invisible joints stay exactly zero; pixels outside a joint's window,
    where its Gaussian is below 1e-7, get none). jitter_px: std of the 2D coordinate jitter, pixels.
    use_heatmaps: False feeds (K, 3) normalised coordinates + presence instead (Table 3a).
    use_mhm: False turns masking, noise and jitter off (Table 3c).
    patch: patch side in pixels; size: heatmap side in pixels.
    """

    sigma: float = 3.0
    mask_ratio: float = 0.3
    noise_std: float = 0.02
    jitter_px: float = 2.0
    use_heatmaps: bool = True
    use_mhm: bool = True
    patch: int = 8
    size: int = 224

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if self.sigma <= 0 or self.noise_std < 0 or self.jitter_px < 0:
            raise ValueError(f"sigma > 0, noise_std >= 0, jitter_px >= 0 required; got {self}")
        if self.size % self.patch:
            raise ValueError(f"size {self.size} is not a multiple of patch {self.patch}")

    @staticmethod
    def paper(**overrides: Any) -> "InputConfig":
        """The paper's inputs: 8 px patches (784 tokens at 224 px), 30 % of the joints masked."""
        return replace(InputConfig(patch=8, mask_ratio=0.3), **overrides)

    @staticmethod
    def tiny(**overrides: Any) -> "InputConfig":
        """Inputs of the tiny model: 16 px patches (196 tokens, 4x fewer for a CPU), 10 % masked,
        a lighter masking that a model this small learns from within a demo's budget."""
        return replace(InputConfig(patch=16, mask_ratio=0.1), **overrides)

    def without_augmentation(self, mask_ratio: float = 0.0) -> "InputConfig":
        """Evaluation inputs: no noise or jitter; `mask_ratio` > 0 removes joints MHM-style."""
        return replace(self, noise_std=0.0, jitter_px=0.0, mask_ratio=mask_ratio, use_mhm=mask_ratio > 0)

    @property
    def num_patches(self) -> int:
        return (self.size // self.patch) ** 2

    def token_dim(self, num_joints: int) -> int:
        """Values per input token: patch * patch * K heatmaps, or 3 per joint for coordinates."""
        return self.patch * self.patch * num_joints if self.use_heatmaps else 3


# ----------------------------------------------------------------------------------------
# Hash-based randomness (int64 tensors holding 32-bit values; no overflow anywhere).


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), split in 16-bit halves so int64 never overflows."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser with good avalanche (xor-shift-multiply)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def key_uniform(keys: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(B,) int64 keys -> (B, n) float32 uniforms in [0, 1), a pure function of (key, stream, column)."""
    k = keys.to(torch.int64)
    h = _mix32((k & _M32) ^ _mix32(((k >> 32) & _M32) ^ ((stream * 0x9E3779B1) & _M32)))
    j = torch.arange(n, device=keys.device, dtype=torch.int64)
    h = _mix32(h[:, None] ^ _mix32((j * 0x85EBCA6B + 0x27D4EB2F) & _M32)[None, :])
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def key_normal(keys: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(B,) int64 keys -> (B, n) float32 standard normals (Box-Muller on two hashed uniforms)."""
    u1 = key_uniform(keys, stream, n)
    u2 = key_uniform(keys, stream + 1000, n)
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)


def batch_seed(keys: torch.Tensor) -> int:
    """One 63-bit seed from a batch's keys (order-sensitive), for the batch's noise generator."""
    k = keys.to(torch.int64)
    h = _mix32((k & _M32) ^ _mix32((k >> 32) & _M32))
    pos = torch.arange(len(k), device=k.device, dtype=torch.int64)
    h = _mix32(h ^ _mix32(pos & _M32))
    return int(((h * (pos % 1021 + 1)).sum() & 0x7FFFFFFFFFFFFFFF).item())


# ----------------------------------------------------------------------------------------
# Pure geometry and rendering.


def to_camera_frame(points: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate root-centred points into each view's camera axes: X_cam = X_world @ R^T.

    points (B, N, 3) metres, world (body) axes, root at the origin; rotation (B, 3, 3)
    world -> camera. Returns (B, N, 3) metres in camera axes, still root-centred (the
    camera translation only moves the root, which the model does not predict).
    """
    return torch.matmul(points, rotation.to(points.dtype).transpose(1, 2))


def _axis_gaussians(coord: torch.Tensor, size: int, sigma: float, dtype: torch.dtype,
                    start: torch.Tensor | None = None) -> torch.Tensor:
    """(...) pixel coordinates -> (..., size) exp(-(p - x)^2 / sigma^2) over pixel centres
    p = start + i + 0.5, i < size; ``start`` (...) first pixel of each run (default 0)."""
    p = torch.arange(size, device=coord.device, dtype=torch.float32) + schema.PIXEL_CENTRE
    if start is not None:
        p = start.to(torch.float32)[..., None] + p
    d = p - coord.to(torch.float32)[..., None]
    return torch.exp(d * d * (-1.0 / (sigma * sigma))).to(dtype)


def render_heatmaps(
    joints2d: torch.Tensor, present: torch.Tensor, size: int = 224, sigma: float = 3.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian heatmaps S_j(p) = exp(-|p - x_j|^2 / sigma^2), one per joint.

    joints2d (B, K, 2) crop pixels (x, y); present (B, K) bool (False: the channel is all zero).
    Returns (B, K, size, size) in `dtype`, rows = y. Separable: the outer product of a
    y-Gaussian and an x-Gaussian, so the cost is one multiply per output value.
    """
    w = present.to(torch.float32)[..., None]
    gx = _axis_gaussians(joints2d[..., 0], size, sigma, torch.float32) * w
    gy = _axis_gaussians(joints2d[..., 1], size, sigma, torch.float32)
    return (gy.to(dtype)[..., :, None] * gx.to(dtype)[..., None, :])


def patchify(heatmaps: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """(B, K, H, W) -> (B, (H/patch)*(W/patch), K*patch*patch) tokens, row-major over patches.

    Each token's values are ordered (k, dy, dx), the layout of a Conv2d patch embedding's weight.
    """
    b, k, h, w = heatmaps.shape
    t = heatmaps.reshape(b, k, h // patch, patch, w // patch, patch)
    return t.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), k * patch * patch)


# A joint's heatmap is kept on the patches within WINDOW_SIGMAS * sigma of it.
WINDOW_SIGMAS = 4.0


def window_patches(sigma: float, patch: int, grid: int) -> int:
    """Side m, in patches, of the window that holds every pixel within WINDOW_SIGMAS * sigma of a
    joint wherever it falls: the smallest m with (m - 1) * patch > 2 * radius, at most the grid."""
    radius = WINDOW_SIGMAS * sigma
    return min(int(math.floor(2.0 * radius / patch)) + 2, grid)


class HeatmapWindows(NamedTuple):
    """Heatmap patch tokens in windowed form.

    values (B, K, m*patch, m*patch): joint k's heatmap on its window (rows = y), zero for
    absent joints; origin (B, K, 2) int64: (row, column) of the window's top-left patch on the
    grid; grid: patches per side; patch: patch side in pixels. Stands for the dense tokens
    (B, grid^2, K*patch^2) of :func:`patchify`, whose shape `shape` reports.
    """

    values: torch.Tensor
    origin: torch.Tensor
    grid: int
    patch: int

    @property
    def shape(self) -> torch.Size:
        b, k = self.values.shape[:2]
        return torch.Size((b, self.grid * self.grid, k * self.patch * self.patch))

    @property
    def window(self) -> int:
        return self.values.shape[-1] // self.patch

    def token_index(self) -> torch.Tensor:
        """(B, K, m, m) int64: the grid token (row * grid + column) under each window patch."""
        i = torch.arange(self.window, device=self.origin.device)
        rows = self.origin[..., 0, None, None] + i[:, None]
        cols = self.origin[..., 1, None, None] + i[None, :]
        return rows * self.grid + cols

    def heatmaps(self) -> torch.Tensor:
        """(B, K, size, size) full heatmaps: each window written at its place, zero elsewhere."""
        b, k, s, _ = self.values.shape
        size = self.grid * self.patch
        out = self.values.new_zeros(b, k, size, size)
        i = torch.arange(s, device=self.values.device)
        rows = (self.origin[..., 0] * self.patch)[..., None, None] + i[:, None]
        cols = (self.origin[..., 1] * self.patch)[..., None, None] + i[None, :]
        bi = torch.arange(b, device=out.device)[:, None, None, None]
        ki = torch.arange(k, device=out.device)[None, :, None, None]
        out[bi, ki, rows, cols] = self.values
        return out

    def dense(self) -> torch.Tensor:
        """(B, grid^2, K*patch^2) tokens, the layout of :func:`patchify`."""
        return patchify(self.heatmaps(), self.patch)


def heatmap_windows(
    joints2d: torch.Tensor, present: torch.Tensor, size: int = 224, sigma: float = 3.0, patch: int = 8,
    dtype: torch.dtype = torch.float32,
) -> HeatmapWindows:
    """Gaussian heatmaps S_j(p) = exp(-|p - x_j|^2 / sigma^2) as :class:`HeatmapWindows`.

    joints2d (B, K, 2) crop pixels (x, y); present (B, K) bool (False: the joint's values are
    zero). Each window is the m x m patches (m = :func:`window_patches`) starting at the patch
    that holds x - 4 sigma, moved inside the grid; it holds the whole 4-sigma disc, or the part
    of it inside the crop. Joints outside the crop get an edge window of (near) zeros.
    """
    grid = size // patch
    m = window_patches(sigma, patch, grid)
    radius = WINDOW_SIGMAS * sigma
    p = present.to(torch.float32)
    xy = torch.where(present[..., None], joints2d.to(torch.float32), torch.zeros((), device=joints2d.device))
    origin = torch.floor((xy - radius) / patch).clamp(0, grid - m).to(torch.int64)  # (B, K, 2) as (col, row)
    g = _axis_gaussians(xy, m * patch, sigma, torch.float32, start=origin * patch)  # (B, K, 2, m*patch)
    gx, gy = g[..., 0, :] * p[..., None], g[..., 1, :]
    values = (gy[..., :, None] * gx[..., None, :]).to(dtype)
    return HeatmapWindows(values=values, origin=origin.flip(-1).contiguous(), grid=grid, patch=patch)


def window_linear(windows: HeatmapWindows, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(windows.dense(), weight, bias)`` computed from the windows alone.

    weight (F, K*patch^2) in the (k, dy, dx) order of :func:`patchify`; bias (F,) or None.
    Returns (B, grid^2, F). One batched matmul per joint over its window's patches, then the
    patch embeddings are summed into their grid tokens (tokens outside every window get the
    bias alone, as their all-zero patches would).
    """
    v = windows.values
    b, k, s, _ = v.shape
    p, m, g = windows.patch, windows.window, windows.grid
    f = weight.shape[0]
    if weight.shape[1] != k * p * p:
        raise ValueError(f"weight {tuple(weight.shape)} does not take {k} joints of {p}x{p} patches")
    w = weight.view(f, k, p * p).permute(1, 2, 0)  # (K, p*p, F)
    x = v.reshape(b, k, m, p, m, p).permute(1, 0, 2, 4, 3, 5).reshape(k, b * m * m, p * p)
    y = torch.bmm(x.to(w.dtype), w)  # (K, B*m*m, F); autocast picks the compute dtype
    y = y.view(k, b, m * m, f).transpose(0, 1).reshape(b, k * m * m, f)
    idx = windows.token_index().reshape(b, k * m * m, 1).expand(-1, -1, f)
    out = torch.zeros(b, g * g, f, device=y.device, dtype=torch.float32).scatter_add_(1, idx, y.float())
    if bias is not None:
        out = out + bias.float()
    return out.to(y.dtype)


def render_patches(
    joints2d: torch.Tensor, present: torch.Tensor, size: int = 224, sigma: float = 3.0, patch: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`patchify(render_heatmaps(...))` written straight into token layout (one pass over the output).

    joints2d (B, K, 2) crop pixels, present (B, K) bool. Returns (B, (size/patch)^2, K*patch*patch).
    Untruncated: every pixel of every present joint's map (the windows of :func:`heatmap_windows`
    agree with it to 1e-7).
    """
    b, k = present.shape
    n = size // patch
    gx = _axis_gaussians(joints2d[..., 0], size, sigma, torch.float32) * present.to(torch.float32)[..., None]
    gy = _axis_gaussians(joints2d[..., 1], size, sigma, torch.float32)
    gx = gx.to(dtype).reshape(b, k, n, patch).permute(0, 2, 1, 3)  # (B, nx, K, dx)
    gy = gy.to(dtype).reshape(b, k, n, patch).permute(0, 2, 1, 3)  # (B, ny, K, dy)
    out = gy[:, :, None, :, :, None] * gx[:, None, :, :, None, :]  # (B, ny, nx, K, dy, dx)
    return out.reshape(b, n * n, k * patch * patch)


def coordinate_tokens(joints2d: torch.Tensor, present: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, K, 2) crop pixels, (B, K) bool -> (B, K, 3): x, y scaled to [-1, 1] and presence;
    absent joints are (0, 0, 0). The input of the 2D-coordinate ablation (Table 3a)."""
    xy = joints2d.to(torch.float32) * (2.0 / size) - 1.0
    p = present.to(torch.float32)[..., None]
    return torch.cat([xy * p, p], dim=-1)


def normalise_2d(joints2d: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, K, 2) crop pixels -> (B, K, 2) in [-1, 1] across the crop (target of the 2D re-projection loss)."""
    return joints2d.to(torch.float32) * (2.0 / size) - 1.0


# ----------------------------------------------------------------------------------------
# Augmentation and the whole batch.


def mhm_mask(keys: torch.Tensor, num_joints: int, ratio: float) -> torch.Tensor:
    """(B,) keys -> (B, K) bool, True where Masked Heatmap Modeling removes the joint (prob. `ratio`)."""
    return key_uniform(keys, _STREAM_MASK, num_joints) < ratio


def jitter(joints2d: torch.Tensor, keys: torch.Tensor, std_px: float) -> torch.Tensor:
    """(B, K, 2) pixels + N(0, std_px^2) per coordinate, drawn from each sample's key."""
    k = joints2d.shape[1]
    d = torch.stack([key_normal(keys, _STREAM_JITTER_U, k), key_normal(keys, _STREAM_JITTER_V, k)], dim=-1)
    return joints2d.to(torch.float32) + std_px * d.to(joints2d.device)


@dataclass
class ModelInputs:
    """A batch ready for the model, on the device.

    tokens: :class:`HeatmapWindows` (values in the training dtype) standing for the
    (B, (size/patch)^2, K*patch^2) heatmap patches, or (B, K, 3) coordinates when
    use_heatmaps is False. present (B, K) bool: joint visible and not masked.
    masked (B, K) bool: removed by MHM. joints2d (B, K, 2) float32 in [-1, 1], un-jittered
    ground truth; visible (B, K) bool. joints3d (B, J, 3) and vertices (B, V, 3) float32
    metres in the view's camera axes, root-centred. Extra joint sets as extra[name] (B, J', 3).
    """

    tokens: HeatmapWindows | torch.Tensor
    present: torch.Tensor
    masked: torch.Tensor
    joints2d: torch.Tensor
    visible: torch.Tensor
    joints3d: torch.Tensor
    vertices: torch.Tensor | None
    extra: dict[str, torch.Tensor]
    keys: torch.Tensor


def prepare_batch(
    batch: dict[str, torch.Tensor], cfg: InputConfig, device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> ModelInputs:
    """A loader batch (CPU, pinned) -> model inputs and camera-frame targets on `device`.

    Uses joints2d, visible, joints3d, vertices (optional), camera_R, key and any joints3d_<set>.
    """
    dev = torch.device(device)
    nb = dev.type == "cuda"
    # From the loader's CPU keys, before the copy: no device synchronisation per batch.
    noise_seed = batch_seed(batch["key"])
    j2d = batch["joints2d"].to(dev, non_blocking=nb)
    visible = batch["visible"].to(dev, non_blocking=nb)
    keys = batch["key"].to(dev, non_blocking=nb)
    rot = batch["camera_R"].to(dev, non_blocking=nb)
    k = j2d.shape[1]
    if cfg.use_mhm and cfg.mask_ratio > 0:
        masked = mhm_mask(keys, k, cfg.mask_ratio)
    else:
        masked = torch.zeros_like(visible)
    present = visible & ~masked
    xy = jitter(j2d, keys, cfg.jitter_px) if cfg.use_mhm and cfg.jitter_px > 0 else j2d.to(torch.float32)
    if cfg.use_heatmaps:
        tokens = heatmap_windows(xy, present, cfg.size, cfg.sigma, cfg.patch, dtype)
        if cfg.use_mhm and cfg.noise_std > 0:
            add_window_noise_(tokens, present, noise_seed, cfg.noise_std)
    else:
        tokens = coordinate_tokens(xy, present, cfg.size).to(dtype)
    extra = {
        name[len("joints3d_"):]: to_camera_frame(v.to(dev, non_blocking=nb), rot)
        for name, v in batch.items() if name.startswith("joints3d_")
    }
    verts = batch.get("vertices")
    return ModelInputs(
        tokens=tokens,
        present=present,
        masked=masked,
        joints2d=normalise_2d(j2d, cfg.size),
        visible=visible,
        joints3d=to_camera_frame(batch["joints3d"].to(dev, non_blocking=nb), rot),
        vertices=None if verts is None else to_camera_frame(verts.to(dev, non_blocking=nb), rot),
        extra=extra,
        keys=keys,
    )


def add_window_noise_(windows: HeatmapWindows, present: torch.Tensor, seed: int, std: float) -> None:
    """In place: every window pixel of the joints present (B, K) += N(0, std^2).

    Removed and invisible joints stay exactly zero. `seed` (e.g. `batch_seed(keys)`) seeds the
    device's generator, so the same batch gets the same noise.
    """
    v = windows.values
    gen = torch.Generator(device=v.device)
    gen.manual_seed(seed)
    noise = torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype)
    noise.mul_(std).mul_(present.to(v.dtype)[..., None, None])
    v.add_(noise)
