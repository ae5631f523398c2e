"""SASSNet (Li et al., MICCAI 2020): a VNet with an SDM head; a discriminator on (image, SDM)
learns to tell labelled from unlabelled inputs, and the segmenter learns to fool it, which makes
the shapes it predicts on unlabelled images look like those on labelled ones.

Per step, as in the reference: supervised Dice + beta x SDM MSE on the labelled patches, plus
the adversarial term on the unlabelled ones weighted by ``consistency`` x the Gaussian warm-up
over 40 "epochs" of 150 steps; then one discriminator update on the detached SDMs.
``consistency`` is 0.001 as in the paper; the reference's README commands use 0.01.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from asdseg.losses import gaussian_rampup, masked_dice_loss, sdm_loss, signed_distance_target
from asdseg.networks.discriminator import SDMDiscriminator
from asdseg.training.recipes.base import Recipe

LABELLED, UNLABELLED = 1, 0


def sdm_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C - 1, x, y, z) normalised signed distance maps of each foreground class."""
    arrays = labels.cpu().numpy()
    maps = [[signed_distance_target(array == value) for value in range(1, num_classes)] for array in arrays]
    return torch.from_numpy(np.asarray(maps, dtype=np.float32)).to(labels.device)


class SassnetRecipe(Recipe):
    name = "sassnet"
    semi_supervised = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "beta": 0.3,
        "consistency": 0.001,
        "rampup_epochs": 40,
        "steps_per_epoch": 150,
        "discriminator_filters": 64,
        "auxiliary_learning_rate": 1e-4,
    }

    def build_auxiliary_networks(self):
        return {
            "discriminator": SDMDiscriminator(
                sdm_channels=self.num_classes - 1, base_filters=self.settings["discriminator_filters"]
            )
        }

    def card_notes(self) -> str:
        return (
            f"adversarial (consistency) weight {self.settings['consistency']} x Gaussian warm-up over "
            f"{self.settings['rampup_epochs']} x {self.settings['steps_per_epoch']} steps; the SASSNet paper "
            "gives 0.001, the reference README's commands 0.01."
        )

    def adversarial_weight(self, step: int) -> float:
        epoch = step // self.settings["steps_per_epoch"]
        return self.settings["consistency"] * gaussian_rampup(epoch, self.settings["rampup_epochs"])

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        discriminator = self.networks["discriminator"]
        labelled_count = images.shape[0]
        batch = torch.cat([images, unlabelled_images])
        outputs = self.segmenter(batch)
        probabilities = F.softmax(outputs["logits"][:labelled_count], dim=1)
        dice = masked_dice_loss(probabilities, labels)
        distance = sdm_loss(outputs["sdm"][:labelled_count], sdm_targets(labels, self.num_classes))
        unlabelled_verdict = discriminator(outputs["sdm"][labelled_count:], unlabelled_images)
        fool = F.cross_entropy(unlabelled_verdict, self._targets(len(unlabelled_images), LABELLED))
        loss = dice + self.settings["beta"] * distance + self.adversarial_weight(step) * fool
        self.update(self.optimizers["segmenter"], loss)

        verdict = discriminator(outputs["sdm"].detach(), batch)
        truth = torch.cat(
            [self._targets(labelled_count, LABELLED), self._targets(len(unlabelled_images), UNLABELLED)]
        )
        discriminator_loss = F.cross_entropy(verdict, truth)
        self.update(self.optimizers["discriminator"], discriminator_loss)
        return {
            "loss": loss.item(),
            "dice": dice.item(),
            "sdm": distance.item(),
            "adversarial": fool.item(),
            "discriminator": discriminator_loss.item(),
        }

    def _targets(self, count: int, value: int) -> torch.Tensor:
        return torch.full((count,), value, dtype=torch.long, device=self.device)
