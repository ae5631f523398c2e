"""The attention 3D U-Net of attention-guided active learning.

Each decoder stage ends in an attention block with two parallel paths (paper, Fig. 2): a channel
path (squeeze-and-excitation) and a spatial path that gives one attention map (AM) per class
(Fig. 3 shows the AM channel of one organ converging to its ground truth as training goes on).
The stage's features are re-weighted by their combination, x * (channel + spatial), where the
spatial weight is the AMs' probability that a voxel holds any organ.

Two predictions come out: SR1 from the final feature maps (``logits``) and SR2 from attention
maps (``attention_logits``), whose disagreement per axial slice (P-DSC) ranks the slices to
label. ``sr2_source`` picks which AMs give SR2: ``"final"`` (the paper: the AMs of the final
feature maps) or ``"coarse"`` (the AMs of the previous, half-resolution decoder stage, upsampled):
a prediction made from other features at another scale, so that it disagrees with SR1 where the
model is unsure rather than only on a thin boundary band. Both are always computed
(``final_attention_logits``, ``coarse_attention_logits``) and both are trained, so one model
serves both designs; the AMs are supervised with the labels like SR1, which is what makes
each AM channel belong to one class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
from asdseg.strides import Strides, level_strides

SR2_SOURCES = ("final", "coarse")


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class ChannelSpatialAttention(nn.Module):
    """Returns the re-weighted features and the stage's per-class attention-map logits."""

    def __init__(self, channels: int, num_classes: int, reduction: int = 4) -> None:
        super().__init__()
        self.channel = squeeze_excitation(channels, reduction)
        self.class_maps = nn.Conv3d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        map_logits = self.class_maps(features)
        spatial = 1.0 - torch.softmax(map_logits, dim=1)[:, :1]
        return features * (self.channel(features) + spatial), map_logits


class AttentionUNet3D(nn.Module):
    """``forward`` returns ``logits`` (SR1), ``attention_logits`` (SR2, from the AMs that
    ``sr2_source`` names), ``final_attention_logits`` and ``coarse_attention_logits`` (both AMs'
    predictions at the input's size) and ``attention_map`` (the final spatial weight). Spatial
    sizes must be multiples of 2^levels, or of the product of each axis's ``strides``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        levels: int = 3,
        sr2_source: str = "final",
        strides: Strides | None = None,
    ) -> None:
        super().__init__()
        if sr2_source not in SR2_SOURCES:
            raise ValueError(f"sr2_source must be one of {SR2_SOURCES}, got {sr2_source!r}")
        if levels < 2:
            raise ValueError(
                "the attention U-Net needs at least 2 levels (SR2 can come from the coarser one)"
            )
        self.sr2_source = sr2_source
        self.strides = level_strides(strides, levels)
        widths = unet_widths(base_filters, levels)
        self.encoder = encoder_stages(double_conv, in_channels, widths)
        self.bottom = double_conv(widths[levels - 1], widths[levels])
        self.upsamplers = upsamplers(widths, self.strides)
        self.decoder = decoder_stages(double_conv, widths)
        self.attention = nn.ModuleList(
            [ChannelSpatialAttention(widths[level], num_classes) for level in reversed(range(levels))]
        )
        self.final_conv = conv_bn_relu(widths[0], widths[0])
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features, skips = encode(self.encoder, image, self.strides)
        features = self.bottom(features)
        stage_maps = []
        for upsample, block, attend, skip in zip(
            self.upsamplers, self.decoder, self.attention, reversed(skips)
        ):
            features, map_logits = attend(block(torch.cat([upsample(features), skip], dim=1)))
            stage_maps.append(map_logits)
        final_maps = stage_maps[-1]
        coarse_maps = F.interpolate(
            stage_maps[-2], size=final_maps.shape[2:], mode="trilinear", align_corners=False
        )
        return {
            "logits": self.head(self.final_conv(features)),
            "attention_logits": final_maps if self.sr2_source == "final" else coarse_maps,
            "final_attention_logits": final_maps,
            "coarse_attention_logits": coarse_maps,
            "attention_map": 1.0 - torch.softmax(final_maps, dim=1)[:, :1],
        }
