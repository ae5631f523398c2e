"""Intensity augmentation for fine-tuning on a few corrected slices: nnU-Net v2's default
intensity and resolution transforms, with its probabilities and ranges, and MONAI's bias field,
all built from MONAI's transforms.

A site's scans differ from the training site's in contrast, bias field, noise and resolution.
A handful of corrected slices shows the network the new site's look only on those slices;
perturbing them along the same axes, by amounts nnU-Net (and MONAI, for the bias field, which
nnU-Net does not draw) use on any dataset, not tuned to one shift, lets the slices teach the rest
of the volume rather than be learnt by heart.

The transforms work on one z-scored patch at a time, (1, x, y, z): multiplicative brightness,
contrast (gamma, with the patch's mean and standard deviation kept), a smooth multiplicative
bias field (MONAI's default range: 2.5 to 5 times between a patch's darkest and brightest
corner; applied above the patch's minimum, where intensities are positive), simulated low
resolution and Gaussian noise. Each batch's draws come from a seed the caller takes from torch's
random stream, which checkpoints keep, so a resumed run draws as an uninterrupted one.
"""

from __future__ import annotations

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandBiasField,
    RandGaussianNoise,
    RandScaleIntensity,
    RandSimulateLowResolution,
)
from monai.utils import convert_to_tensor


class IntensityAugmentation:
    """The augmentations above applied to each patch of a batch."""

    def __init__(self) -> None:
        self.transform = Compose(
            [
                RandScaleIntensity(factors=0.25, prob=0.15),  # brightness x [0.75, 1.25]
                RandAdjustContrast(prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
                RandBiasField(degree=3, coeff_range=(0.0, 0.1), prob=0.3),
                RandSimulateLowResolution(prob=0.25, zoom_range=(0.5, 1.0)),
                RandGaussianNoise(prob=0.1, std=0.1),
            ]
        )

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """``images`` (N, 1, x, y, z), each patch perturbed independently."""
        self.transform.set_random_state(seed=seed)
        augmented = []
        for image in images:
            low = image.min()
            # A plain tensor: MONAI's MetaTensor, carried through the network, made every
            # la-sassnet-72 fine-tuning step about 0.5 s (a third) slower.
            augmented.append(convert_to_tensor(self.transform(image - low), track_meta=False) + low)
        return torch.stack(augmented).to(images.dtype)
