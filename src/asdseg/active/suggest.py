"""Suggesting the slices of one volume to label next, with any segmentation model.

Slices are scored by how far the model's final prediction and its second opinion
(:mod:`asdseg.active.second_opinion`) disagree on them, P-DSC and the rest of
:mod:`asdseg.active.slice_scores`; an attention model's second opinion is its attention maps, as in
the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from torch import nn

from asdseg.active.second_opinion import (
    MirroredNetwork,
    check_second_opinion,
    default_second_opinion,
    second_opinion_probabilities,
)
from asdseg.active.slice_scores import DEFAULT_MIN_AREA, SliceScores, score_slices
from asdseg.active.strategies import DEFAULT_STRATEGY, SliceQuery, select_slices
from asdseg.inference.segment import SegmentationOptions, SegmentationResult, channel_array, segment_image
from asdseg.progress import CancelToken, ProgressCallback
from asdseg.registry.model_card import ModelCard


@dataclass
class SliceSuggestion:
    """The slices to label next, every slice's scores, and the segmentation they came from."""

    queries: list[SliceQuery]
    scores: SliceScores
    segmentation: SegmentationResult
    #: What the final prediction was compared with (:data:`asdseg.active.second_opinion.SECOND_OPINIONS`).
    second_opinion: str = "attention"


def scores_of(
    result: SegmentationResult,
    card: ModelCard,
    second_opinion: str,
    mirrored: SegmentationResult | None = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> SliceScores:
    """Per-slice scores of a segmentation against its ``second_opinion``, on the input's slices."""
    second = second_opinion_probabilities(result, card, second_opinion, mirrored)
    return score_slices(channel_array(result.probabilities), second, min_area)


def segment_with_second_opinion(
    image: sitk.Image,
    card: ModelCard,
    network: nn.Module,
    second_opinion: str,
    options: SegmentationOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[SegmentationResult, SegmentationResult | None]:
    """The segmentation and, for the ``mirroring`` second opinion, the mirrored one; both then
    without test-time mirroring, which would average the two views into one."""
    if second_opinion != "mirroring":
        return segment_image(image, card, network, options, progress=progress, cancel=cancel), None
    single_view = replace(options or SegmentationOptions(), mirror_axes=())
    result = segment_image(image, card, network, single_view, progress=progress, cancel=cancel)
    mirrored = segment_image(image, card, MirroredNetwork(network), single_view, cancel=cancel)
    return result, mirrored


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
    second_opinion: str | None = None,
) -> SliceSuggestion:
    """Segment ``image`` and pick ``budget`` of its unlabelled slices by ``strategy``, scoring
    them against ``second_opinion`` (default: the model's own second head, else mirroring)."""
    second_opinion = second_opinion or default_second_opinion(card)
    check_second_opinion(card, second_opinion)
    result, mirrored = segment_with_second_opinion(
        image, card, network, second_opinion, options, progress, cancel
    )
    scores = scores_of(result, card, second_opinion, mirrored, min_area)
    excluded = labelled_slices | result.slices_outside_region()
    queries = select_slices(strategy, [scores], [excluded], budget, rng)
    return SliceSuggestion(queries, scores, result, second_opinion)
