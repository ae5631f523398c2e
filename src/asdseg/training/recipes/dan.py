"""Difficulty-aware attention with confidence learning (Nie et al., AAAI 2019).

The enhanced UNet is trained with a hybrid loss that attends to difficulty at two levels: an
organ-level focal generalized Dice whose class weights are pi_c (1 - dsc_c)^gamma (Eq. 7), and a
voxel-level cross-entropy weighted by
(1 - M)^beta, where M is the confidence network's map, so the organs and voxels the model gets
wrong dominate. The two coarser decoder scales add the generalized Dice + CE hybrid as deep
supervision. The confidence network (a half-width UNet) is trained as the paper's Eq. 4 says:
binary cross-entropy rating the manual label map 1 and the segmenter's prediction 0, everywhere
(``confidence_target`` "paper"); "correctness" instead trains it on whether the segmenter's class
is right at each voxel, what the paper says the map should tell, learnt directly (the shipped
la-dan 1.x was trained so). The segmenter gets a small adversarial term asking it to be rated
real, weighted lambda_1 = 0.005 (Eq. 11). The paper trains both networks with Adam
at 5e-3; here the segmenter keeps the LA setting's SGD schedule and the confidence network
takes the paper's Adam 5e-3, divided by 5 at each of the segmenter's decay points (the paper's
"5 times every 3 epochs"). Override any of them in ``loss``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from asdseg.networks.enhanced_unet import ConfidenceUNet
from asdseg.training.losses import (
    adversarial_bce,
    confidence_target_loss,
    confidence_weighted_cross_entropy,
    focal_dice_loss,
    hybrid_dice_ce_loss,
    one_hot,
)
from asdseg.training.recipes.base import ConfidenceLearningRecipe


def label_map_rated_real(confidence, probabilities, images, logits, labels) -> torch.Tensor:
    """Eq. 4: BCE(D(P), 1) + BCE(D(S(X)), 0), P the manual label map (one-hot), S(X) the
    prediction."""
    real = adversarial_bce(confidence(one_hot(labels, probabilities.shape[1]).float(), images), real=True)
    return real + adversarial_bce(confidence(probabilities, images), real=False)


def prediction_rated_by_correctness(confidence, probabilities, images, logits, labels) -> torch.Tensor:
    """BCE of the prediction's rating against whether its class is the label's, per voxel."""
    return confidence_target_loss(confidence(probabilities, images), logits, labels)


#: ``confidence_target``: what the confidence network is trained to rate.
CONFIDENCE_TARGETS = {"paper": label_map_rated_real, "correctness": prediction_rated_by_correctness}
CONFIDENCE_TARGET_NOTES = {
    "paper": "as Eq. 4 (label map real, prediction fake)",
    "correctness": "on whether the prediction is right per voxel (not the paper's Eq. 4)",
}


def downsampled_labels(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour labels at a coarser decoder scale."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


class DanRecipe(ConfidenceLearningRecipe):
    name = "dan"
    confidence_network = ConfidenceUNet
    exported_architecture = "enhanced-unet-confidence"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **ConfidenceLearningRecipe.DEFAULTS,
        "focal_gamma": 2.0,
        "voxel_beta": 2.0,
        "deep_supervision_weights": [0.25, 0.5],
        "adversarial_weight": 0.005,
        "auxiliary_learning_rate": 5e-3,
        "auxiliary_decay_factor": 0.2,
        "confidence_target": "paper",
    }

    def __init__(self, config, device) -> None:
        super().__init__(config, device)
        self.confidence_loss = self.setting_choice("confidence_target", CONFIDENCE_TARGETS)

    def set_learning_rate(self, learning_rate: float) -> None:
        super().set_learning_rate(learning_rate)
        decays = round(math.log(learning_rate / self.config.learning_rate, self.config.lr_decay_factor))
        rate = self.settings["auxiliary_learning_rate"] * self.settings["auxiliary_decay_factor"] ** decays
        for group in self.optimizers["confidence"].param_groups:
            group["lr"] = rate

    def card_notes(self) -> str:
        return (
            "DAN as in the paper (Eq. 7 organ-level attention Dice, Eq. 8-9 voxel attention, "
            f"lambda_1 = {self.settings['adversarial_weight']}, confidence network trained "
            f"{CONFIDENCE_TARGET_NOTES[self.settings['confidence_target']]}, Adam "
            f"{self.settings['auxiliary_learning_rate']} x {self.settings['auxiliary_decay_factor']} per "
            "decay); the segmenter uses the LA setting's SGD schedule instead of the paper's Adam."
        )

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        confidence = self.networks["confidence"]
        outputs = self.segmenter(images)
        logits = outputs["logits"]
        probabilities = F.softmax(logits, dim=1)
        ratings = confidence(probabilities, images)
        confidence_map = torch.sigmoid(ratings)

        organ = focal_dice_loss(
            probabilities, one_hot(labels, self.num_classes), self.settings["focal_gamma"]
        )
        voxel = confidence_weighted_cross_entropy(logits, labels, confidence_map, self.settings["voxel_beta"])
        deep = sum(
            weight * hybrid_dice_ce_loss(coarse, downsampled_labels(labels, coarse.shape[2:]))
            for weight, coarse in zip(self.settings["deep_supervision_weights"], outputs["deep_supervision"])
        )
        adversarial = adversarial_bce(ratings, real=True)
        loss = organ + voxel + deep + self.settings["adversarial_weight"] * adversarial
        self.update(self.optimizers["segmenter"], loss)

        confidence_loss = self.confidence_loss(confidence, probabilities.detach(), images, logits, labels)
        self.update(self.optimizers["confidence"], confidence_loss)
        return {
            "loss": loss.item(),
            "organ_focal_dice": organ.item(),
            "voxel_weighted_ce": voxel.item(),
            "deep_supervision": deep.item(),
            "confidence": confidence_loss.item(),
        }
