"""Training the active-learning attention U-Net: (CE + Dice) / 2 on both of its predictions,
the final one and the one from the attention maps, over the labelled voxels only, so that the
sparse axial-slice labels of the active-learning loop train it directly."""

from __future__ import annotations

from typing import Any, ClassVar

from asdseg.training.recipes.base import Recipe
from asdseg.training.recipes.supervised import dice_ce


class AttentionUnetRecipe(Recipe):
    name = "attention-unet"
    DEFAULTS: ClassVar[dict[str, Any]] = {"attention_weight": 0.5}

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        outputs = self.segmenter(images)
        final = dice_ce(outputs["logits"], labels)
        attention = dice_ce(outputs["attention_logits"], labels)
        loss = final + self.settings["attention_weight"] * attention
        self.update(self.optimizers["segmenter"], loss)
        return {"loss": loss.item(), "final": final.item(), "attention": attention.item()}
