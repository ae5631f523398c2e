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

from asdseg.networks.confidence import SegmenterWithConfidence
from asdseg.networks.unet_parts import (
    conv_bn_relu,
    decoder_stages,
    encode,
    encoder_stages,
    squeeze_excitation,
    unet_widths,
    upsamplers,
)
from asdseg.strides import Strides, level_strides


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
        self.excitation = squeeze_excitation(in_channels, reduction)
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
    Spatial sizes must be multiples of 2^levels (16 with the default 4 downsamplings), or of
    the product of each axis's ``strides``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        levels: int = 4,
        strides: Strides | None = None,
    ) -> None:
        super().__init__()
        self.strides = level_strides(strides, levels)
        widths = unet_widths(base_filters, levels)
        self.encoder = encoder_stages(ResidualBlock, in_channels, widths)
        self.bottleneck = DilatedBottleneck(widths[levels - 1], widths[levels])
        self.transforms = nn.ModuleList(
            [ResidualBlock(widths[level], widths[level]) for level in range(levels)]
        )
        self.upsamplers = upsamplers(widths, self.strides)
        self.fusions = decoder_stages(ChannelAttentionFusion, widths)
        self.decoder = decoder_stages(ResidualBlock, widths, input_factor=1)
        self.head = nn.Conv3d(widths[0], num_classes, 1)
        self.deep_heads = nn.ModuleList([nn.Conv3d(widths[level], num_classes, 1) for level in (2, 1)])

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features, skips = encode(self.encoder, image, self.strides)
        features = self.bottleneck(features)
        decoded = []
        transformed = [transform(skip) for transform, skip in zip(self.transforms, skips)]
        for upsample, fuse, block, skip in zip(
            self.upsamplers, self.fusions, self.decoder, reversed(transformed)
        ):
            features = block(fuse(torch.cat([upsample(features), skip], dim=1)))
            decoded.append(features)
        outputs: dict[str, torch.Tensor | list[torch.Tensor]] = {"logits": self.head(features)}
        if self.training:  # only the training losses use the coarser predictions
            outputs["deep_supervision"] = [
                head(decoded[-1 - level]) for head, level in zip(self.deep_heads, (2, 1))
            ]
        return outputs


class ConfidenceUNet(nn.Module):
    """The enhanced UNet's confidence network: a plain UNet with one conv per stage and half
    the segmenter's feature maps, on the class probabilities (and the image); returns one
    confidence logit per voxel. With ``strides``, those of its segmenter's first levels."""

    def __init__(
        self,
        num_classes: int,
        with_image: bool = True,
        base_filters: int = 8,
        levels: int = 3,
        strides: Strides | None = None,
    ) -> None:
        super().__init__()
        self.with_image = with_image
        self.strides = level_strides(strides, levels, exact=False)
        widths = unet_widths(base_filters, levels)
        self.encoder = encoder_stages(conv_bn_relu, num_classes + (1 if with_image else 0), widths)
        self.bottom = conv_bn_relu(widths[levels - 1], widths[levels])
        self.upsamplers = upsamplers(widths, self.strides)
        self.decoder = decoder_stages(conv_bn_relu, widths)
        self.head = nn.Conv3d(widths[0], 1, 1)

    def forward(self, probabilities: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        features = torch.cat([image, probabilities], dim=1) if self.with_image else probabilities
        features, skips = encode(self.encoder, features, self.strides)
        features = self.bottom(features)
        for upsample, block, skip in zip(self.upsamplers, self.decoder, reversed(skips)):
            features = block(torch.cat([upsample(features), skip], dim=1))
        return self.head(features)


def enhanced_unet_with_confidence(
    in_channels: int = 1,
    num_classes: int = 2,
    base_filters: int = 16,
    levels: int = 4,
    confidence_filters: int = 8,
    confidence_sees_image: bool = True,
    strides: Strides | None = None,
) -> SegmenterWithConfidence:
    """The enhanced UNet plus its confidence network, as DAN ships it: the confidence map is the
    network's estimate, per voxel, that the segmentation there is correct."""
    return SegmenterWithConfidence(
        EnhancedUNet(in_channels, num_classes, base_filters, levels, strides),
        ConfidenceUNet(num_classes, confidence_sees_image, confidence_filters, strides=strides),
    )
