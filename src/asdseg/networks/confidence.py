"""ASDNet's confidence network, and a segmenter that carries one for inference.

The confidence network is fully convolutional: it sees the segmenter's class probabilities
(and optionally the image) and answers, per voxel, how likely the segmentation there is to be
right. ASDNet trains it adversarially (ground-truth maps are "real", predictions "fake"), uses it
to weight the segmenter's adversarial loss, and keeps unlabelled voxels whose confidence exceeds
gamma for the semi-supervised loss; at inference its output is the confidence map shown to the
user.
"""

from __future__ import annotations

import torch
from torch import nn

from asdseg.networks.vnet import VNet, conv_stage, resample_block, svnet
from asdseg.strides import Strides, level_strides


class ConfidenceNetwork(nn.Module):
    """Two strided levels down and back up, then a 1x1x1 conv to one logit per voxel; the
    confidence is its sigmoid. Spatial sizes must be multiples of 4, or of the product of each
    axis's ``strides`` (its segmenter's first two levels')."""

    def __init__(
        self, num_classes: int, with_image: bool = True, base_filters: int = 8, strides: Strides | None = None
    ) -> None:
        super().__init__()
        self.with_image = with_image
        first, second = level_strides(strides, 2, exact=False)
        in_channels = num_classes + (1 if with_image else 0)
        self.encoder = nn.Sequential(
            conv_stage(in_channels, base_filters, 1),
            resample_block(base_filters, base_filters * 2, up=False, stride=first),
            conv_stage(base_filters * 2, base_filters * 2, 1),
            resample_block(base_filters * 2, base_filters * 4, up=False, stride=second),
            conv_stage(base_filters * 4, base_filters * 4, 1),
        )
        self.decoder = nn.Sequential(
            resample_block(base_filters * 4, base_filters * 2, up=True, stride=second),
            conv_stage(base_filters * 2, base_filters * 2, 1),
            resample_block(base_filters * 2, base_filters, up=True, stride=first),
            nn.Conv3d(base_filters, 1, 1),
        )

    def forward(self, probabilities: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Confidence logits (N, 1, x, y, z) for (N, C, x, y, z) class probabilities."""
        inputs = torch.cat([image, probabilities], dim=1) if self.with_image else probabilities
        return self.decoder(self.encoder(inputs))


class SegmenterWithConfidence(nn.Module):
    """A segmenter whose outputs gain ``confidence``: the sigmoid of the confidence network
    applied to the softmax of the segmenter's logits (and the image)."""

    def __init__(self, segmenter: nn.Module, confidence_network: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.confidence_network = confidence_network

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.segmenter(image)
        probabilities = torch.softmax(outputs["logits"], dim=1)
        outputs["confidence"] = torch.sigmoid(self.confidence_network(probabilities, image))
        return outputs


def vnet_with_confidence(
    in_channels: int = 1,
    num_classes: int = 2,
    base_filters: int = 16,
    dropout: float = 0.5,
    sdm_head: bool = False,
    confidence_filters: int = 8,
    confidence_sees_image: bool = True,
    simplified: bool = False,
    strides: Strides | None = None,
) -> SegmenterWithConfidence:
    """The VNet (or ASDNet's SVNet with ``simplified``) plus ASDNet's confidence network."""
    if simplified:
        segmenter = svnet(in_channels, num_classes, base_filters, dropout, sdm_head, strides)
    else:
        segmenter = VNet(in_channels, num_classes, base_filters, dropout, sdm_head, strides=strides)
    confidence = ConfidenceNetwork(num_classes, confidence_sees_image, confidence_filters, strides)
    return SegmenterWithConfidence(segmenter, confidence)
