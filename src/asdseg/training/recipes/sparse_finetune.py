"""Fine-tuning a released segmenter (any architecture but the attention U-Net, whose own recipe
already trains on sparse labels) on sparsely labelled slices: what a user's corrections teach.

The network is the whole released model (the segmenter with its SDM head or confidence network),
started from its weights. Each head learns what a sparse label can tell it:

- the segmentation: (CE + soft Dice) / 2 over the labelled voxels only, the supervised loss the
  LA models' recipes share (SASSNet 1.1+ and supervised VNet train with it; DAN's focal Dice and
  confidence-weighted CE reduce to it when every voxel counts the same, which a few corrected
  slices cannot tell apart);
- the SDM head: a signed distance needs the organ's whole 3D surface, which a few slices do not
  give, so only its sign is supervised: negative inside the labelled organ, positive outside,
  a hinge on the wrong sign over the labelled voxels (weight ``sdm_sign_weight``). Its magnitude
  keeps what the model learnt;
- the confidence network: its target, whether the segmenter is right at a voxel, is known
  exactly on a labelled slice, so it is trained there with the binary cross-entropy DAN uses
  (on the segmenter's detached prediction, as in DAN).

Unlabelled voxels give no gradient to any head (:data:`asdseg.training.losses.UNLABELLED`).
With ``intensity_augmentation`` each batch is perturbed by nnU-Net's intensity transforms
(:mod:`asdseg.training.intensity_augmentation`) before the network sees it.
With ``freeze_encoder`` the segmenter's encoder keeps its weights (only decoder and heads
learn); ``asdseg.active.finetune`` sets it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from asdseg.training.intensity_augmentation import IntensityAugmentation
from asdseg.training.losses import confidence_target_loss, masked_dice_ce_loss, sdm_sign_loss
from asdseg.training.recipes.base import Recipe

#: Parameter names of a segmenter's encoder across the architectures (VNet's encoder_stages and
#: downsamplers, the enhanced and attention U-Nets' encoder).
ENCODER_PREFIXES = ("encoder", "downsamplers")


def sparse_losses(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, sdm_sign_weight: float
) -> dict[str, torch.Tensor]:
    """Each head's loss on the labelled voxels: ``logits`` always, ``sdm`` and
    ``confidence_logits`` (the confidence network's, on the detached prediction) when present."""
    losses = {"segmentation": masked_dice_ce_loss(outputs["logits"], labels)}
    if "sdm" in outputs:
        losses["sdm_sign"] = sdm_sign_weight * sdm_sign_loss(outputs["sdm"], labels)
    if "confidence_logits" in outputs:
        losses["confidence"] = confidence_target_loss(outputs["confidence_logits"], outputs["logits"], labels)
    return losses


def segmenter_part(network: nn.Module) -> nn.Module:
    """The segmenter inside a model that carries a confidence network, else the model itself."""
    return getattr(network, "segmenter", network)


class SparseFineTuneRecipe(Recipe):
    name = "sparse-finetune"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "sdm_sign_weight": 0.3,
        "freeze_encoder": False,
        "intensity_augmentation": False,
    }

    def __init__(self, config, device) -> None:
        super().__init__(config, device)
        if self.settings["freeze_encoder"]:
            for name, parameter in segmenter_part(self.networks["segmenter"]).named_parameters():
                if name.startswith(ENCODER_PREFIXES):
                    parameter.requires_grad_(False)
        self.augmentation = IntensityAugmentation() if self.settings["intensity_augmentation"] else None

    def card_notes(self) -> str:
        notes = [
            "fine-tuned on sparse slices: (CE + Dice) / 2 over labelled voxels",
            "an SDM head learns only the sign of its map there (hinge, weight "
            f"{self.settings['sdm_sign_weight']})",
            "a confidence network learns where the segmenter is right on the labelled voxels (BCE)",
        ]
        if self.settings["freeze_encoder"]:
            notes.append("encoder frozen")
        if self.augmentation is not None:
            notes.append("nnU-Net's intensity augmentation on every batch")
        if self.config.average_weights_after is not None:
            notes.append(f"weights averaged over the steps after step {self.config.average_weights_after}")
        if self.config.batchnorm_statistics_batches:
            notes.append("BatchNorm statistics re-estimated on the fine-tuning volumes")
        return "; ".join(notes) + "."

    def training_step(self, images, labels, unlabelled_images, step) -> dict[str, float]:
        network = self.networks["segmenter"]  # fine-tuning runs in one process, never under DDP
        if self.augmentation is not None:
            images = self.augmentation(images, seed=int(torch.randint(2**31 - 1, ())))
        outputs = segmenter_part(network)(images)
        confidence_network = getattr(network, "confidence_network", None)
        if confidence_network is not None:
            probabilities = F.softmax(outputs["logits"].detach(), dim=1)
            outputs["confidence_logits"] = confidence_network(probabilities, images)
        losses = sparse_losses(outputs, labels, self.settings["sdm_sign_weight"])
        loss = sum(losses.values())
        self.update(self.optimizers["segmenter"], loss)
        return {"loss": loss.item(), **{name: value.item() for name, value in losses.items()}}
