"""ASDNet (Nie et al., MICCAI 2018): SVNet segmenter + fully convolutional confidence network.

Per step: the segmenter minimises the sample-attention generalized Dice on labelled patches, an
adversarial term that asks the confidence network to rate its predictions as ground truth (on
labelled and unlabelled patches), and, on unlabelled patches, the region-attention
semi-supervised Dice over the voxels the confidence network trusts (confidence > gamma), ramped
in with a Gaussian warm-up. The confidence network then learns, voxel by voxel, ground-truth maps
as 1 and the segmenter's predictions as 0.

The weights below are this implementation's defaults, not values quoted from the paper; set
them in the config's ``loss`` section to match a reported run.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from asdseg.losses import (
    adversarial_bce,
    confident_region_dice_loss,
    gaussian_rampup,
    one_hot,
    sample_attention_dice_loss,
)
from asdseg.networks.confidence import ConfidenceNetwork
from asdseg.training.recipes.base import ConfidenceLearningRecipe


class AsdnetRecipe(ConfidenceLearningRecipe):
    name = "asdnet"
    semi_supervised = True
    confidence_network = ConfidenceNetwork
    exported_architecture = "vnet-confidence"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        **ConfidenceLearningRecipe.DEFAULTS,
        "sample_attention_beta": 2.0,
        "adversarial_weight": 0.01,
        "semi_supervised_weight": 0.1,
        "confidence_threshold": 0.5,
        "rampup_steps": 2000,
    }

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        confidence = self.networks["confidence"]
        labelled_count = images.shape[0]
        batch = torch.cat([images, unlabelled_images])
        probabilities = F.softmax(self.segmenter(batch)["logits"], dim=1)
        labelled, unlabelled = probabilities[:labelled_count], probabilities[labelled_count:]
        target = one_hot(labels, self.num_classes)

        segmentation = sample_attention_dice_loss(labelled, target, self.settings["sample_attention_beta"])
        ratings = confidence(probabilities, batch)
        adversarial = adversarial_bce(ratings, real=True)
        trusted = torch.sigmoid(ratings[labelled_count:])
        semi = confident_region_dice_loss(unlabelled, trusted, self.settings["confidence_threshold"])
        semi_weight = self.settings["semi_supervised_weight"] * gaussian_rampup(
            step, self.settings["rampup_steps"]
        )
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
        }

    def export_architecture(self) -> dict[str, Any]:
        architecture = super().export_architecture()
        architecture["params"]["simplified"] = self.config.network["name"] == "svnet"
        return architecture
