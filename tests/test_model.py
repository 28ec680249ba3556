"""The mesh regression transformer: shapes, up-sampling initialisation, MVM, state round trip, FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tiny_models import synthetic_topology_arrays, tiny_model
from mpt_train.model import (ModelConfig, forward_matmul_flops, model_from_state, sincos_positions, sparse_to_dense,
                             topology_from_store, typical_camera_rotation, weak_perspective)


def test_paper_preset_matches_the_paper():
    cfg = ModelConfig.paper()
    assert cfg.hidden_sizes == (1024, 256, 64) and cfg.layers_per_block == 4 and cfg.heads == 4
    assert cfg.num_input_tokens == 784 and cfg.input_token_dim == 8 * 8 * 17
    tiny = ModelConfig.tiny()
    assert len(tiny.hidden_sizes) == 3 and tiny.hidden_sizes[0] < 1024


def test_sparse_to_dense_matches_loop():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 5, size=(12, 3))
    w = rng.random((12, 3)).astype(np.float32)
    dense = sparse_to_dense(idx, w, 5)
    ref = np.zeros((12, 5), np.float32)
    for i in range(12):
        for k in range(3):
            ref[i, idx[i, k]] += w[i, k]
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="out of range"):
        sparse_to_dense(idx, w, 4)


def test_topology_levels_compose_into_full_mesh_ids():
    arrays = synthetic_topology_arrays(64)
    topo = topology_from_store(arrays)
    ids1, ids2 = arrays["level1/vertex_ids"], arrays["level2/vertex_ids"]
    np.testing.assert_array_equal(topo.level_vertex_ids[2], ids1[ids2])
    assert [u.shape for u in topo.upsample] == [(16, 4), (64, 16)]


def test_forward_shapes_and_initial_mesh_is_upsampled_template():
    model = tiny_model().eval()
    cfg = model.cfg
    x = torch.randn(3, cfg.num_input_tokens, cfg.input_token_dim)
    out = model(x)
    assert out["joints"].shape == (3, 17, 3) and out["vertices"].shape == (3, 64, 3)
    assert [lv.shape[1] for lv in out["levels"]] == [4, 16, 64] and out["camera"].shape == (3, 3)
    # zero-initialised heads: coarse = template at the coarse ids, full = dense(U1) dense(U0) coarse
    arrays = synthetic_topology_arrays(64)
    tmpl = arrays["template"]
    coarse = tmpl[arrays["level1/vertex_ids"][arrays["level2/vertex_ids"]]]
    u2 = sparse_to_dense(arrays["level2/up_index"], arrays["level2/up_weight"], 4)
    u1 = sparse_to_dense(arrays["level1/up_index"], arrays["level1/up_weight"], 16)
    np.testing.assert_allclose(out["vertices"][0].detach().numpy(), u1 @ (u2 @ coarse), atol=1e-5)
    np.testing.assert_allclose(out["camera"][0].detach().numpy(), [cfg.camera_scale_init, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="input tokens"):
        model(torch.randn(3, cfg.num_input_tokens + 1, cfg.input_token_dim))


def test_masked_vertex_modeling_only_in_training():
    model = tiny_model(mvm_ratio=0.0)
    x = torch.randn(2, model.cfg.num_input_tokens, model.cfg.input_token_dim)
    with torch.no_grad():
        model.coord_head.weight.normal_()  # make outputs depend on the query tokens
        a = model.train()(x)["vertices"]
        b = model.eval()(x)["vertices"]
    torch.testing.assert_close(a, b)
    masked = tiny_model(mvm_ratio=1.0)
    masked.load_state_dict(model.state_dict())
    masked.train()
    out = masked(x)
    assert not torch.allclose(out["vertices"], b)
    out["vertices"].sum().backward()
    assert masked.mask_token.grad is not None and masked.mask_token.grad.abs().sum() > 0


def test_mvm_draws_come_from_the_models_own_generator():
    """Global RNG draws between forwards do not move the masks; a saved generator state resumes them."""
    model = tiny_model(mvm_ratio=0.5).train()
    with torch.no_grad():
        model.coord_head.weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, model.cfg.num_input_tokens, model.cfg.input_token_dim,
                    generator=torch.Generator().manual_seed(2))
    model.seed_rng(7)
    with torch.no_grad():
        first = model(x)["vertices"]
        saved = model.rng_state_dict()
        second = model(x)["vertices"]
        assert not torch.equal(first, second)  # the masks differ from one forward to the next
        model.seed_rng(7)
        torch.rand(1000)  # e.g. a DataLoader starting: must not shift the masks
        assert torch.equal(model(x)["vertices"], first)
        other = tiny_model(mvm_ratio=0.5).train()  # a fresh process resuming from the saved state
        other.load_state_dict(model.state_dict())
        other.load_rng_state_dict(saved)
        torch.manual_seed(123)
        assert torch.equal(other(x)["vertices"], second)
    with pytest.raises(ValueError, match="RNG state version"):
        other.load_rng_state_dict({**saved, "version": 99})


def test_versioned_state_round_trip_and_checks():
    model = tiny_model().eval()
    x = torch.randn(2, model.cfg.num_input_tokens, model.cfg.input_token_dim)
    blob = model.state_dict_versioned()
    again = model_from_state(blob).eval()
    torch.testing.assert_close(again(x)["vertices"], model(x)["vertices"], rtol=0, atol=0)
    assert torch.equal(again.faces, model.faces) and again.extra_regressor("h36m17").shape == (17, 64)
    with pytest.raises(ValueError, match="version"):
        model.load_state_dict_versioned({**blob, "version": 99})
    other = tiny_model(hidden_sizes=(64, 32, 16))
    with pytest.raises(ValueError, match="different ModelConfig"):
        other.load_state_dict_versioned(blob)


def _counted_flops(model, inputs, batch: int) -> int:
    """torch's FlopCounter on one forward, less the batch-independent query embedding, plus the
    attention matmuls when the counter does not see inside SDPA."""
    cfg = model.cfg
    with FlopCounterMode(display=False) as fc:
        model(inputs)
    counts = fc.get_flop_counts()
    counted = fc.get_total_flops() - sum(counts["MeshRegressor.query_coord"].values())
    n = 1 + cfg.num_joints + cfg.level_sizes[0] + cfg.num_input_tokens
    sdpa = sum(op for op in counts["Global"] if "attention" in str(op))
    attention = 0 if sdpa else batch * cfg.layers_per_block * sum(4 * n * n * h for h in cfg.hidden_sizes)
    return counted + attention


def test_flop_count_matches_torch_counter():
    model = tiny_model().eval()
    cfg = model.cfg
    b = 3
    x = torch.randn(b, cfg.num_input_tokens, cfg.input_token_dim)
    assert forward_matmul_flops(cfg, b) == _counted_flops(model, x, b)


def test_heatmap_windows_give_the_dense_tokens_output_and_flops():
    """The model on heatmap windows = the model on their dense tokens (forward and gradients),
    and the FLOP count with ``window`` matches torch's counter on the windowed forward."""
    from mpt_train.inputs import heatmap_windows

    model = tiny_model(patch=16).eval()
    g = torch.Generator().manual_seed(3)
    j2d = 10 + 204 * torch.rand(2, 17, 2, generator=g)
    w = heatmap_windows(j2d, torch.rand(2, 17, generator=g) > 0.2, 224, 3.0, 16)
    with torch.no_grad():
        model.coord_head.weight.normal_(std=0.1)  # outputs depend on the inputs
    a, b = model(w), model(w.dense())
    for key in ("joints", "vertices", "camera"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    first = model.input_embed[0].weight
    ga = torch.autograd.grad(a["vertices"].square().sum(), first)[0]
    gb = torch.autograd.grad(b["vertices"].square().sum(), first)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-6)
    cfg = model.cfg
    assert forward_matmul_flops(cfg, 2, window=(17, w.window, 16)) == _counted_flops(model, w, 2)
    saved = 2 * 2 * cfg.input_mlp_hidden * (196 * 17 * 256 - 17 * 9 * 256)  # 196 tokens vs 17 windows of 3x3
    assert forward_matmul_flops(cfg, 2) - forward_matmul_flops(cfg, 2, window=(17, 3, 16)) == saved


