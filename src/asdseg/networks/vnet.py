"""The VNet of UA-MT and SASSNet (not MONAI's VNet, which uses 5x5x5 kernels and is ~8x heavier).

Four resolution levels below the input, ``base_filters`` doubling per level, stages of 1-3
3x3x3 conv + BatchNorm + ReLU, strided 2x2x2 convs down and transposed convs up, additive long
skips, Dropout3d(0.5) at the bottleneck and before the output. With ``sdm_head`` a second 1x1x1
conv with tanh regresses SASSNet's signed distance map beside the segmentation logits. With
``strides`` (:mod:`asdseg.strides`) a level may keep an axis as it is: its down and up
convs then span 1 voxel along that axis instead of 2.
"""

from __future__ import annotations

import torch
from torch import nn

from asdseg.strides import Strides, level_strides

#: Number of 3x3x3 conv layers in each encoder stage (the decoder mirrors stages 4..1).
ENCODER_STAGE_DEPTHS = (1, 2, 3, 3, 3)


def conv_stage(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [
            nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def resample_block(
    in_channels: int, out_channels: int, up: bool, stride: tuple[int, int, int] = (2, 2, 2)
) -> nn.Sequential:
    conv = nn.ConvTranspose3d if up else nn.Conv3d
    return nn.Sequential(
        conv(in_channels, out_channels, stride, stride=stride),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class VNet(nn.Module):
    """LA-style VNet; ``forward`` returns ``{"logits"}`` and, with the SDM head, ``{"sdm"}``.

    ``stage_depths`` gives the conv layers per resolution level (default: UA-MT's five levels).
    Spatial input sizes must be multiples of 2^(levels - 1) (16 by default), or of the product
    of each axis's ``strides``; sliding-window inference guarantees this through the model
    card's patch size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        dropout: float = 0.5,
        sdm_head: bool = False,
        stage_depths: tuple[int, ...] = ENCODER_STAGE_DEPTHS,
        strides: Strides | None = None,
    ) -> None:
        super().__init__()
        widths = [base_filters * 2**level for level in range(len(stage_depths))]
        self.strides = factors = level_strides(strides, len(stage_depths) - 1)
        self.encoder_stages = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level, depth in enumerate(stage_depths):
            stage_in = in_channels if level == 0 else widths[level]
            self.encoder_stages.append(conv_stage(stage_in, widths[level], depth))
            if level < len(widths) - 1:
                self.downsamplers.append(
                    resample_block(widths[level], widths[level + 1], up=False, stride=factors[level])
                )
        self.upsamplers = nn.ModuleList()
        self.decoder_stages = nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            self.upsamplers.append(
                resample_block(widths[level + 1], widths[level], up=True, stride=factors[level])
            )
            self.decoder_stages.append(conv_stage(widths[level], widths[level], stage_depths[level]))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.segmentation_head = nn.Conv3d(base_filters, num_classes, 1)
        self.sdm_head = nn.Conv3d(base_filters, num_classes - 1, 1) if sdm_head else None

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = []
        features = image
        for level, stage in enumerate(self.encoder_stages):
            features = stage(features)
            if level < len(self.downsamplers):
                skips.append(features)
                features = self.downsamplers[level](features)
        features = self.dropout(features)
        for upsample, stage, skip in zip(self.upsamplers, self.decoder_stages, reversed(skips)):
            features = stage(upsample(features) + skip)
        features = self.dropout(features)
        outputs = {"logits": self.segmentation_head(features)}
        if self.sdm_head is not None:
            outputs["sdm"] = torch.tanh(self.sdm_head(features))
        return outputs


#: ASDNet's simplified VNet (paper, section 2.1): the VNet without its innermost
#: pool-conv-deconv level (the bottleneck's down-conv, conv stage and up-conv); every other stage
#: keeps its depth.
SVNET_STAGE_DEPTHS = ENCODER_STAGE_DEPTHS[:-1]


def svnet(
    in_channels: int = 1,
    num_classes: int = 2,
    base_filters: int = 16,
    dropout: float = 0.5,
    sdm_head: bool = False,
    strides: Strides | None = None,
) -> VNet:
    """ASDNet's segmenter (SVNet): the VNet above without its innermost level, a quarter of its
    parameters and half its receptive field (130 voxels against 274); inputs must be multiples
    of 8."""
    return VNet(in_channels, num_classes, base_filters, dropout, sdm_head, SVNET_STAGE_DEPTHS, strides)
