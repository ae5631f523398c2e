"""The enhanced UNet of difficulty-aware attention with confidence learning (Nie et al., AAAI'19),
and its confidence network.

Encoder and decoder stages are residual blocks; the bottleneck is a dilated residual block; the
long skips pass through a transformation module (a residual block) before they are
concatenated with the upsampled features, and the concatenation is fused by channel attention
(squeeze-and-excitation) so that the network weighs encoder against decoder features. Deep
supervision adds 1x1x1 heads at the two coarser decoder scales beside the full-resolution one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the input (projected by a 1x1x1 conv when widths differ), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, out_channels, dilation),
            nn.Conv3d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm3d(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=False), nn.BatchNorm3d(out_channels)
            )
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(features) + self.shortcut(features))


class DilatedBottleneck(nn.Module):
    """Residual blocks with dilation 2 then 4: a wide receptive field at the coarsest scale."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            ResidualBlock(in_channels, out_channels, 2), ResidualBlock(out_channels, out_channels, 4)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.blocks(features)


class ChannelAttentionFusion(nn.Module):
    """Squeeze-and-excitation over the concatenated [upsampled, skip] features, then a 1x1x1
    conv back to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(in_channels // reduction, 1)
        self.excitation = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, in_channels, 1),
            nn.Sigmoid(),
        )
        self.project = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features * self.excitation(features))


class EnhancedUNet(nn.Module):
    """``forward`` returns ``logits`` (full resolution) and, in training mode,
    ``deep_supervision``: logits at the two coarser decoder scales (1/4 and 1/2).
    Spatial sizes must be multiples of 2^levels (16 with the default 4 downsamplings)."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, base_filters: int = 16, levels: int = 4
    ) -> None:
        super().__init__()
        widths = [base_filters * 2**level for level in range(levels + 1)]
        self.encoder = nn.ModuleList(
            [
                ResidualBlock(in_channels if level == 0 else widths[level - 1], widths[level])
                for level in range(levels)
            ]
        )
        self.bottleneck = DilatedBottleneck(widths[levels - 1], widths[levels])
        self.transforms = nn.ModuleList(
            [ResidualBlock(widths[level], widths[level]) for level in range(levels)]
        )
        self.upsamplers = nn.ModuleList(
            [
                nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2)
                for level in reversed(range(levels))
            ]
        )
        self.fusions = nn.ModuleList(
            [ChannelAttentionFusion(2 * widths[level], widths[level]) for level in reversed(range(levels))]
        )
        self.decoder = nn.ModuleList(
            [ResidualBlock(widths[level], widths[level]) for level in reversed(range(levels))]
        )
        self.head = nn.Conv3d(widths[0], num_classes, 1)
        self.deep_heads = nn.ModuleList([nn.Conv3d(widths[level], num_classes, 1) for level in (2, 1)])

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        skips = []
        features = image
        for block in self.encoder:
            features = block(features)
            skips.append(features)
            features = F.max_pool3d(features, 2)
        features = self.bottleneck(features)
        decoded = []
        for level, (upsample, fuse, block) in enumerate(
            zip(self.upsamplers, self.fusions, self.decoder, strict=True)
        ):
            skip = self.transforms[len(skips) - 1 - level](skips[len(skips) - 1 - level])
            features = block(fuse(torch.cat([upsample(features), skip], dim=1)))
            decoded.append(features)
        outputs: dict[str, torch.Tensor | list[torch.Tensor]] = {"logits": self.head(features)}
        if self.training:  # only the training losses use the coarser predictions
            outputs["deep_supervision"] = [
                head(decoded[-1 - level]) for head, level in zip(self.deep_heads, (2, 1), strict=True)
            ]
        return outputs


class ConfidenceUNet(nn.Module):
    """The enhanced UNet's confidence network: a plain UNet with one conv per stage and half
    the segmenter's feature maps, on the class probabilities (and the image); returns one
    confidence logit per voxel."""

    def __init__(
        self, num_classes: int, with_image: bool = True, base_filters: int = 8, levels: int = 3
    ) -> None:
        super().__init__()
        self.with_image = with_image
        widths = [base_filters * 2**level for level in range(levels + 1)]
        in_channels = num_classes + (1 if with_image else 0)
        self.encoder = nn.ModuleList(
            [
                conv_bn_relu(in_channels if level == 0 else widths[level - 1], widths[level])
                for level in range(levels)
            ]
        )
        self.bottom = conv_bn_relu(widths[levels - 1], widths[levels])
        self.upsamplers = nn.ModuleList(
            [
                nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2)
                for level in reversed(range(levels))
            ]
        )
        self.decoder = nn.ModuleList(
            [conv_bn_relu(2 * widths[level], widths[level]) for level in reversed(range(levels))]
        )
        self.head = nn.Conv3d(widths[0], 1, 1)

    def forward(self, probabilities: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        features = torch.cat([image, probabilities], dim=1) if self.with_image else probabilities
        skips = []
        for block in self.encoder:
            features = block(features)
            skips.append(features)
            features = F.max_pool3d(features, 2)
        features = self.bottom(features)
        for upsample, block, skip in zip(self.upsamplers, self.decoder, reversed(skips), strict=True):
            features = block(torch.cat([upsample(features), skip], dim=1))
        return self.head(features)
