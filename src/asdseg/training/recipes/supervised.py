"""The supervised baseline of UA-MT and SASSNet: labelled patches only, (CE + Dice) / 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asdseg.training.losses import masked_cross_entropy, masked_dice_loss
from asdseg.training.recipes.base import Recipe


def dice_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(CE + foreground soft Dice) / 2 over the labelled voxels (all of them when dense)."""
    return 0.5 * (masked_cross_entropy(logits, labels) + masked_dice_loss(F.softmax(logits, dim=1), labels))


class SupervisedRecipe(Recipe):
    name = "supervised"

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        loss = dice_ce(self.segmenter(images)["logits"], labels)
        self.update(self.optimizers["segmenter"], loss)
        return {"loss": loss.item()}
