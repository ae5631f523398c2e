"""ASDNet (Nie et al., MICCAI 2018): SVNet segmenter + fully convolutional confidence network.

Per step (Eq. 7): the segmenter minimises the sample-attention generalized Dice on labelled
patches (Eq. 2), lambda_1 = 0.03 x an adversarial term that asks the confidence network to rate
its predictions as ground truth (Eq. 5, labelled and unlabelled patches), and lambda_2 = 0.3 x
the region-attention semi-supervised generalized Dice on unlabelled patches over the voxels the
confidence network trusts (Eq. 6, confidence > gamma). The confidence network then learns, voxel
by voxel, ground-truth maps as 1 and the segmenter's predictions as 0 (Eq. 3); as in Eq. 3 it
sees the probability maps only.

The paper gives no gamma and no start for the semi-supervised term. As the reference does, the
term starts once the segmenter has trained for a while (``semi_supervised_start``, a fraction of
the run: the reference's first validation) and gamma = 1 - the segmenter's Dice, here its
running Dice on the labelled patches (the reference uses the validation Dice, which a run
without validation cases lacks). The segmenter keeps the LA setting's SGD schedule (the paper:
Adam 1e-3), so the sample-attention weights are normalised to a batch mean of 1 (see
:func:`asdseg.training.losses.sample_attention_dice_loss`). ``supervised_loss`` is
"sample-attention" as in Eq. 2; "dice-ce" takes the supervised baseline's (CE + Dice) / 2
instead, so that ASDNet and supervised training of the same SVNet differ only in the confidence
network's adversarial and semi-supervised terms and the unlabelled patches in the batch (the
ablation's diagnostic).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from asdseg.networks.confidence import ConfidenceNetwork
from asdseg.training.losses import (
    adversarial_bce,
    confident_region_dice_loss,
    generalized_dice,
    masked_dice_ce_loss,
    one_hot,
    sample_attention_dice_loss,
)
from asdseg.training.recipes.base import ConfidenceLearningRecipe

#: The segmenter's supervised loss on the labelled patches.
SUPERVISED_LOSSES = {
    "sample-attention": "Eq. 2: generalized Dice weighted per sample by (1 - its Dice) ** beta",
    "dice-ce": "the supervised baseline's (CE + Dice) / 2",
}


class AsdnetRecipe(ConfidenceLearningRecipe):
    name = "asdnet"
    semi_supervised = True
    confidence_network = ConfidenceNetwork
    exported_architecture = "vnet-confidence"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **ConfidenceLearningRecipe.DEFAULTS,
        "confidence_sees_image": False,
        "confidence_filters": 16,
        "sample_attention_beta": 2.0,
        "sample_attention_normalize": True,
        "adversarial_weight": 0.03,
        "semi_supervised_weight": 0.3,
        #: A fixed gamma; None = 1 - the running Dice on the labelled patches.
        "confidence_threshold": None,
        "semi_supervised_start": 1 / 6,
        "dice_momentum": 0.9,
        "supervised_loss": "sample-attention",
    }

    def __init__(self, config, device) -> None:
        super().__init__(config, device)
        self.setting_choice("supervised_loss", SUPERVISED_LOSSES)
        #: Running (exponential moving average) Dice of the segmenter on labelled patches.
        self.running_dice = 0.0

    def gamma(self) -> float:
        fixed = self.settings["confidence_threshold"]
        return float(fixed) if fixed is not None else 1.0 - self.running_dice

    def semi_supervised_active(self, step: int) -> bool:
        return step >= self.settings["semi_supervised_start"] * self.config.steps

    def card_notes(self) -> str:
        gamma = self.settings["confidence_threshold"] or "1 - running labelled Dice (reference: validation)"
        return (
            f"supervised loss {self.settings['supervised_loss']} (the paper: sample-attention); "
            f"ASDNet Eq. 7 with lambda_1 = {self.settings['adversarial_weight']}, lambda_2 = "
            f"{self.settings['semi_supervised_weight']}; semi-supervised term from "
            f"{self.settings['semi_supervised_start']:.3g} of the run with gamma = {gamma}; SGD instead "
            f"of the paper's Adam{self._normalisation_note()}."
        )

    def _normalisation_note(self) -> str:
        if self.settings["supervised_loss"] != "sample-attention":
            return ""
        normalize = self.settings["sample_attention_normalize"]
        return f", sample-attention weights normalised to a batch mean of 1 ({normalize})"

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        confidence = self.networks["confidence"]
        labelled_count = images.shape[0]
        batch = torch.cat([images, unlabelled_images])
        logits = self.segmenter(batch)["logits"]
        probabilities = F.softmax(logits, dim=1)
        labelled, unlabelled = probabilities[:labelled_count], probabilities[labelled_count:]
        target = one_hot(labels, self.num_classes)

        if self.settings["supervised_loss"] == "dice-ce":
            segmentation = masked_dice_ce_loss(logits[:labelled_count], labels)
        else:  # Eq. 2
            segmentation = sample_attention_dice_loss(
                labelled,
                target,
                self.settings["sample_attention_beta"],
                self.settings["sample_attention_normalize"],
            )
        momentum = self.settings["dice_momentum"]
        batch_dice = float(generalized_dice(labelled.detach(), target).mean())
        self.running_dice = momentum * self.running_dice + (1 - momentum) * batch_dice
        ratings = confidence(probabilities, batch)
        adversarial = adversarial_bce(ratings, real=True)
        trusted = torch.sigmoid(ratings[labelled_count:])
        semi = confident_region_dice_loss(unlabelled, trusted, self.gamma())
        semi_weight = self.settings["semi_supervised_weight"] * self.semi_supervised_active(step)
        loss = segmentation + self.settings["adversarial_weight"] * adversarial + semi_weight * semi
        self.update(self.optimizers["segmenter"], loss)

        real = adversarial_bce(confidence(target, images), real=True)
        fake = adversarial_bce(confidence(labelled.detach(), images), real=False)
        confidence_loss = 0.5 * (real + fake)
        self.update(self.optimizers["confidence"], confidence_loss)
        return {
            "loss": loss.item(),
            "segmentation": segmentation.item(),
            "adversarial": adversarial.item(),
            "semi_supervised": semi.item(),
            "confidence": confidence_loss.item(),
            "gamma": self.gamma(),
        }

    def export_architecture(self) -> dict[str, Any]:
        architecture = super().export_architecture()
        architecture["params"]["simplified"] = self.config.network["name"] == "svnet"
        return architecture

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "running_dice": self.running_dice}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.running_dice = float(state["running_dice"])
