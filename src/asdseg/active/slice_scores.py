"""Per-slice uncertainty of a segmentation: the scores the active-learning loop ranks by.

The attention 3D U-Net predicts twice: SR1 from its final feature maps and SR2 from its
attention maps. Where the two agree the model is sure; where they disagree it is not. Per slice
``k`` of the volume's third array axis (the axial slice for the usual acquisition):

- P-DSC = 2 |SR1 and SR2| / (|SR1| + |SR2|) over the foreground, averaged over the foreground
  classes present in either prediction;
- P-accuracy (the paper's Eq. 4) = 2 |voxels where both predict the same foreground class| /
  (|SR1 != 0| + |SR2 != 0|), for several classes this also counts disagreement about *which*
  organ;
- disagreement = the number of voxels where SR1 and SR2 predict different classes: P-DSC's
  disagreement counted in voxels instead of as a ratio. P-DSC is lowest on the nearly empty
  slices at the organ's ends, which hold few of the model's wrong voxels; the count is highest
  where the disagreement band is widest, where more of them lie;
- entropy = the sum over the slice of the voxel-wise entropy of SR1's class probabilities.

A class with fewer than ``min_area`` voxels in a slice counts as absent there, so that specks
do not drive the ranking. A slice where both predictions are empty (after that rule) holds no
organ for either head: it gets P-DSC and P-accuracy 1 (full agreement) and is flagged
``both_empty`` (disagreement 0); the P-DSC, P-accuracy and disagreement queries never select
it. Except next to the organ's ends: where both heads stop early, the organ's missed tip lies in
slices they both leave empty.
The ``end_margin`` empty slices just beyond the first and the last slice where either head sees
an organ take that end slice's scores (P-DSC, P-accuracy, disagreement) and are flagged
``beyond_organ_end`` instead, so that an uncertain end makes its neighbours candidates too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: What a model's final prediction can be compared with (:mod:`asdseg.active.second_opinion`):
#: its attention maps' prediction, its SDM head's organ, its confidence map, its mirrored view.
SECOND_OPINIONS = ("attention", "sdm", "confidence", "mirroring")
#: Specks smaller than this (voxels per class per slice) are ignored.
DEFAULT_MIN_AREA = 10
#: Empty slices beyond each end of the predicted organ that stay candidates.
DEFAULT_END_MARGIN = 2


@dataclass(frozen=True)
class SliceScores:
    """Scores of every slice ``k`` of one volume, each array of length (number of slices)."""

    p_dsc: np.ndarray
    p_accuracy: np.ndarray
    entropy: np.ndarray
    both_empty: np.ndarray
    beyond_organ_end: np.ndarray
    disagreement: np.ndarray  #: voxels where SR1 and SR2 differ

    @property
    def slice_count(self) -> int:
        return len(self.p_dsc)

    def mean_agreement(self, measure: str = "p_dsc") -> float:
        return mean_agreement([self], measure)


def mean_agreement(scores: Sequence[SliceScores], measure: str = "p_dsc") -> float:
    """Mean P-DSC (or P-accuracy) over the slices of ``scores`` (one or several volumes) where
    either head predicts an organ: the quality estimate of the stop criterion. Empty slices are
    left out so that the figure does not depend on how much empty space the volumes hold; 1.0
    when every slice is empty."""
    values = np.concatenate([getattr(volume, measure)[~volume.both_empty] for volume in scores])
    return float(values.mean()) if len(values) else 1.0


def _without_specks(labels: np.ndarray, values: list[int], min_area: int) -> np.ndarray:
    """``labels`` (x, y, z) with every class that covers fewer than ``min_area`` voxels of a
    slice set to background in that slice."""
    cleaned = labels.copy()
    for value in values:
        mask = labels == value
        small = mask.sum(axis=(0, 1)) < min_area
        cleaned[:, :, small] = np.where(mask[:, :, small], 0, cleaned[:, :, small])
    return cleaned


def agreement_scores(
    final_labels: np.ndarray, attention_labels: np.ndarray, num_classes: int, min_area: int = DEFAULT_MIN_AREA
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """P-DSC, P-accuracy, the both-empty flag and the disagreement (voxels) per slice ``k`` of
    two (x, y, z) label maps."""
    if final_labels.shape != attention_labels.shape or final_labels.ndim != 3:
        raise ValueError(
            f"label maps must be 3D and alike, got {final_labels.shape} and {attention_labels.shape}"
        )
    foreground = list(range(1, num_classes))
    final = _without_specks(final_labels, foreground, min_area)
    attention = _without_specks(attention_labels, foreground, min_area)
    slices = final.shape[2]
    dice_sum = np.zeros(slices)
    present = np.zeros(slices)
    for value in foreground:
        in_final = (final == value).sum(axis=(0, 1))
        in_attention = (attention == value).sum(axis=(0, 1))
        both = ((final == value) & (attention == value)).sum(axis=(0, 1))
        either = (in_final + in_attention) > 0
        dice_sum[either] += 2.0 * both[either] / (in_final[either] + in_attention[either])
        present += either
    both_empty = present == 0
    p_dsc = np.where(both_empty, 1.0, dice_sum / np.maximum(present, 1))
    agree = ((final == attention) & (final > 0)).sum(axis=(0, 1))
    foreground_voxels = (final > 0).sum(axis=(0, 1)) + (attention > 0).sum(axis=(0, 1))
    p_accuracy = np.where(both_empty, 1.0, 2.0 * agree / np.maximum(foreground_voxels, 1))
    disagreement = (final != attention).sum(axis=(0, 1))
    return p_dsc, p_accuracy, both_empty, disagreement


def organ_end_neighbours(both_empty: np.ndarray, margin: int = DEFAULT_END_MARGIN) -> dict[int, int]:
    """Empty slice -> the organ end slice it lies beyond, for the ``margin`` empty slices on
    each side of the range of slices where either head sees an organ."""
    organ_slices = np.flatnonzero(~both_empty)
    if not len(organ_slices) or margin < 1:
        return {}
    first, last = int(organ_slices[0]), int(organ_slices[-1])
    below = {index: first for index in range(max(first - margin, 0), first)}
    above = {index: last for index in range(last + 1, min(last + margin + 1, len(both_empty)))}
    return {**below, **above}


def slice_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Sum over each slice ``k`` of the voxel-wise entropy (nats) of (classes, x, y, z)
    probabilities."""
    clipped = np.clip(probabilities, 1e-12, 1.0)
    return -(probabilities * np.log(clipped)).sum(axis=(0, 1, 2))


def score_slices(
    probabilities: np.ndarray,
    attention_probabilities: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    end_margin: int = DEFAULT_END_MARGIN,
) -> SliceScores:
    """Every score of every slice, from the (classes, x, y, z) probabilities of the final
    prediction (SR1) and of the attention-map prediction (SR2)."""
    num_classes = probabilities.shape[0]
    p_dsc, p_accuracy, both_empty, disagreement = agreement_scores(
        probabilities.argmax(axis=0), attention_probabilities.argmax(axis=0), num_classes, min_area
    )
    beyond_end = np.zeros_like(both_empty)
    for index, end in organ_end_neighbours(both_empty, end_margin).items():
        p_dsc[index], p_accuracy[index], disagreement[index] = p_dsc[end], p_accuracy[end], disagreement[end]
        beyond_end[index] = True
    both_empty = both_empty & ~beyond_end
    return SliceScores(p_dsc, p_accuracy, slice_entropy(probabilities), both_empty, beyond_end, disagreement)
