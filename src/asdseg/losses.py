"""Loss functions and their targets, one place each."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from asdseg.metrics import surface


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes; ``target`` holds class indices."""
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (total + eps)
    return 1.0 - dice[:, 1:].mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice plus cross-entropy, equally weighted."""
    return soft_dice_loss(logits, target) + F.cross_entropy(logits, target.long())


def _outside_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels) of voxels outside ``mask`` to the nearest voxel inside it."""
    distance = sitk.SignedMaurerDistanceMap(
        sitk.GetImageFromArray(mask.astype(np.uint8)),
        insideIsPositive=False,
        squaredDistance=False,
        useImageSpacing=False,
    )
    return np.clip(sitk.GetArrayFromImage(distance), 0.0, None)


def signed_distance_target(mask: np.ndarray) -> np.ndarray:
    """SASSNet's normalised signed distance map of a binary mask, in [-1, 1].

    Outside: distance to the mask / its maximum (positive); inside: distance to the background
    / its maximum (negative); the mask's surface voxels are 0. An empty mask is +1 everywhere
    (everything is outside) and a full mask -1 everywhere, so no case divides by zero.
    """
    mask = mask.astype(bool)
    if not mask.any():
        return np.ones(mask.shape, dtype=np.float32)
    if mask.all():
        return -np.ones(mask.shape, dtype=np.float32)
    outside = _outside_distance(mask)
    inside = _outside_distance(~mask)
    sdm = outside / outside.max() - inside / inside.max()
    sdm[surface(mask)] = 0.0
    return sdm.astype(np.float32)
