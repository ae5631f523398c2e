"""Building blocks shared by the UNets: the enhanced UNet, its confidence UNet and the
active-learning attention U-Net. Each level doubles the width and halves the size by max
pooling; decoders go back up with 2x2x2 transposed convolutions. With ``strides``
(:mod:`asdseg.strides`) a level may keep an axis as it is, pooling and upsampling 1
voxel along it."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from asdseg.strides import Strides

Block = Callable[[int, int], nn.Module]


def conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def squeeze_excitation(channels: int, reduction: int = 4) -> nn.Sequential:
    """Per-channel weights in (0, 1) from globally pooled features."""
    hidden = max(channels // reduction, 1)
    return nn.Sequential(
        nn.AdaptiveAvgPool3d(1),
        nn.Conv3d(channels, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv3d(hidden, channels, 1),
        nn.Sigmoid(),
    )


def unet_widths(base_filters: int, levels: int) -> list[int]:
    """Widths of the ``levels`` encoder stages and of the bottom."""
    return [base_filters * 2**level for level in range(levels + 1)]


def encoder_stages(block: Block, in_channels: int, widths: list[int]) -> nn.ModuleList:
    levels = len(widths) - 1
    return nn.ModuleList(
        [block(in_channels if level == 0 else widths[level - 1], widths[level]) for level in range(levels)]
    )


def upsamplers(widths: list[int], strides: Strides) -> nn.ModuleList:
    """From the bottom up to the first level, coarsest first; ``strides`` finest first."""
    levels = len(widths) - 1
    return nn.ModuleList(
        [
            nn.ConvTranspose3d(widths[level + 1], widths[level], strides[level], stride=strides[level])
            for level in reversed(range(levels))
        ]
    )


def decoder_stages(block: Block, widths: list[int], input_factor: int = 2) -> nn.ModuleList:
    """Coarsest first; each stage takes ``input_factor`` x its width (2: skip + upsampled)."""
    levels = len(widths) - 1
    return nn.ModuleList(
        [block(input_factor * widths[level], widths[level]) for level in reversed(range(levels))]
    )


def encode(
    stages: nn.ModuleList, features: torch.Tensor, strides: Strides
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the encoder: returns the pooled output of the last stage and each stage's features
    (the long skips), finest first."""
    skips = []
    for stage, stride in zip(stages, strides):
        features = stage(features)
        skips.append(features)
        features = F.max_pool3d(features, stride)
    return features, skips
