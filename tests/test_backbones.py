"""Pose backbones: public checkpoint key names and shapes, strict round trips, feature-map output."""

from __future__ import annotations

import pytest
import torch

from mpt_train.backbones import (
    TINY_BACKBONE, BackboneConfig, CheckpointMismatch, PoseFeatureMaps, build_pose_network, hrnet,
    load_pose_checkpoint, simple_baseline,
)


def _shapes(cfg: BackboneConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_pose_network(cfg).state_dict().items()}


def test_pose_resnet_50_names_and_sizes_match_the_public_model():
    s = _shapes(simple_baseline(50))
    assert s["final_layer.weight"] == (17, 256, 1, 1)
    assert s["final_layer.bias"] == (17,)
    assert s["conv1.weight"] == (64, 3, 7, 7)
    assert s["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert s["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert s["deconv_layers.0.weight"] == (2048, 256, 4, 4)
    assert s["deconv_layers.7.running_var"] == (256,)
    assert "deconv_layers.2.weight" not in s  # ReLU slots carry no parameters
    params = sum(v.numel() for k, v in build_pose_network(simple_baseline(50)).named_parameters())
    assert abs(params / 1e6 - 34.0) < 0.1  # SimpleBaseline ResNet-50: 34.0 M parameters
    assert "layer3.22.conv2.weight" in _shapes(simple_baseline(101))


def test_hrnet_w32_names_and_sizes_match_the_public_model():
    s = _shapes(hrnet(32))
    assert s["conv2.weight"] == (64, 64, 3, 3)
    assert s["transition1.0.0.weight"] == (32, 256, 3, 3)
    assert s["transition1.1.0.0.weight"] == (64, 256, 3, 3)
    assert s["transition3.3.0.0.weight"] == (256, 128, 3, 3)
    assert s["stage3.3.branches.2.3.conv2.weight"] == (128, 128, 3, 3)
    assert s["stage4.2.fuse_layers.0.3.0.weight"] == (32, 256, 1, 1)
    assert s["stage4.1.fuse_layers.3.0.2.0.weight"] == (256, 32, 3, 3)
    assert s["stage4.1.fuse_layers.3.0.0.0.weight"] == (32, 32, 3, 3)
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in s)  # last module: one output
    assert s["final_layer.weight"] == (17, 32, 1, 1)
    params = sum(v.numel() for v in build_pose_network(hrnet(32)).parameters())
    assert abs(params / 1e6 - 28.5) < 0.1  # pose_hrnet_w32: 28.5 M
    assert _shapes(hrnet(48))["final_layer.weight"] == (17, 48, 1, 1)


def test_higher_hrnet_head_names_and_sizes():
    s = _shapes(hrnet(32, higher=True))
    assert s["final_layers.0.weight"] == (34, 32, 1, 1)  # 17 heatmaps + 17 tag maps
    assert s["final_layers.1.weight"] == (17, 32, 1, 1)
    assert s["deconv_layers.0.0.0.weight"] == (66, 32, 4, 4)
    assert s["deconv_layers.0.4.0.conv2.weight"] == (32, 32, 3, 3)
    assert "final_layer.weight" not in s


