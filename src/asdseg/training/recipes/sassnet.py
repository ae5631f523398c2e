"""SASSNet (Li et al., MICCAI 2020): a VNet with an SDM head; a discriminator on (image, SDM)
learns to tell labelled from unlabelled inputs, and the segmenter learns to fool it, which makes
the shapes it predicts on unlabelled images look like those on labelled ones.

Per step: supervised Dice + alpha x SDM MSE on the labelled patches, plus the adversarial term
on the unlabelled ones weighted by the paper's lambda(t) = consistency x exp(-5 (1 - t/t_max)^2)
over the whole schedule (t_max = the run's steps, so a short run reaches the full weight too;
the reference quantises t into 40 "epochs" of 150 steps of its 6000-step run); then one
discriminator update on the detached SDMs. The discriminator is in eval mode while it judges the
segmenter's SDMs, as in the reference, so its dropout does not add noise to that gradient.
``consistency`` is 0.001 as in the paper; the reference's README commands use 0.01.
``supervised_loss`` is "dice" as in the paper and the reference (which computes the CE but leaves
it out of the loss); "dice-ce" takes the supervised baseline's (CE + Dice) / 2 instead, so that
SASSNet and supervised training differ only in the SDM head and the unlabelled data.

A batch of labelled patches only (``labelled_per_batch == batch_size``, as when every case has a
label) trains SASSNet's supervised terms alone, segmentation + beta x SDM, with no
discriminator: the product model trained on all labelled cases keeps the SDM overlay that way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from asdseg.networks.discriminator import SDMDiscriminator
from asdseg.training.losses import (
    gaussian_rampup,
    masked_dice_ce_loss,
    masked_dice_loss,
    sdm_loss,
    signed_distance_target,
)
from asdseg.training.recipes.base import Recipe

LABELLED, UNLABELLED = 1, 0
#: The supervised segmentation loss on the labelled patches, from the logits.
SUPERVISED_LOSSES = {
    "dice": lambda logits, labels: masked_dice_loss(F.softmax(logits, dim=1), labels),
    "dice-ce": masked_dice_ce_loss,
}


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
        #: Steps of the Gaussian warm-up; None = the whole run (the paper's t_max).
        "rampup_steps": None,
        "discriminator_filters": 64,
        "auxiliary_learning_rate": 1e-4,
        "supervised_loss": "dice",
    }

    def __init__(self, config, device) -> None:
        #: Without unlabelled patches there is nothing for the discriminator to judge.
        self.semi_supervised = config.labelled_per_batch < config.batch_size
        super().__init__(config, device)
        self.supervised_loss = self.setting_choice("supervised_loss", SUPERVISED_LOSSES)

    def build_auxiliary_networks(self):
        if not self.semi_supervised:
            return {}
        return {
            "discriminator": SDMDiscriminator(
                sdm_channels=self.num_classes - 1, base_filters=self.settings["discriminator_filters"]
            )
        }

    def card_notes(self) -> str:
        if not self.semi_supervised:
            return (
                f"supervised loss {self.settings['supervised_loss']} + {self.settings['beta']} x SDM "
                "regression on labelled patches only: no unlabelled patches, so no discriminator."
            )
        return (
            f"supervised loss {self.settings['supervised_loss']} (the paper and the reference: dice); "
            f"adversarial (consistency) weight {self.settings['consistency']} x Gaussian warm-up over "
            f"{self.rampup_steps} steps (the paper's lambda(t) over the whole run); the SASSNet paper "
            "gives 0.001, the reference README's commands 0.01."
        )

    @property
    def rampup_steps(self) -> int:
        return self.settings["rampup_steps"] or self.config.steps

    def adversarial_weight(self, step: int) -> float:
        return self.settings["consistency"] * gaussian_rampup(step, self.rampup_steps)

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        if unlabelled_images is None:
            return self.supervised_step(images, labels)
        discriminator = self.networks["discriminator"]
        labelled_count = images.shape[0]
        batch = torch.cat([images, unlabelled_images])
        outputs = self.segmenter(batch)
        segmentation = self.supervised_loss(outputs["logits"][:labelled_count], labels)
        distance = sdm_loss(outputs["sdm"][:labelled_count], sdm_targets(labels, self.num_classes))
        discriminator.eval()
        unlabelled_verdict = discriminator(outputs["sdm"][labelled_count:], unlabelled_images)
        fool = F.cross_entropy(unlabelled_verdict, self._targets(len(unlabelled_images), LABELLED))
        loss = segmentation + self.settings["beta"] * distance + self.adversarial_weight(step) * fool
        self.update(self.optimizers["segmenter"], loss)

        discriminator.train()
        verdict = discriminator(outputs["sdm"].detach(), batch)
        truth = torch.cat(
            [self._targets(labelled_count, LABELLED), self._targets(len(unlabelled_images), UNLABELLED)]
        )
        discriminator_loss = F.cross_entropy(verdict, truth)
        self.update(self.optimizers["discriminator"], discriminator_loss)
        return {
            "loss": loss.item(),
            "segmentation": segmentation.item(),
            "sdm": distance.item(),
            "adversarial": fool.item(),
            "discriminator": discriminator_loss.item(),
        }

    def supervised_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Segmentation + beta x SDM on labelled patches: SASSNet with nothing unlabelled."""
        outputs = self.segmenter(images)
        segmentation = self.supervised_loss(outputs["logits"], labels)
        distance = sdm_loss(outputs["sdm"], sdm_targets(labels, self.num_classes))
        loss = segmentation + self.settings["beta"] * distance
        self.update(self.optimizers["segmenter"], loss)
        return {"loss": loss.item(), "segmentation": segmentation.item(), "sdm": distance.item()}

    def _targets(self, count: int, value: int) -> torch.Tensor:
        return torch.full((count,), value, dtype=torch.long, device=self.device)
