"""Training the active-learning attention U-Net on sparse axial-slice labels.

The paper trains with a weighted cross-entropy whose weight is 0 on unlabelled slices, i.e. the
cross-entropy over the labelled voxels only (``"loss": "ce"``, the default); ``"dice-ce"`` takes
(CE + Dice) / 2 instead. The same loss trains SR1 (the final prediction) and, weighted by
``attention_weight``, the predictions of the final and the coarser stage's attention maps, so
that either can serve as SR2 (see :mod:`asdseg.networks.attention_unet`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from asdseg.training.losses import masked_cross_entropy, masked_dice_ce_loss
from asdseg.training.recipes.base import Recipe

LOSSES = {"ce": masked_cross_entropy, "dice-ce": masked_dice_ce_loss}


class AttentionUnetRecipe(Recipe):
    name = "attention-unet"
    DEFAULTS: ClassVar[dict[str, Any]] = {"attention_weight": 0.5, "loss": "ce"}

    def __init__(self, config, device) -> None:
        super().__init__(config, device)
        self.loss = self.setting_choice("loss", LOSSES)

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        outputs = self.segmenter(images)
        final = self.loss(outputs["logits"], labels)
        final_maps = self.loss(outputs["final_attention_logits"], labels)
        coarse_maps = self.loss(outputs["coarse_attention_logits"], labels)
        loss = final + self.settings["attention_weight"] * (final_maps + coarse_maps)
        self.update(self.optimizers["segmenter"], loss)
        return {
            "loss": loss.item(),
            "final": final.item(),
            "final_attention_maps": final_maps.item(),
            "coarse_attention_maps": coarse_maps.item(),
        }

    def card_notes(self) -> str:
        return (
            f"loss {self.settings['loss']} over the labelled voxels (the paper: weighted CE, weight 0 "
            f"on unlabelled slices); attention maps of the final and coarser stage trained with weight "
            f"{self.settings['attention_weight']}; SR2 from the "
            f"{self.config.network.get('params', {}).get('sr2_source', 'final')} stage's attention maps."
        )
