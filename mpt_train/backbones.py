"""2D pose backbones that turn an image crop into the 17 "pose feature maps" of MPT.

MPT's fine-tuning stage puts an off-the-shelf 2D pose network in front of the transformer and
keeps only its heatmaps (no arg-max, no post-processing). Three families are provided, each
with parameter names and shapes equal to the public COCO keypoint checkpoints of the official
pose-estimation code bases, so that a downloaded ``.pth`` loads strictly:

- SimpleBaseline (``pose_resnet``): ResNet-18/34/50/101/152, three 4×4 stride-2 deconvolutions
  (``deconv_layers.{0,1,3,4,6,7}``) and a 1×1 head ``final_layer`` to 17 joints.
- HRNet (``pose_hrnet``) W32/W48: stem ``conv1/bn1/conv2/bn2``, ``layer1``, ``transition1..3``,
  ``stage2..4`` (HighResolutionModule: ``branches``, ``fuse_layers``), ``final_layer``.
- HigherHRNet (``pose_higher_hrnet``): the HRNet trunk, ``final_layers`` (17 heatmaps + 17 tag
  maps at 1/4, 17 heatmaps at 1/2) and ``deconv_layers``.

``PoseFeatureMaps`` wraps any of them: it takes an RGB image in [0, 1], puts its channels in the
order the family's public checkpoints were trained with, normalises it with the ImageNet
statistics, runs the network, and resizes the 17 maps to the transformer's grid (224×224). The
wrapped network sits under the attribute ``net``; its own ``state_dict`` has exactly the public
key names.

Channel order (``CHANNEL_ORDER``, the one place it is decided): everything upstream of a
backbone (the image stream, evaluation batches, ``predict``, pose-network training) hands
``PoseFeatureMaps`` RGB, and ``PoseFeatureMaps.forward`` alone reorders it per family:

- ``pose_resnet`` (SimpleBaseline) reads **BGR**: its reference training code reads images with
  OpenCV (BGR) and never converts them, yet normalises with the ImageNet mean and std listed in
  RGB order. So channel 0 is blue and is normalised with 0.485 / 0.229; we reproduce exactly that
  (reverse the channels, then apply the listed statistics unchanged), since it is what the public
  weights saw.
- ``pose_hrnet`` and ``pose_higher_hrnet`` read **RGB**: their reference code converts OpenCV's
  BGR to RGB (HRNet's COCO configs set ``COLOR_RGB: true``; HigherHRNet converts always).

A network trained here from scratch (``train-pose``) gets the same order as its family, so its
exported weights and a public checkpoint of that family are interchangeable. Fine-tuned
checkpoints record the order their backbone was fed (``mpt_train.finetune``), and one fed
another order is refused on load rather than silently fed the wrong colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mpt_data.conventions import COCO_JOINTS
from mpt_data.schema import CROP_SIZE, PIXEL_CENTRE

NUM_JOINTS = len(COCO_JOINTS)
BN_MOMENTUM = 0.1
# ImageNet statistics used by every public pose checkpoint, applied to channels 0, 1, 2 in the
# family's own order (for BGR families: as listed, to B, G, R; see the module docstring).
IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The channel order each checkpoint family was trained with: the single source of truth.
CHANNEL_ORDER: dict[str, Literal["RGB", "BGR"]] = {
    "pose_resnet": "BGR",  # SimpleBaseline: OpenCV-read images, never converted
    "pose_hrnet": "RGB",
    "pose_higher_hrnet": "RGB",
}


def channel_order(kind: str) -> Literal["RGB", "BGR"]:
    """The channel order backbones of family ``kind`` read ('RGB' or 'BGR')."""
    if kind not in CHANNEL_ORDER:
        raise ValueError(f"unknown backbone kind {kind!r}: {', '.join(CHANNEL_ORDER)}")
    return CHANNEL_ORDER[kind]


def to_backbone_channels(image_rgb: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, 3, H, W) RGB → the same image in family ``kind``'s channel order (a copy when reordered)."""
    return image_rgb.flip(1) if channel_order(kind) == "BGR" else image_rgb


