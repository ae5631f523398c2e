"""Loss functions and their targets, one place each.

Conventions: ``probabilities`` are softmax outputs (N, C, *spatial); ``target`` holds class
indices (N, *spatial), with :data:`UNLABELLED` marking voxels nobody labelled (sparse slice
annotations); ``one_hot`` targets are (N, C, *spatial). Dice-type losses return a scalar to
minimise; per-sample or per-class Dice values are exposed for the attention weights built on them.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from asdseg.evaluation.metrics import surface

#: Target value of voxels without a label; ignored by the masked losses.
UNLABELLED = -1
_EPS = 1e-5


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, *spatial) class indices -> (N, C, *spatial) float one-hot; unlabelled voxels are all 0."""
    labelled = target != UNLABELLED
    encoded = F.one_hot(torch.where(labelled, target, 0).long(), num_classes).movedim(-1, 1).float()
    return encoded * labelled.unsqueeze(1)


def _spatial_dims(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, tensor.ndim))


# Dice family ------------------------------------------------------------------------------


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes; ``target`` holds class indices."""
    probabilities = torch.softmax(logits, dim=1)
    encoded = one_hot(target, logits.shape[1])
    dims = _spatial_dims(logits)
    intersection = (probabilities * encoded).sum(dims)
    total = probabilities.sum(dims) + encoded.sum(dims)
    dice = (2 * intersection + eps) / (total + eps)
    return 1.0 - dice[:, 1:].mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice plus cross-entropy, equally weighted."""
    return soft_dice_loss(logits, target) + F.cross_entropy(logits, target.long())


def generalized_dice(
    probabilities: torch.Tensor, one_hot_target: torch.Tensor, class_attention: torch.Tensor | None = None
) -> torch.Tensor:
    """Generalized Dice (Sudre et al. 2017) of each sample, shape (N,).

    GD = 2 sum_c pi_c sum_i P_ci G_ci / sum_c pi_c sum_i (P_ci + G_ci) with
    pi_c = 1 / (sum_i G_ci)^2, so that small organs weigh as much as large ones. A class absent
    from a sample's reference would get an infinite weight; it gets the largest weight of that
    sample's present classes instead (as MONAI does), so predicting it anyway is still penalised.
    ``class_attention`` (C,) multiplies each pi_c (DAN's organ-level attention, Eq. 7).
    """
    dims = _spatial_dims(probabilities)
    volume = one_hot_target.sum(dims)
    weights = 1.0 / volume.clamp_min(_EPS) ** 2
    present = volume > 0
    largest = torch.where(present, weights, torch.zeros_like(weights)).amax(dim=1, keepdim=True)
    weights = torch.where(present, weights, largest)
    if class_attention is not None:
        weights = weights * class_attention
    intersection = (weights * (probabilities * one_hot_target).sum(dims)).sum(1)
    total = (weights * (probabilities + one_hot_target).sum(dims)).sum(1)
    return (2 * intersection + _EPS) / (total + _EPS)


def generalized_dice_loss(probabilities: torch.Tensor, one_hot_target: torch.Tensor) -> torch.Tensor:
    return 1.0 - generalized_dice(probabilities, one_hot_target).mean()


def sample_attention_dice_loss(
    probabilities: torch.Tensor, one_hot_target: torch.Tensor, beta: float = 2.0, normalize: bool = True
) -> torch.Tensor:
    """ASDNet's sample attention (Eq. 2): each sample's GDL weighted by (1 - dsc)^beta, dsc
    detached, so that hard samples (low Dice) dominate the gradient without the weight being
    optimised. With ``normalize`` the weights are scaled to a batch mean of 1: they still rank the
    samples, but the supervised gradient no longer fades as the Dice rises (x0.04 at Dice 0.8
    with beta 2), which under SGD stalls training; the paper's Adam partly hides that fading."""
    dice = generalized_dice(probabilities, one_hot_target)
    attention = (1.0 - dice.detach()) ** beta
    if normalize:
        attention = attention / attention.mean().clamp_min(_EPS)
    return (attention * (1.0 - dice)).mean()


def class_dice(probabilities: torch.Tensor, one_hot_target: torch.Tensor) -> torch.Tensor:
    """Soft Dice of each class over the whole batch, shape (C,)."""
    dims = (0, *_spatial_dims(probabilities))
    intersection = (probabilities * one_hot_target).sum(dims)
    total = probabilities.sum(dims) + one_hot_target.sum(dims)
    return (2 * intersection + _EPS) / (total + _EPS)


def focal_dice_loss(
    probabilities: torch.Tensor, one_hot_target: torch.Tensor, gamma: float = 2.0
) -> torch.Tensor:
    """DAN's organ-level attention generalized Dice (Eq. 7): 1 - the generalized Dice whose class
    weights pi_c are multiplied by (1 - dsc_c)^gamma, dsc_c the (detached) soft Dice of class c
    over the batch, so that the organs segmented worst weigh most. Averaged over the samples."""
    attention = (1.0 - class_dice(probabilities, one_hot_target).detach()) ** gamma
    return 1.0 - generalized_dice(probabilities, one_hot_target, attention).mean()


