"""ASDNet's confidence network, and a segmenter that carries one.

The confidence network is fully convolutional: it sees the image and the segmenter's class
probabilities and answers, per voxel, how likely the segmentation there is to be right. ASDNet
trains it adversarially (ground-truth maps are "real", predictions "fake"), uses it to weight
the segmenter's adversarial loss, and keeps unlabelled voxels whose confidence exceeds gamma for
the semi-supervised loss; at inference its output is the confidence map shown to the user.
"""

from __future__ import annotations

import torch
from torch import nn

from asdseg.networks.vnet import VNet, conv_stage, resample_block


class ConfidenceNetwork(nn.Module):
    """Two strided levels down and back up, then a 1x1x1 conv to one logit per voxel."""

    def __init__(self, in_channels: int, base_filters: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            conv_stage(in_channels, base_filters, 1),
            resample_block(base_filters, base_filters * 2, up=False),
            conv_stage(base_filters * 2, base_filters * 2, 1),
            resample_block(base_filters * 2, base_filters * 4, up=False),
            conv_stage(base_filters * 4, base_filters * 4, 1),
        )
        self.decoder = nn.Sequential(
            resample_block(base_filters * 4, base_filters * 2, up=True),
            conv_stage(base_filters * 2, base_filters * 2, 1),
            resample_block(base_filters * 2, base_filters, up=True),
            nn.Conv3d(base_filters, 1, 1),
        )

    def forward(self, image_and_probabilities: torch.Tensor) -> torch.Tensor:
        """Confidence logits, (N, 1, x, y, z); spatial sizes must be multiples of 4."""
        return self.decoder(self.encoder(image_and_probabilities))


class VNetWithConfidence(nn.Module):
    """A :class:`VNet` whose outputs gain ``confidence`` (sigmoid of the confidence network
    applied to the image and the softmax of the segmenter's logits)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        dropout: float = 0.5,
        sdm_head: bool = False,
        confidence_filters: int = 8,
    ) -> None:
        super().__init__()
        self.segmenter = VNet(in_channels, num_classes, base_filters, dropout, sdm_head)
        self.confidence_network = ConfidenceNetwork(in_channels + num_classes, confidence_filters)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.segmenter(image)
        probabilities = torch.softmax(outputs["logits"], dim=1)
        logits = self.confidence_network(torch.cat([image, probabilities], dim=1))
        outputs["confidence"] = torch.sigmoid(logits)
        return outputs