# ------------------------------------------------------------------------------------------
# Residual blocks (names: conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0/1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


def _residual_layer(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """A ResNet stage; the first block gets a 1×1 projection when the shape changes."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out, momentum=BN_MOMENTUM)
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------
# SimpleBaseline


RESNET_BLOCKS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class PoseResNet(nn.Module):
    """SimpleBaseline: ResNet trunk, three deconvolutions, 1×1 joint head.

    ``width`` scales the ResNet stage widths (64 in the public models; smaller only for the
    CPU demo preset, which then has no public checkpoint). Output stride 4.
    """

    def __init__(self, depth: int = 50, num_joints: int = NUM_JOINTS, deconv_filters: int = 256, width: int = 64):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"pose_resnet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
        block, counts = RESNET_BLOCKS[depth]
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=BN_MOMENTUM)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = width
        self.layer1 = _residual_layer(block, c, width, counts[0])
        c = width * block.expansion
        self.layer2 = _residual_layer(block, c, width * 2, counts[1], 2)
        c = width * 2 * block.expansion
        self.layer3 = _residual_layer(block, c, width * 4, counts[2], 2)
        c = width * 4 * block.expansion
        self.layer4 = _residual_layer(block, c, width * 8, counts[3], 2)
        c = width * 8 * block.expansion
        deconv: list[nn.Module] = []
        for _ in range(3):
            deconv += [
                nn.ConvTranspose2d(c, deconv_filters, 4, 2, 1, output_padding=0, bias=False),
                nn.BatchNorm2d(deconv_filters, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            c = deconv_filters
        self.deconv_layers = nn.Sequential(*deconv)
        self.final_layer = nn.Conv2d(c, num_joints, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised image → (B, J, H/4, W/4) heatmaps."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))


# ------------------------------------------------------------------------------------------
# HRNet


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel BasicBlock branches, then every output resolution sums every input branch.

    ``fuse_layers[i][j]``: j > i, 1×1 conv + BN then nearest up-sampling by 2^(j-i) (done in
    ``forward``, it has no parameters); j < i, (i - j) stride-2 3×3 convs; j == i, identity.
    With ``multi_scale_output=False`` only the highest resolution output is produced.
    """

    def __init__(self, channels: Sequence[int], blocks: int = 4, multi_scale_output: bool = True):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(_residual_layer(BasicBlock, c, c, blocks) for c in channels)
        self.fuse_layers = nn.ModuleList()
        for i in range(n if multi_scale_output else 1):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(_conv_bn(channels[j], channels[i], 1, 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [
                        _conv_bn(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2, relu=k < i - j - 1)
                        for k in range(i - j)
                    ]
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, fuse in enumerate(row):
                if j == i:
                    continue
                z = fuse(xs[j])
                if j > i:
                    z = F.interpolate(z, size=y.shape[-2:], mode="nearest")
                y = y + z
            out.append(F.relu(y))
        return out


def _transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Channel adapters between stages; new lower-resolution branches come from the last one."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(_conv_bn(pre[i], c, 3, 1, relu=True) if pre[i] != c else nn.Identity())
        else:
            # Keys transitionN.i.k.{0,1}: one stride-2 conv step per halving.
            steps = [_conv_bn(pre[-1], c if k == i - len(pre) else pre[-1], 3, 2, relu=True) for k in range(i + 1 - len(pre))]
            layers.append(nn.Sequential(*steps))
    return layers


HRNET_STAGE_MODULES: tuple[int, int, int] = (1, 4, 3)  # modules in stage 2, 3, 4 (COCO configs)


class PoseHighResolutionNet(nn.Module):
    """HRNet-W``width`` trunk (W32: branches 32/64/128/256; W48: 48/96/192/384).

    ``higher=False``: the ``pose_hrnet`` top-down model, ``final_layer`` 1×1 to 17 joints at
    stride 4. ``higher=True``: HigherHRNet; ``final_layers[0]`` gives 17 heatmaps + 17 tag maps
    at stride 4, ``deconv_layers[0]`` (on the stride-4 features concatenated with them) doubles
    the resolution and ``final_layers[1]`` gives 17 heatmaps at stride 2.
    """

    def __init__(self, width: int = 32, num_joints: int = NUM_JOINTS, higher: bool = False):
        super().__init__()
        self.higher = higher
        self.num_joints = num_joints
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.layer1 = _residual_layer(Bottleneck, 64, 64, 4)
        widths = [width * 2**k for k in range(4)]
        self.transition1 = _transition([256], widths[:2])
        self.stage2 = nn.Sequential(*[HighResolutionModule(widths[:2]) for _ in range(HRNET_STAGE_MODULES[0])])
        self.transition2 = _transition(widths[:2], widths[:3])
        self.stage3 = nn.Sequential(*[HighResolutionModule(widths[:3]) for _ in range(HRNET_STAGE_MODULES[1])])
        self.transition3 = _transition(widths[:3], widths)
        m4 = HRNET_STAGE_MODULES[2]
        self.stage4 = nn.Sequential(*[HighResolutionModule(widths, multi_scale_output=k < m4 - 1) for k in range(m4)])
        if higher:
            tagged = 2 * num_joints  # one associative-embedding tag map per joint
            self.final_layers = nn.ModuleList([nn.Conv2d(width, tagged, 1), nn.Conv2d(width, num_joints, 1)])
            up = nn.Sequential(
                nn.ConvTranspose2d(width + tagged, width, 4, 2, 1, output_padding=0, bias=False),
                nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            )
            refine = [nn.Sequential(BasicBlock(width, width)) for _ in range(4)]
            self.deconv_layers = nn.ModuleList([nn.Sequential(up, *refine)])
        else:
            self.final_layer = nn.Conv2d(width, num_joints, 1, 1, 0)

    @staticmethod
    def _through(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised image → (B, J, H/4, W/4) heatmaps (HigherHRNet: H/2, W/2).

        HigherHRNet's two heatmap resolutions are averaged at the finer one, as its own
        inference does; the tag maps are dropped.
        """
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = self.layer1(x)
        ys = self.stage2(self._through(self.transition1, [x]))
        ys = self.stage3(self._through(self.transition2, ys))
        ys = self.stage4(self._through(self.transition3, ys))
        feat = ys[0]
        if not self.higher:
            return self.final_layer(feat)
        coarse = self.final_layers[0](feat)
        fine = self.final_layers[1](self.deconv_layers[0](torch.cat([feat, coarse], 1)))
        coarse_up = F.interpolate(coarse[:, : self.num_joints], size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return (coarse_up + fine) / 2


# ------------------------------------------------------------------------------------------
# Configuration, construction, the feature-map wrapper


@dataclass(frozen=True)
class BackboneConfig:
    """Which 2D pose network makes the pose feature maps.

    kind: ``pose_resnet`` (SimpleBaseline), ``pose_hrnet`` or ``pose_higher_hrnet``.
    depth: ResNet depth (pose_resnet). width: HRNet width 32/48, or the ResNet base width
    (64 public; smaller for the CPU demo). deconv_filters: SimpleBaseline deconvolution width.
    out_size: side of the maps handed to the transformer. in_size: side the crop is resized to
    before the network (0: as given, 224 in MPT); the CPU demo's network reads 128 px crops, about
    a third of the work, and its maps are still resized to ``out_size``. frozen: no gradients, BN
    statistics fixed (the paper's Table 4 "frozen backbone"). checkpoint: a public or saved ``.pth``.
    """

    kind: Literal["pose_resnet", "pose_hrnet", "pose_higher_hrnet"] = "pose_resnet"
    depth: int = 50
    width: int = 64
    deconv_filters: int = 256
    num_joints: int = NUM_JOINTS
    out_size: int = CROP_SIZE
    in_size: int = 0
    frozen: bool = False
    checkpoint: str | None = None


def simple_baseline(depth: int = 50, **kw) -> BackboneConfig:
    """SimpleBaseline ResNet-``depth`` config (public models: 50, 101, 152 at width 64)."""
    return BackboneConfig(kind="pose_resnet", depth=depth, width=64, **kw)


def hrnet(width: int = 32, higher: bool = False, **kw) -> BackboneConfig:
    """HRNet-W``width`` (32 or 48) config; ``higher`` selects the HigherHRNet head."""
    return BackboneConfig(kind="pose_higher_hrnet" if higher else "pose_hrnet", width=width, **kw)


# The CPU demo backbone: ResNet-18 layout at a quarter of the width, 64 deconvolution filters,
# reading 128 px crops (32×32 maps before the resize to the transformer's 224 grid).
TINY_BACKBONE = BackboneConfig(kind="pose_resnet", depth=18, width=16, deconv_filters=64, in_size=128)


def build_pose_network(cfg: BackboneConfig) -> nn.Module:
    """The bare network whose ``state_dict`` keys equal the public checkpoint's."""
    if cfg.kind == "pose_resnet":
        return PoseResNet(cfg.depth, cfg.num_joints, cfg.deconv_filters, cfg.width)
    if cfg.kind == "pose_hrnet":
        return PoseHighResolutionNet(cfg.width, cfg.num_joints, higher=False)
    if cfg.kind == "pose_higher_hrnet":
        return PoseHighResolutionNet(cfg.width, cfg.num_joints, higher=True)
    raise ValueError(f"unknown backbone kind {cfg.kind!r}: {', '.join(CHANNEL_ORDER)}")


class PoseFeatureMaps(nn.Module):
    """Image crop → 17 pose feature maps on the transformer's grid.

    Input: (B, 3, H, W) float RGB in [0, 1] (any H, W; 224×224 crops in MPT), reordered to the
    family's channel order (``CHANNEL_ORDER``), resized to ``cfg.in_size`` square first when
    that is set.
    Output: (B, 17, out_size, out_size) float, the raw heatmaps bilinearly resized.
    A frozen backbone has no trainable parameters and stays in eval mode (fixed BN statistics)
    even when its parent module is put in training mode.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.net = build_pose_network(cfg)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        if cfg.checkpoint:
            load_pose_checkpoint(self.net, cfg.checkpoint, strict=True)
        self.set_frozen(cfg.frozen)

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        for p in self.net.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.net.eval()

    def train(self, mode: bool = True) -> "PoseFeatureMaps":
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    @property
    def channel_order(self) -> str:
        return channel_order(self.cfg.kind)

    def native(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB crops → (B, 17, h, w) heatmaps on the network's own grid (e.g. 32 × 32 for
        the demo's network reading 128 px crops; 56 × 56 for SimpleBaseline at 224)."""
        x = to_backbone_channels(image, self.cfg.kind)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.cfg.in_size and x.shape[-2:] != (self.cfg.in_size, self.cfg.in_size):
            x = F.interpolate(x, size=(self.cfg.in_size, self.cfg.in_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.net(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        maps = self.native(image)
        size = (self.cfg.out_size, self.cfg.out_size)
        if maps.shape[-2:] != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps


def argmax_joints(maps: torch.Tensor, crop: int | None = None) -> torch.Tensor:
    """The 2D joints a pose network's heatmaps point at (pose-network evaluation, `predict`'s overlay).

    (B, K, H, W) maps → (B, K, 2) x, y of each map's maximum, pixel centres at integers; in the
    pixels of a ``crop``-side image the square maps span when given (else map pixels)."""
    b, k, h, w = maps.shape
    idx = maps.reshape(b, k, h * w).argmax(-1)
    xy = torch.stack([idx % w, idx // w], dim=-1).float()
    if crop is not None and crop != w:
        xy = (xy + PIXEL_CENTRE) * (crop / w) - PIXEL_CENTRE
    return xy


def refined_joints(maps: torch.Tensor, crop: int, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2D joints of (B, K, h, w) heatmaps to sub-pixel precision, differentiable in the map values
    next to each peak.

    Each map's arg-max is refined along x and y by the vertex of the parabola through the log values
    at the peak and its two neighbours (exact for a Gaussian peak, the shape the maps are trained to
    have: the refinement of "distribution-aware" keypoint decoding). Being local, it is not pulled
    between two peaks (a left and a right wrist) as a soft-argmax over the whole map is. Values are
    clamped to ``eps`` before the log. Returns ((B, K, 2) x, y in the pixels of the ``crop``-side image
    the square maps span, pixel centres at i + 0.5 (the convention of :mod:`mpt_train.inputs`),
    (B, K) each map's peak value).
    """
    b, k, h, w = maps.shape
    flat = maps.reshape(b, k, h * w)
    peak, idx = flat.max(-1)
    y, x = idx // w, idx % w
    logs = flat.float().clamp_min(eps).log()

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return torch.gather(logs, 2, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))[..., None])[..., 0]

    def offset(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
        curve = plus - 2 * centre + minus
        safe = torch.where(curve < -1e-6, curve, torch.full_like(curve, -1.0))
        return torch.where(curve < -1e-6, (minus - plus) / (2 * safe), torch.zeros_like(curve)).clamp(-0.5, 0.5)

    centre = at(y, x)
    dx = offset(at(y, x - 1), centre, at(y, x + 1))
    dy = offset(at(y - 1, x), centre, at(y + 1, x))
    xy = torch.stack([x.float() + dx, y.float() + dy], -1)  # map pixels, centres at integers
    return (xy + PIXEL_CENTRE) * (crop / w), peak


# ------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointMismatch(RuntimeError):
    """A checkpoint's keys or shapes differ from the network's; the message names them."""


@dataclass(frozen=True)
class LoadReport:
    path: str
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[str, ...] = ()  # "key: checkpoint (a, b) vs model (c, d)"
    filled: tuple[str, ...] = field(default=())  # BN counters absent in old checkpoints

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 12) -> str:
        parts = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.wrong_shape)):
            if keys:
                shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
                parts.append(f"{len(keys)} {title}: {shown}")
        return f"{self.path}: " + ("; ".join(parts) if parts else "all keys match")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a pose checkpoint file.

    Accepts a bare state dict or one under ``state_dict``/``model``; strips the ``module.``
    prefix that DataParallel training leaves on the public HRNet files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatch(f"{path}: cannot be read as a torch checkpoint ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def compare_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: str = "<state>") -> LoadReport:
    """Key and shape differences between ``state`` and ``module.state_dict()``."""
    own = module.state_dict()
    filled = tuple(k for k in own if k.endswith("num_batches_tracked") and k not in state)
    missing = tuple(k for k in own if k not in state and k not in filled)
    unexpected = tuple(k for k in state if k not in own)
    wrong = tuple(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    )
    return LoadReport(path, missing, unexpected, wrong, filled)


def load_pose_checkpoint(module: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a pose checkpoint into ``module`` (a bare pose network, e.g. ``PoseFeatureMaps.net``).

    strict: any missing, unexpected or wrongly shaped key raises ``CheckpointMismatch`` naming
    them; BatchNorm ``num_batches_tracked`` counters absent from older files are the one
    tolerated difference (set to 0). Non-strict loads what matches and returns the report.
    """
    state = read_state_dict(path)
    report = compare_state_dict(module, state, str(path))
    if strict and not report.clean:
        raise CheckpointMismatch(report.describe())
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    for k in report.filled:
        usable[k] = torch.zeros_like(own[k])
    module.load_state_dict(usable, strict=False)
    return report