def test_checkpoint_round_trips_strictly_and_mismatches_are_named(tmp_path):
    torch.manual_seed(0)
    net = build_pose_network(TINY_BACKBONE)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel-style file
    path = tmp_path / "pose.pth"
    torch.save({"state_dict": state}, path)
    fresh = build_pose_network(TINY_BACKBONE)
    report = load_pose_checkpoint(fresh, path, strict=True)
    assert report.clean
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    broken = dict(net.state_dict())
    broken.pop("final_layer.bias")
    broken["extra.weight"] = torch.zeros(1)
    broken["conv1.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(broken, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatch) as err:
        load_pose_checkpoint(build_pose_network(TINY_BACKBONE), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "final_layer.bias" in msg and "extra.weight" in msg and "conv1.weight" in msg
    loose = load_pose_checkpoint(build_pose_network(TINY_BACKBONE), tmp_path / "bad.pth", strict=False)
    assert loose.missing == ("final_layer.bias",) and loose.unexpected == ("extra.weight",)


def test_old_checkpoints_without_bn_counters_load():
    net = build_pose_network(TINY_BACKBONE)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, os.path.join(d, "old.pth"))
        report = load_pose_checkpoint(build_pose_network(TINY_BACKBONE), os.path.join(d, "old.pth"))
    assert report.clean and len(report.filled) > 0


def test_feature_maps_shape_frozen_and_resnet50_forward():
    torch.manual_seed(0)
    maps = PoseFeatureMaps(simple_baseline(50)).eval()
    with torch.no_grad():
        y = maps(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 17, 224, 224) and torch.isfinite(y).all()

    frozen = PoseFeatureMaps(BackboneConfig(**{**TINY_BACKBONE.__dict__, "frozen": True}))
    frozen.train()
    assert not frozen.net.training
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = PoseFeatureMaps(TINY_BACKBONE).train()
    out = trainable(torch.rand(2, 3, 96, 96))
    out.square().mean().backward()
    assert trainable.net.conv1.weight.grad is not None


def test_input_size_resizes_the_crop_before_the_network_and_keeps_the_map_grid():
    import dataclasses

    import torch.nn.functional as F

    torch.manual_seed(0)
    maps = PoseFeatureMaps(TINY_BACKBONE).eval()
    assert TINY_BACKBONE.in_size == 128
    seen = []
    maps.net.conv1.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        y = maps(image)
        # the same network on a crop resized by hand (reversed to BGR, as SimpleBaseline reads;
        # ImageNet-normalised; antialiased bilinear)
        x = (image.flip(1) - maps.mean) / maps.std
        x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
        ref = F.interpolate(maps.net(x), size=(224, 224), mode="bilinear", align_corners=False)
    assert seen[0] == (128, 128) and y.shape == (1, 17, 224, 224)
    assert torch.allclose(y, ref, atol=1e-5)
    full = PoseFeatureMaps(dataclasses.replace(TINY_BACKBONE, in_size=0)).eval()
    full.net.load_state_dict(maps.net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(full(image), y, atol=1e-3)  # in_size 0: the crop goes in as given


class _Captured(Exception):
    """Raised by a hook to stop a forward once the network's input has been seen."""


def network_input(maps: PoseFeatureMaps, run) -> torch.Tensor:
    """The tensor ``maps.net`` receives during ``run()``, mapped back through the ImageNet
    normalisation to [0, 1] pixel values in the order the network reads them."""
    seen = []

    def grab(module, args):
        seen.append(args[0].detach().clone())
        raise _Captured

    handle = maps.net.conv1.register_forward_pre_hook(grab)
    try:
        run()
    except _Captured:
        pass
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0] * maps.std + maps.mean


def test_channel_order_is_a_property_of_the_checkpoint_family():
    from mpt_train.backbones import CHANNEL_ORDER, channel_order

    assert CHANNEL_ORDER == {"pose_resnet": "BGR", "pose_hrnet": "RGB", "pose_higher_hrnet": "RGB"}
    assert channel_order(simple_baseline(50).kind) == "BGR" and channel_order(hrnet(48, higher=True).kind) == "RGB"
    with pytest.raises(ValueError, match="unknown backbone kind 'vit'"):
        channel_order("vit")
    image = torch.zeros(1, 3, 32, 32)
    image[:, 0] = 0.9  # a red picture
    image[:, 2] = 0.1
    import dataclasses

    sb = PoseFeatureMaps(dataclasses.replace(TINY_BACKBONE, in_size=0)).eval()  # no resize: pixel for pixel
    hr = PoseFeatureMaps(hrnet(8)).eval()
    x_sb, x_hr = network_input(sb, lambda: sb(image)), network_input(hr, lambda: hr(image))
    assert torch.allclose(x_hr, image, atol=1e-6)  # HRNet reads R, G, B
    assert torch.allclose(x_sb, image.flip(1), atol=1e-6)  # SimpleBaseline reads B, G, R ...
    # ... normalised with the listed ImageNet statistics as they are: channel 0 (blue) with 0.485 / 0.229
    raw = []
    sb.net.conv1.register_forward_pre_hook(lambda m, a: raw.append(a[0]))
    with torch.no_grad():
        sb(image)
    assert abs(float(raw[0][0, 0, 0, 0]) - (0.1 - 0.485) / 0.229) < 1e-5


def test_refined_joints_find_sub_pixel_peaks_and_ignore_a_second_peak():
    from mpt_train.backbones import refined_joints
    from mpt_train.inputs import render_heatmaps

    # Gaussians on a 32-pixel grid at sub-pixel places (pixel centres at i + 0.5), plus a weaker
    # second peak far away that a whole-map soft-argmax would be pulled towards
    xy = torch.tensor([[[7.3, 20.8], [15.5, 3.2]]])
    maps = render_heatmaps(xy, torch.ones(1, 2, dtype=torch.bool), 32, 1.5)
    maps[0, 0] += 0.8 * render_heatmaps(torch.tensor([[[25.0, 5.0]]]), torch.ones(1, 1, dtype=torch.bool), 32, 1.5)[0, 0]
    got, peak = refined_joints(maps, crop=224)
    assert torch.allclose(got, xy * 7, atol=0.05)  # 224 / 32 = 7 crop pixels per map pixel
    assert torch.allclose(peak, maps.amax(dim=(-2, -1)))
    maps.requires_grad_(True)
    refined_joints(maps, crop=224)[0].sum().backward()
    assert maps.grad.abs().sum() > 0  # fine-tuning reaches the 2D network through the refinement


def test_keypoint_feed_gives_the_transformer_its_pre_training_heatmaps():
    """With feed "keypoints" the transformer sees exactly what pre-training renders for the refined peaks."""
    from tiny_models import tiny_model

    from mpt_train.backbones import TINY_BACKBONE, PoseFeatureMaps, refined_joints
    from mpt_train.inputs import heatmap_windows
    from mpt_train.loading import BackboneMPT, MapFeed

    torch.manual_seed(0)
    regressor = tiny_model(patch=16).eval()
    backbone = PoseFeatureMaps(TINY_BACKBONE).eval()
    model = BackboneMPT(backbone, regressor, feed=MapFeed(mode="keypoints", threshold=-1.0)).eval()
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        out = model(images)
        xy, _ = refined_joints(backbone.native(images), 224)
        want = regressor(heatmap_windows(xy, torch.ones(2, 17, dtype=torch.bool), 224, 3.0, 16))
    assert torch.allclose(out["vertices"], want["vertices"], atol=1e-6)
    blob = model.state_dict_versioned()
    assert blob["feed"] == {"mode": "keypoints", "sigma": 3.0, "threshold": -1.0}
