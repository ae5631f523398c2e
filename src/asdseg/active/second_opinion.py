"""A model's second opinion of its own segmentation: the prediction the slice scores compare the
final one with, for every kind of model.

P-DSC (attention-guided active learning) compares the attention U-Net's final prediction with the
one from its attention maps. Other models carry other second opinions of the same volume:

- ``attention``: the attention U-Net's attention-map prediction (the paper's);
- ``sdm``: the SDM head's organ, where its signed distance is negative (SASSNet's two heads);
- ``confidence``: the prediction with every voxel the confidence network doubts (confidence below
  0.5) given to the class it would be otherwise: a foreground voxel to background, a background
  voxel to its most probable foreground class (DAN's and ASDNet's confidence maps);
- ``mirroring``: the model's prediction of the volume mirrored in the axial plane, mirrored back
  (any model: where it changes its mind when the image is flipped, it is unsure).

Each is returned as a one-hot (classes, x, y, z) array like the final prediction's probabilities,
so :func:`asdseg.active.slice_scores.score_slices` ranks slices the same way for all of them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from asdseg.active.slice_scores import SECOND_OPINIONS
from asdseg.errors import ModelError
from asdseg.inference.segment import SegmentationResult, channel_array
from asdseg.io.image_io import image_to_array
from asdseg.registry.model_card import ATTENTION_ARCHITECTURES, ModelCard

__all__ = ["SECOND_OPINIONS", "available_second_opinions", "second_opinion_probabilities"]


def available_second_opinions(card: ModelCard) -> list[str]:
    """The second opinions ``card``'s model can give, its own heads first."""
    outputs = card.data.get("outputs", {})
    own = [
        name
        for name, present in (
            ("attention", card.data["architecture"]["name"] in ATTENTION_ARCHITECTURES),
            ("sdm", outputs.get("sdm", False)),
            ("confidence", outputs.get("confidence", False)),
        )
        if present
    ]
    return [*own, "mirroring"]


def confidence_learnt_correctness(card: ModelCard) -> bool:
    """Whether ``card``'s confidence network learnt where its segmenter is right: DAN's
    ``correctness`` target (la-dan 1.x), or a sparse fine-tuning round, which trains it so. The
    papers' discriminator target (DAN's Eq. 4, ASDNet's) rates a prediction against label maps
    instead, which need not point at the voxels it gets wrong."""
    training = card.data.get("training", {})
    target = training.get("config", {}).get("loss", {}).get("confidence_target")
    return target == "correctness" or training.get("recipe") == "sparse-finetune"


def default_second_opinion(card: ModelCard) -> str:
    """The model's own second head where it has one (the attention maps, the SDM, a confidence
    map that learnt where the model is right), else mirroring."""
    trusted = confidence_learnt_correctness(card)
    return next(name for name in available_second_opinions(card) if name != "confidence" or trusted)


def check_second_opinion(card: ModelCard, source: str) -> None:
    available = available_second_opinions(card)
    if source not in available:
        raise ModelError(
            f"model {card.name!r} cannot give a {source!r} second opinion; it can give "
            f"{', '.join(available)}."
        )


class MirroredNetwork(nn.Module):
    """``network`` seeing its input mirrored along the axial axes, its outputs mirrored back."""

    def __init__(self, network: nn.Module, dims: tuple[int, ...] = (2, 3)) -> None:
        super().__init__()
        self.network = network
        self.dims = dims

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.network(image.flip(self.dims))
        return {
            name: value.flip(self.dims) if isinstance(value, torch.Tensor) and value.ndim == 5 else value
            for name, value in outputs.items()
        }


def one_hot_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, x, y, z) float32 one-hot of an (x, y, z) class-index map."""
    return (np.arange(num_classes)[:, None, None, None] == labels[None]).astype(np.float32)


def sdm_labels(result: SegmentationResult, card: ModelCard) -> np.ndarray:
    """Class indices where the SDM head puts each organ: the class of the most negative signed
    distance where any is negative, background elsewhere."""
    values = [label.value for label in card.labels]
    maps = np.stack([image_to_array(result.sdm[value]) for value in values[1:]])
    inside = maps < 0
    labels = np.where(inside.any(axis=0), np.argmin(np.where(inside, maps, np.inf), axis=0) + 1, 0)
    return labels.astype(np.int64)


def confidence_labels(result: SegmentationResult) -> np.ndarray:
    """The final prediction with each doubted voxel (confidence < 0.5) changed to the class it
    would be otherwise: background for a foreground voxel, the most probable foreground class for
    a background one."""
    probabilities = channel_array(result.probabilities)
    final = probabilities.argmax(axis=0)
    other = np.where(final > 0, 0, probabilities[1:].argmax(axis=0) + 1)
    doubted = image_to_array(result.confidence) < 0.5
    return np.where(doubted, other, final).astype(np.int64)


def second_opinion_probabilities(
    result: SegmentationResult, card: ModelCard, source: str, mirrored: SegmentationResult | None = None
) -> np.ndarray:
    """The second opinion ``source`` of ``result`` as (classes, x, y, z) probabilities; for
    ``mirroring``, ``mirrored`` is the segmentation by :class:`MirroredNetwork`."""
    check_second_opinion(card, source)
    if source == "attention":
        return channel_array(result.attention_probabilities)
    if source == "mirroring":
        if mirrored is None:
            raise ValueError("the mirroring second opinion needs the mirrored segmentation")
        return channel_array(mirrored.probabilities)
    labels = sdm_labels(result, card) if source == "sdm" else confidence_labels(result)
    return one_hot_labels(labels, len(card.labels))