def test_sincos_positions_of_the_patch_grid():
    """Values against the formula written out in numpy; heatmap grids start from them, coordinate
    tokens (no grid) from small random codes."""
    p = sincos_positions(14, 128).numpy()
    assert p.shape == (196, 128)
    freq = 100.0 ** (-np.arange(32) / 31)
    for token in (0, 15, 195):
        row, col = divmod(token, 14)
        ref = np.concatenate([np.sin(col * freq), np.cos(col * freq), np.sin(row * freq), np.cos(row * freq)])
        np.testing.assert_allclose(p[token], ref, atol=1e-6)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    assert d[0, 1] < d[0, 2] < d[0, 5] and d[0, 14] < d[0, 28]  # nearer patches, nearer codes
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 30)
    heat = tiny_model(patch=16)
    torch.testing.assert_close(heat.input_pos.detach(), sincos_positions(14, heat.cfg.hidden_sizes[0]))
    from tiny_models import small_input_model
    coords = small_input_model(tokens=8)
    assert coords.input_pos.shape == (8, coords.cfg.hidden_sizes[0]) and coords.input_pos.abs().max() < 0.2


def test_weak_perspective_and_typical_rotation():
    pts = torch.tensor([[[1.0, 2.0, 5.0], [-1.0, 0.5, 3.0]]])
    cam = torch.tensor([[0.5, 0.1, -0.2]])
    np.testing.assert_allclose(weak_perspective(pts, cam)[0].numpy(), [[0.6, 0.8], [-0.4, 0.05]], atol=1e-6)
    flip = np.diag([1.0, -1.0, -1.0])
    ring = [flip @ np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
            for a in np.linspace(0, 2 * np.pi, 4, endpoint=False)]
    r = typical_camera_rotation(np.asarray(ring))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(r @ [0, 1, 0], [0, -1, 0], atol=1e-6)  # body up -> image up (y down)
