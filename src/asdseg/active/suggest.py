"""Suggesting the slices of one volume to label next, with a model that has an attention head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from torch import nn

from asdseg.active.slice_scores import DEFAULT_MIN_AREA, SliceScores, score_slices
from asdseg.active.strategies import DEFAULT_STRATEGY, SliceQuery, select_slices
from asdseg.errors import ModelError
from asdseg.inference.segment import SegmentationOptions, SegmentationResult, channel_array, segment_image
from asdseg.progress import CancelToken, ProgressCallback
from asdseg.registry.model_card import ModelCard, require_attention_model


@dataclass
class SliceSuggestion:
    """The slices to label next, every slice's scores, and the segmentation they came from."""

    queries: list[SliceQuery]
    scores: SliceScores
    segmentation: SegmentationResult


def scores_of(result: SegmentationResult, min_area: int = DEFAULT_MIN_AREA) -> SliceScores:
    """Per-slice scores of a segmentation by an attention model, on the input image's slices."""
    if result.attention_probabilities is None:
        raise ModelError("the segmentation has no attention-map prediction; use an attention-unet model.")
    return score_slices(
        channel_array(result.probabilities), channel_array(result.attention_probabilities), min_area
    )


def suggest_slices(
    image: sitk.Image,
    card: ModelCard,
    network: nn.Module,
    labelled_slices: set[int],
    strategy: str = DEFAULT_STRATEGY,
    budget: int = 5,
    options: SegmentationOptions | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    rng: np.random.Generator | None = None,
) -> SliceSuggestion:
    """Segment ``image`` and pick ``budget`` of its unlabelled slices by ``strategy``."""
    require_attention_model(card)
    result = segment_image(image, card, network, options, progress=progress, cancel=cancel)
    scores = scores_of(result, min_area)
    excluded = labelled_slices | result.slices_outside_region()
    queries = select_slices(strategy, [scores], [excluded], budget, rng)
    return SliceSuggestion(queries, scores, result)