def masked_dice_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean foreground soft Dice over the labelled voxels only (``target`` may hold
    :data:`UNLABELLED`), for sparsely annotated volumes."""
    labelled = (target != UNLABELLED).unsqueeze(1).float()
    return 1.0 - class_dice(probabilities * labelled, one_hot(target, probabilities.shape[1]))[1:].mean()


def confident_region_dice_loss(
    probabilities: torch.Tensor, confidence: torch.Tensor, gamma: float = 0.5
) -> torch.Tensor:
    """ASDNet's region-attention semi-supervised loss on unlabelled images (Eq. 6): the
    generalized (class-weighted) Dice between the prediction and its own one-hot argmax, over
    the voxels whose confidence exceeds gamma.

    ``confidence`` is (N, 1, *spatial) or (N, *spatial) from the confidence network. With no
    voxel above gamma the loss is 0 (nothing trustworthy to learn from).
    """
    confidence = confidence.reshape(probabilities.shape[0], 1, *probabilities.shape[2:]).detach()
    region = (confidence > gamma).float()
    if not region.any():
        return probabilities.sum() * 0.0
    pseudo_label = one_hot(probabilities.detach().argmax(dim=1), probabilities.shape[1])
    return generalized_dice_loss(probabilities * region, pseudo_label * region)


# Cross-entropy family ------------------------------------------------------------------------


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled voxels only; 0 when nothing is labelled."""
    if not (target != UNLABELLED).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=UNLABELLED)


def confidence_weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor, beta: float = 2.0
) -> torch.Tensor:
    """Voxel-level difficulty attention: each voxel's CE weighted by (1 - M)^beta, M the
    (detached) confidence map, so voxels the confidence network doubts count most."""
    weights = (1.0 - confidence.reshape(target.shape).detach()).clamp(0.0, 1.0) ** beta
    voxel_loss = F.cross_entropy(logits, target.long(), reduction="none")
    return (weights * voxel_loss).mean()


def hybrid_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 1.0) -> torch.Tensor:
    """Generalized Dice plus ``ce_weight`` x cross-entropy (the enhanced UNet's hybrid loss)."""
    probabilities = torch.softmax(logits, dim=1)
    gdl = generalized_dice_loss(probabilities, one_hot(target, logits.shape[1]))
    return gdl + ce_weight * F.cross_entropy(logits, target.long())


def masked_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(CE + foreground soft Dice) / 2 over the labelled voxels (all of them when dense): the
    supervised baseline's loss in UA-MT and SASSNet."""
    return 0.5 * (masked_cross_entropy(logits, target) + masked_dice_loss(F.softmax(logits, dim=1), target))


def voxelwise_bce(confidence: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per voxel for a confidence map in [0, 1] against a 0/1 target map
    (ground-truth maps or correct voxels = 1, predictions or wrong voxels = 0)."""
    return F.binary_cross_entropy(confidence.clamp(1e-6, 1 - 1e-6), target.float())


def adversarial_bce(discriminator_logits: torch.Tensor, real: bool) -> torch.Tensor:
    """BCE of discriminator logits against "real" (1) or "fake" (0) everywhere."""
    target = torch.full_like(discriminator_logits, 1.0 if real else 0.0)
    return F.binary_cross_entropy_with_logits(discriminator_logits, target)


# Signed distance maps (SASSNet) --------------------------------------------------------------


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


def sdm_loss(predicted_sdm: torch.Tensor, target_sdm: torch.Tensor) -> torch.Tensor:
    """SASSNet's SDM regression loss: mean squared error."""
    return F.mse_loss(predicted_sdm, target_sdm)


def sdm_sign_loss(sdm: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled voxels and foreground classes of the SDM's wrong-sign part: relu(sdm)
    inside class c (where it should be negative), relu(-sdm) outside. 0 without labels."""
    labelled = labels != UNLABELLED
    if not labelled.any():
        return sdm.sum() * 0.0
    penalties = []
    for channel in range(sdm.shape[1]):
        inside = labels == channel + 1
        wrong = torch.where(inside, F.relu(sdm[:, channel]), F.relu(-sdm[:, channel]))
        penalties.append(wrong[labelled].mean())
    return torch.stack(penalties).mean()


def confidence_target_loss(
    confidence_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """DAN's confidence loss on the labelled voxels (all of them when dense): BCE of the
    confidence logits against whether the segmenter's class there is the label's. 0 without
    labels."""
    labelled = labels != UNLABELLED
    if not labelled.any():
        return confidence_logits.sum() * 0.0
    correct = (logits.detach().argmax(dim=1) == labels).float()
    return F.binary_cross_entropy_with_logits(confidence_logits[:, 0][labelled], correct[labelled])


def gaussian_rampup(step: int, rampup_steps: int) -> float:
    """exp(-5 (1 - t)^2) with t = step / rampup_steps clipped to [0, 1] (Laine & Aila), the
    warm-up SASSNet and UA-MT put on their unsupervised weights; 1 from ``rampup_steps`` on."""
    if rampup_steps <= 0:
        return 1.0
    phase = 1.0 - min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * phase * phase)
