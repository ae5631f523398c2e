"""The supervised baseline of UA-MT and SASSNet: labelled patches only, (CE + Dice) / 2."""

from __future__ import annotations

from asdseg.training.losses import masked_dice_ce_loss
from asdseg.training.recipes.base import Recipe


class SupervisedRecipe(Recipe):
    name = "supervised"

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        loss = masked_dice_ce_loss(self.segmenter(images)["logits"], labels)
        self.update(self.optimizers["segmenter"], loss)
        return {"loss": loss.item()}
