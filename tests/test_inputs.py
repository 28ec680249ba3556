"""On-device input synthesis: heatmaps, patches, masking, jitter, noise, camera-frame targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpt_train.inputs import (
    HeatmapWindows, InputConfig, coordinate_tokens, heatmap_windows, jitter, key_normal, key_uniform, mhm_mask,
    patchify, prepare_batch, render_heatmaps, render_patches, to_camera_frame, window_linear, window_patches,
)

K = 17


def _joints(b: int, seed: int = 0, lo: float = 12.0, hi: float = 212.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(b, K, 2, generator=g)


def _batch(b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(b, 3, 3, generator=g, dtype=torch.float64))
    rot = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]
    return {
        "joints2d": _joints(b, seed),
        "visible": torch.rand(b, K, generator=g) > 0.2,
        "joints3d": torch.randn(b, K, 3, generator=g),
        "joints3d_smpl24": torch.randn(b, 24, 3, generator=g),
        "vertices": torch.randn(b, 50, 3, generator=g),
        "camera_R": rot.float(),
        "key": torch.randint(0, 2**62, (b,), generator=g),
    }


def test_heatmap_values_match_formula():
    x = _joints(2, 1)
    present = torch.ones(2, K, dtype=torch.bool)
    h = render_heatmaps(x, present, 224, 3.0)
    assert h.shape == (2, K, 224, 224) and h.dtype == torch.float32
    c = np.arange(224) + 0.5  # pixel centres
    xn = x.numpy().astype(np.float64)
    for b, k in ((0, 0), (1, 16), (1, 5)):
        d2 = (c[None, :] - xn[b, k, 0]) ** 2 + (c[:, None] - xn[b, k, 1]) ** 2
        np.testing.assert_allclose(h[b, k].numpy(), np.exp(-d2 / 9.0), atol=2e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_heatmaps_peak_at_joints(dtype):
    x = _joints(8, 2)
    h = render_heatmaps(x, torch.ones(8, K, dtype=torch.bool), 224, 3.0, dtype=dtype)
    assert h.dtype == dtype
    h = h.float()
    flat = h.reshape(8, K, -1).argmax(-1)
    peak = torch.stack([flat % 224, flat // 224], -1).float() + 0.5
    # float32: the argmax pixel centre is within half a pixel; bf16 rounding can tie neighbours
    assert (peak - x).abs().max() <= (0.5 + 1e-4 if dtype == torch.float32 else 1.0)
    # soft-argmax in a 21 px window around the peak recovers the sub-pixel position
    r = torch.arange(-10, 11)
    err = 0.0
    for b in range(8):
        for k in range(K):
            cx, cy = int(peak[b, k, 0]), int(peak[b, k, 1])
            win = h[b, k, cy + r[:, None], cx + r[None, :]]
            px, py = (cx + r + 0.5).float(), (cy + r + 0.5).float()
            est = torch.stack([(win.sum(0) * px).sum(), (win.sum(1) * py).sum()])
            err = max(err, float((est / win.sum() - x[b, k]).abs().max()))
    print(f'soft-argmax max error {dtype}: {err:.4f} px')
    assert err < (0.01 if dtype == torch.float32 else 0.1)


def test_patches_equal_patchify_and_layout():
    x, vis = _joints(3, 3), torch.rand(3, K) > 0.3
    h = render_heatmaps(x, vis)
    t = render_patches(x, vis, 224, 3.0, 8)
    assert t.shape == (3, 784, 8 * 8 * K)
    torch.testing.assert_close(t, patchify(h, 8), rtol=0, atol=0)
    # token (py * 28 + px), value (k * 64 + dy * 8 + dx) is heatmap pixel (k, 8py + dy, 8px + dx)
    for b, py, px, k, dy, dx in ((0, 3, 5, 2, 1, 7), (2, 27, 0, 16, 7, 0), (1, 10, 20, 9, 4, 4)):
        assert t[b, py * 28 + px, k * 64 + dy * 8 + dx] == h[b, k, 8 * py + dy, 8 * px + dx]
    # invisible joints render nothing
    assert h[~vis].abs().max() == 0


def _same_windows(a: HeatmapWindows, b: HeatmapWindows) -> bool:
    return a.values.equal(b.values) and a.origin.equal(b.origin) and (a.grid, a.patch) == (b.grid, b.patch)


@pytest.mark.parametrize("patch", [8, 16])
def test_windows_hold_the_whole_heatmap(patch):
    """Windows written into a full map equal the untruncated heatmaps to 2e-7, for joints inside,
    on the edge of and outside the crop, and the window holds every pixel within 4 sigma."""
    g = torch.Generator().manual_seed(4)
    x = torch.cat([_joints(4, 5), -30 + 284 * torch.rand(4, K, 2, generator=g)])  # some outside [0, 224]
    x[0, :4] = torch.tensor([[0.0, 0.0], [223.9, 223.9], [12.0, 211.99], [patch * 3.0, patch * 5.0 - 0.01]])
    vis = torch.rand(8, K, generator=g) > 0.2
    w = heatmap_windows(x, vis, 224, 3.0, patch)
    m = window_patches(3.0, patch, 224 // patch)
    assert w.values.shape == (8, K, m * patch, m * patch) and (m - 1) * patch > 24
    assert w.shape == (8, (224 // patch) ** 2, K * patch * patch)
    full = render_heatmaps(x, vis, 224, 3.0)
    torch.testing.assert_close(w.heatmaps(), full, rtol=0, atol=2e-7)
    torch.testing.assert_close(w.dense(), render_patches(x, vis, 224, 3.0, patch), rtol=0, atol=2e-7)
    # the window covers [x - 12, x + 12] (clipped to the crop) on both axes
    lo = w.origin.flip(-1) * patch
    inside = vis[..., None] & (x > -12) & (x < 236)
    assert (lo <= (x - 12).clamp(min=0))[inside].all()
    assert (lo + m * patch >= (x + 12).clamp(max=224))[inside].all()


@pytest.mark.parametrize("patch", [8, 16])
def test_window_linear_equals_dense_linear(patch):
    """The model's first input layer on windows = a Linear on the dense tokens, values and gradients."""
    g = torch.Generator().manual_seed(6)
    x, vis = _joints(3, 7), torch.rand(3, K, generator=g) > 0.3
    w = heatmap_windows(x, vis, 224, 3.0, patch)
    weight = torch.randn(24, K * patch * patch, generator=g, requires_grad=True)
    bias = torch.randn(24, generator=g, requires_grad=True)
    out = window_linear(w, weight, bias)
    ref = torch.nn.functional.linear(w.dense(), weight, bias)
    assert out.shape == ref.shape == (3, (224 // patch) ** 2, 24)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(out.shape, generator=g)
    gw, gb = torch.autograd.grad((out * up).sum(), (weight, bias))
    rw, rb = torch.autograd.grad((ref * up).sum(), (weight, bias))
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-4)
    # tokens away from every joint hold the bias alone
    far = torch.ones(3, (224 // patch) ** 2, dtype=torch.bool)
    far.scatter_(1, w.token_index().reshape(3, -1), False)
    torch.testing.assert_close(out.detach()[far], bias.detach().expand(int(far.sum()), -1))


def test_masked_and_invisible_joints_all_zero_with_noise():
    batch = _batch(8)
    cfg = InputConfig(mask_ratio=0.5, noise_std=0.1, jitter_px=2.0)
    out = prepare_batch(batch, cfg, "cpu")
    tok = out.tokens.dense().reshape(8, 784, K, 64)
    absent = ~out.present
    assert out.masked.any() and (absent & batch["visible"]).any()
    assert tok.permute(0, 2, 1, 3)[absent].abs().max() == 0
    assert out.present.equal(batch["visible"] & ~out.masked)
    present_max = tok.amax(dim=(1, 3))[out.present]
    assert present_max.min() > 0.8  # a Gaussian peak (plus noise) on every present joint
    # the noise: every window pixel of a present joint, std 0.1 around the clean Gaussian
    clean = prepare_batch(batch, InputConfig(mask_ratio=0.5, noise_std=0.0, jitter_px=2.0), "cpu")
    diff = (out.tokens.values - clean.tokens.values)[out.present]
    assert abs(diff.std().item() - 0.1) < 0.005 and abs(diff.mean().item()) < 0.005
    assert out.tokens.values[absent].abs().max() == 0


def test_mask_ratio_and_reproducibility():
    keys = torch.arange(20000, dtype=torch.int64) * 7919 + 12345
    m = mhm_mask(keys, K, 0.3)
    assert abs(m.float().mean().item() - 0.3) < 0.01
    perm = torch.randperm(len(keys))
    assert mhm_mask(keys[perm], K, 0.3).equal(m[perm])  # per sample, not per batch position
    u = key_uniform(keys, 5, 4)
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.01
    z = key_normal(keys, 9, 3)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert abs(torch.corrcoef(torch.stack([z[:, 0], z[:, 1]]))[0, 1].item()) < 0.03
    x = _joints(len(keys))
    d = jitter(x, keys, 2.0) - x
    assert abs(d.std().item() - 2.0) < 0.05
    assert jitter(x[:5], keys[:5], 2.0).equal(jitter(x, keys, 2.0)[:5])


def test_rotation_matches_independent_computation():
    batch = _batch(5)
    out = prepare_batch(batch, InputConfig(), "cpu")
    for b in range(5):
        r = batch["camera_R"][b].double().numpy()
        np.testing.assert_allclose(out.joints3d[b].numpy(), (r @ batch["joints3d"][b].double().numpy().T).T, atol=1e-5)
        np.testing.assert_allclose(out.vertices[b].numpy(), (r @ batch["vertices"][b].double().numpy().T).T, atol=1e-5)
        np.testing.assert_allclose(out.extra["smpl24"][b].numpy(),
                                   (r @ batch["joints3d_smpl24"][b].double().numpy().T).T, atol=1e-5)
    # a rotation keeps bone lengths
    pts = torch.randn(3, 10, 3)
    rot = batch["camera_R"][:3]
    torch.testing.assert_close(to_camera_frame(pts, rot).norm(dim=-1), pts.norm(dim=-1))


def test_switches_and_eval_config():
    batch = _batch(4)
    off = prepare_batch(batch, InputConfig(use_mhm=False, noise_std=0.5, jitter_px=5.0), "cpu")
    assert not off.masked.any() and off.present.equal(batch["visible"])
    torch.testing.assert_close(off.tokens.dense(), render_patches(batch["joints2d"], batch["visible"]),
                               rtol=0, atol=2e-7)
    ev = prepare_batch(batch, InputConfig().without_augmentation(), "cpu")
    assert _same_windows(ev.tokens, off.tokens)
    coords = prepare_batch(batch, InputConfig(use_heatmaps=False, use_mhm=False), "cpu")
    assert coords.tokens.shape == (4, K, 3)
    vis = batch["visible"]
    torch.testing.assert_close(coords.tokens[..., :2][vis], batch["joints2d"][vis] / 112.0 - 1.0)
    assert coords.tokens[~vis].abs().max() == 0 and coords.tokens[..., 2].equal(vis.float())
    torch.testing.assert_close(coords.tokens, coordinate_tokens(batch["joints2d"], vis))
    torch.testing.assert_close(off.joints2d, batch["joints2d"] / 112.0 - 1.0)
    bf = prepare_batch(batch, InputConfig(), "cpu", dtype=torch.bfloat16)
    assert bf.tokens.values.dtype == torch.bfloat16 and bf.joints3d.dtype == torch.float32
    again = prepare_batch(batch, InputConfig(), "cpu", dtype=torch.bfloat16)
    assert _same_windows(again.tokens, bf.tokens)  # noise, mask and jitter repeat for the same batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_rendering():
    batch = _batch(4)
    cfg = InputConfig(noise_std=0.0)
    cpu = prepare_batch(batch, cfg, "cpu")
    gpu = prepare_batch(batch, cfg, "cuda")
    assert gpu.masked.cpu().equal(cpu.masked)
    assert gpu.tokens.origin.cpu().equal(cpu.tokens.origin)
    torch.testing.assert_close(gpu.tokens.values.cpu(), cpu.tokens.values, atol=1e-5, rtol=0)
    assert math.isfinite(gpu.tokens.values.float().sum().item())
