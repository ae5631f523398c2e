"""Each loss against a case small enough to compute by hand (and MONAI where it has the same loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import GeneralizedDiceLoss

from asdseg.training.losses import (
    UNLABELLED,
    adversarial_bce,
    class_dice,
    confidence_weighted_cross_entropy,
    confident_region_dice_loss,
    focal_dice_loss,
    gaussian_rampup,
    generalized_dice,
    generalized_dice_loss,
    hybrid_dice_ce_loss,
    masked_cross_entropy,
    masked_dice_loss,
    one_hot,
    sample_attention_dice_loss,
    sdm_loss,
    signed_distance_target,
    voxelwise_bce,
)


def two_class(foreground: list[float]) -> torch.Tensor:
    """(1, 2, 4, 1, 1) probabilities from the foreground probability of 4 voxels."""
    foreground_tensor = torch.tensor(foreground).reshape(1, 1, 4, 1, 1)
    return torch.cat([1 - foreground_tensor, foreground_tensor], dim=1)


def labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, 4, 1, 1)


def test_one_hot_leaves_unlabelled_voxels_empty() -> None:
    encoded = one_hot(labels([0, 1, UNLABELLED, 1]), 2)
    assert encoded[0, :, :, 0, 0].T.tolist() == [[1, 0], [0, 1], [0, 0], [0, 1]]


def test_generalized_dice_by_hand() -> None:
    # G: background on voxels 0-2, foreground on voxel 3: weights 1/9 and 1.
    # intersections 2.7 and 0.6, totals 3.1 + 3 and 0.9 + 1.
    probabilities = two_class([0.1, 0.2, 0.0, 0.6])
    expected = 2 * (2.7 / 9 + 0.6) / (6.1 / 9 + 1.9)
    assert generalized_dice(probabilities, one_hot(labels([0, 0, 0, 1]), 2)).item() == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize("absent_class", [False, True])
def test_generalized_dice_loss_matches_monai(absent_class: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(3, 4, 6, 5, 4, generator=generator), dim=1)
    target = torch.randint(0, 3 if absent_class else 4, (3, 6, 5, 4), generator=generator)
    encoded = one_hot(target, 4)
    reference = GeneralizedDiceLoss(include_background=True, w_type="square")(probabilities, encoded)
    assert generalized_dice_loss(probabilities, encoded).item() == pytest.approx(reference.item(), abs=1e-5)


def test_sample_attention_weights_hard_samples_without_differentiating_the_weight() -> None:
    logits = torch.randn(2, 2, 4, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[:, 1:3, 1:3, 1:3] = 1
    encoded = one_hot(target, 2)
    beta = 2.0

    loss = sample_attention_dice_loss(torch.softmax(logits, 1), encoded, beta, normalize=False)
    (gradient,) = torch.autograd.grad(loss, logits)
    dice = generalized_dice(torch.softmax(logits, 1), encoded)
    assert loss.item() == pytest.approx(((1 - dice) ** (beta + 1)).mean().item(), rel=1e-5)

    constant_weights = (1 - dice.detach()) ** beta
    manual = (constant_weights * (1 - generalized_dice(torch.softmax(logits, 1), encoded))).mean()
    (manual_gradient,) = torch.autograd.grad(manual, logits)
    torch.testing.assert_close(gradient, manual_gradient)
    undetached = ((1 - generalized_dice(torch.softmax(logits, 1), encoded)) ** (beta + 1)).mean()
    (undetached_gradient,) = torch.autograd.grad(undetached, logits)
    assert not torch.allclose(gradient, undetached_gradient)


def test_normalised_sample_attention_weights_average_one_over_the_batch() -> None:
    logits = torch.randn(3, 2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(3, 4, 4, 4, dtype=torch.long)
    target[:, 1:3, 1:3, 1:3] = 1
    probabilities, encoded = torch.softmax(logits, 1), one_hot(target, 2)
    dice = generalized_dice(probabilities, encoded)
    weights = (1 - dice) ** 2
    expected = ((weights / weights.mean()) * (1 - dice)).mean()
    loss = sample_attention_dice_loss(probabilities, encoded, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # as the segmentation improves, the normalised loss keeps the size of the plain GDL while
    # the unnormalised one fades with (1 - dsc)^2
    nearly_right = torch.softmax(4.0 * (encoded - 0.5) + 0.5 * logits, 1)
    plain = 1 - generalized_dice(nearly_right, encoded).mean()
    assert sample_attention_dice_loss(nearly_right, encoded, 2.0) > 0.5 * plain
    assert sample_attention_dice_loss(nearly_right, encoded, 2.0, normalize=False) < 0.01 * plain


def test_focal_dice_is_eq7_of_the_dan_paper_by_hand() -> None:
    # One sample, four voxels; reference: background at voxels 0-2, organ at voxel 3.
    probabilities = two_class([0.1, 0.2, 0.0, 0.6])  # foreground probabilities
    target = one_hot(labels([0, 0, 0, 1]), 2)
    # class Dice over the batch: background 2 * 2.7 / (3.1 + 3), organ 2 * 0.6 / (0.9 + 1)
    dsc = [5.4 / 6.1, 1.2 / 1.9]
    pi = [1 / 3**2, 1 / 1**2]  # 1 / (reference volume)^2
    weight = [pi[c] * (1 - dsc[c]) ** 2 for c in range(2)]
    intersection = weight[0] * 2.7 + weight[1] * 0.6
    total = weight[0] * 6.1 + weight[1] * 1.9
    expected = 1 - 2 * intersection / total
    loss = focal_dice_loss(probabilities, target, gamma=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # the old form, mean over organs of (1 - dsc_c)^gamma, is another number
    assert loss.item() != pytest.approx((1 - dsc[1]) ** 2, rel=1e-2)
    assert class_dice(probabilities, target)[1].item() == pytest.approx(dsc[1], rel=1e-4)


def test_focal_dice_weights_are_not_optimised() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    target = one_hot(torch.randint(0, 3, (2, 4, 4, 4)), 3)
    (gradient,) = torch.autograd.grad(focal_dice_loss(torch.softmax(logits, 1), target, 2.0), logits)
    attention = (1 - class_dice(torch.softmax(logits, 1), target).detach()) ** 2
    manual = 1 - generalized_dice(torch.softmax(logits, 1), target, attention).mean()
    (manual_gradient,) = torch.autograd.grad(manual, logits)
    torch.testing.assert_close(gradient, manual_gradient)


def test_confidence_weighted_cross_entropy_by_hand() -> None:
    logits = torch.log(two_class([0.1, 0.2, 0.0 + 1e-9, 0.6]))
    target = labels([1, 0, 0, 1])
    confidence = torch.tensor([0.0, 1.0, 1.0, 0.5]).reshape(1, 4, 1, 1)
    expected = (-math.log(0.1) * 1.0 + -math.log(0.6) * 0.25) / 4
    loss = confidence_weighted_cross_entropy(logits, target, confidence, beta=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hybrid_loss_is_generalized_dice_plus_weighted_cross_entropy() -> None:
    logits = torch.log(two_class([0.1, 0.2, 0.3, 0.6]))
    target = labels([0, 0, 0, 1])
    dice = 2 * ((0.9 + 0.8 + 0.7) / 9 + 0.6) / ((2.8 + 3) / 9 + (1.2 + 1))
    cross_entropy = -(math.log(0.9) + math.log(0.8) + math.log(0.7) + math.log(0.6)) / 4
    assert hybrid_dice_ce_loss(logits, target, ce_weight=0.5).item() == pytest.approx(
        1 - dice + 0.5 * cross_entropy, rel=1e-5
    )


def test_voxelwise_and_adversarial_bce_by_hand() -> None:
    confidence = torch.tensor([0.8, 0.3])
    assert voxelwise_bce(confidence, torch.tensor([1, 0])).item() == pytest.approx(
        -(math.log(0.8) + math.log(0.7)) / 2, rel=1e-5
    )
    zero_logits = torch.zeros(2, 1, 3, 3, 3)
    assert adversarial_bce(zero_logits, real=True).item() == pytest.approx(math.log(2), rel=1e-6)
    assert adversarial_bce(torch.full((2, 1), 3.0), real=False).item() == pytest.approx(
        math.log(1 + math.exp(3.0)), rel=1e-6
    )


def test_confident_region_dice_uses_only_confident_voxels_and_the_argmax() -> None:
    probabilities = two_class([0.9, 0.3, 0.8, 0.2])
    confidence = torch.tensor([0.9, 0.9, 0.1, 0.1]).reshape(1, 1, 4, 1, 1)
    # Eq. 6 on confident voxels 0 and 1, pseudo-labels 1 and 0, each class with one reference
    # voxel (pi_c = 1): intersections bg 0.7, fg 0.9; totals bg 0.1 + 0.7 + 1, fg 0.9 + 0.3 + 1
    expected = 1 - 2 * (0.7 + 0.9) / (1.8 + 2.2)
    assert confident_region_dice_loss(probabilities, confidence, gamma=0.5).item() == pytest.approx(
        expected, rel=1e-4
    )

    requires_grad = probabilities.clone().requires_grad_(True)
    nothing_confident = confident_region_dice_loss(requires_grad, torch.zeros(1, 1, 4, 1, 1), gamma=0.5)
    assert nothing_confident.item() == 0.0
    nothing_confident.backward()  # still part of the graph


def test_masked_losses_ignore_unlabelled_voxels() -> None:
    target = labels([0, 1, UNLABELLED, UNLABELLED])
    first = torch.log(two_class([0.2, 0.7, 0.9, 0.1]))
    second = torch.log(two_class([0.2, 0.7, 0.1, 0.95]))
    for loss in (masked_cross_entropy, lambda logits, t: masked_dice_loss(torch.softmax(logits, 1), t)):
        assert loss(first, target).item() == pytest.approx(loss(second, target).item(), rel=1e-6)
    assert masked_cross_entropy(first, target).item() == pytest.approx(
        -(math.log(0.8) + math.log(0.7)) / 2, rel=1e-5
    )
    unlabelled = labels([UNLABELLED] * 4)
    assert masked_cross_entropy(first, unlabelled).item() == 0.0


def test_signed_distance_target_by_hand() -> None:
    mask = np.zeros((5, 5, 9), dtype=bool)
    mask[1:4, 1:4, 2:5] = True  # a 3x3x3 block: only its centre voxel is not on its surface
    sdm = signed_distance_target(mask)
    # Along the centre line: inside, the centre is 2 voxels from the background (the largest
    # inside distance) and the surface voxels are 0; outside, distances 2, 1 | 1, 2, 3, 4 over
    # the largest outside distance, from corner (0, 0, 8) to the block: sqrt(1 + 1 + 16).
    outside = np.sqrt(18.0)
    expected = [2 / outside, 1 / outside, 0, -1, 0, 1 / outside, 2 / outside, 3 / outside, 4 / outside]
    np.testing.assert_allclose(sdm[2, 2], expected, atol=1e-6)
    assert sdm.max() == pytest.approx(1.0) and sdm.min() == pytest.approx(-1.0)
    assert (signed_distance_target(np.zeros((3, 3, 3))) == 1).all()
    assert (signed_distance_target(np.ones((3, 3, 3))) == -1).all()


def test_sdm_loss_is_mean_squared_error() -> None:
    predicted, target = torch.tensor([0.5, -0.5, 0.0]), torch.tensor([1.0, -1.0, 0.0])
    assert sdm_loss(predicted, target).item() == pytest.approx((0.25 + 0.25) / 3)
    assert F.mse_loss(predicted, target).item() == pytest.approx(sdm_loss(predicted, target).item())


def test_gaussian_rampup() -> None:
    assert gaussian_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert gaussian_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert gaussian_rampup(100, 100) == 1.0 and gaussian_rampup(500, 100) == 1.0
    assert gaussian_rampup(3, 0) == 1.0
