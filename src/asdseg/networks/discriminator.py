"""SASSNet's discriminator: is this signed distance map from a labelled or an unlabelled image?"""

from __future__ import annotations

import torch
from torch import nn


def _strided(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


class SDMDiscriminator(nn.Module):
    """The SDM and the image each go through a strided 4x4x4 conv, the two feature maps are
    added, then three more strided 4x4x4 convs with LeakyReLU(0.2) (Dropout3d after the first
    three), a global average pool and a linear layer give two logits (labelled, unlabelled).

    The reference pools with a fixed AvgPool3d((7, 7, 5)) that only fits 112x112x80 patches; an
    adaptive pool gives the same result there and works for any patch of at least 16 voxels.
    """

    def __init__(
        self, sdm_channels: int = 1, image_channels: int = 1, base_filters: int = 64, dropout: float = 0.5
    ):
        super().__init__()
        self.sdm_conv = _strided(sdm_channels, base_filters)
        self.image_conv = _strided(image_channels, base_filters)
        self.features = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Dropout3d(dropout),
            _strided(base_filters, base_filters * 2),
            nn.LeakyReLU(0.2),
            nn.Dropout3d(dropout),
            _strided(base_filters * 2, base_filters * 4),
            nn.LeakyReLU(0.2),
            nn.Dropout3d(dropout),
            _strided(base_filters * 4, base_filters * 8),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(base_filters * 8, 2)

    def forward(self, sdm: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(N, 2) logits for (N, sdm_channels, ...) SDMs of (N, image_channels, ...) images."""
        return self.classifier(self.features(self.sdm_conv(sdm) + self.image_conv(image)))
