"""The attention 3D U-Net of attention-guided active learning.

Each decoder stage ends in an attention block whose channel path (squeeze-and-excitation) and
spatial path (1x1x1 conv and sigmoid) run in parallel; the stage's features are re-weighted by
their combination, x * (channel + spatial). Besides the usual prediction from the final feature
maps, the network predicts from the attention-weighted features of the last stage; where the
two predictions disagree (low P-DSC) the model is unsure, which is what the active-learning
loop ranks axial slices by.
"""

from __future__ import annotations

import torch
from torch import nn

from asdseg.networks.unet_parts import (
    conv_bn_relu,
    decoder_stages,
    encode,
    encoder_stages,
    squeeze_excitation,
    unet_widths,
    upsamplers,
)


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class ChannelSpatialAttention(nn.Module):
    """Returns the re-weighted features and the spatial attention map (for inspection)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channel = squeeze_excitation(channels, reduction)
        self.spatial = nn.Sequential(nn.Conv3d(channels, 1, 1), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = self.spatial(features)
        return features * (self.channel(features) + spatial), spatial


class AttentionUNet3D(nn.Module):
    """``forward`` returns ``logits`` (from the final feature maps), ``attention_logits`` (from
    the last stage's attention-weighted features) and ``attention_map`` (its spatial attention).
    Spatial sizes must be multiples of 2^levels."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, base_filters: int = 16, levels: int = 3
    ) -> None:
        super().__init__()
        widths = unet_widths(base_filters, levels)
        self.encoder = encoder_stages(double_conv, in_channels, widths)
        self.bottom = double_conv(widths[levels - 1], widths[levels])
        self.upsamplers = upsamplers(widths)
        self.decoder = decoder_stages(double_conv, widths)
        self.attention = nn.ModuleList(
            [ChannelSpatialAttention(widths[level]) for level in reversed(range(levels))]
        )
        self.final_conv = conv_bn_relu(widths[0], widths[0])
        self.head = nn.Conv3d(widths[0], num_classes, 1)
        self.attention_head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features, skips = encode(self.encoder, image)
        features = self.bottom(features)
        for upsample, block, attend, skip in zip(
            self.upsamplers, self.decoder, self.attention, reversed(skips)
        ):
            features, attention_map = attend(block(torch.cat([upsample(features), skip], dim=1)))
        return {
            "logits": self.head(self.final_conv(features)),
            "attention_logits": self.attention_head(features),
            "attention_map": attention_map,
        }
