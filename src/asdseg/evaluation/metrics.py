"""Overlap and surface-distance metrics, one implementation each.

Conventions (chosen to match medpy, which UA-MT and SASSNet report with):

* Surface of a mask: its voxels with at least one 6-neighbour outside the mask, voxels on the
  image border included.
* Directed surface distances A->B: for each surface voxel of A, the Euclidean distance (mm
  with the voxel spacing, or voxels with unit spacing) to the nearest surface voxel of B.
* ``asd`` (directed): mean of A->B, medpy's ``asd`` (the papers' "ASD").
  ``assd`` (symmetric): mean over the pooled A->B and B->A distances (Heimann et al. 2009).
* ``hd95``: 95th percentile of the pooled A->B and B->A distances (medpy's ``hd95``).

Empty masks: both empty -> Dice = Jaccard = 1 and every distance 0 (perfect agreement);
exactly one empty -> Dice = Jaccard = 0 and every distance +inf (no surface to measure to).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    total = int(prediction.sum() + reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def mean_class_dice(prediction: np.ndarray, reference: np.ndarray, values: Iterable[int]) -> float:
    """Mean Dice over the label ``values`` present in either map; 1.0 where none is (both empty:
    full agreement)."""
    present = [value for value in values if (prediction == value).any() or (reference == value).any()]
    if not present:
        return 1.0
    return float(np.mean([dice(prediction == value, reference == value) for value in present]))


def jaccard(prediction: np.ndarray, reference: np.ndarray) -> float:
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    union = int(np.logical_or(prediction, reference).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, reference).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the border of the image counts)."""
    mask = mask.astype(bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[(slice(1, -1),) * mask.ndim]
    return mask & ~interior


def distance_to(target_surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance of every voxel to the nearest voxel of ``target_surface``."""
    image = sitk.GetImageFromArray(target_surface.astype(np.uint8).transpose(2, 1, 0))
    image.SetSpacing([float(s) for s in spacing])
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    # The surface is one voxel thick, so its own voxels are all on its boundary (distance 0).
    return np.abs(sitk.GetArrayFromImage(distance).transpose(2, 1, 0))


def directed_surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Distances from each surface voxel of ``source`` to the surface of ``target``.

    Both masks must be non-empty; callers handle the empty cases (see module docstring).
    """
    return distance_to(surface(target), spacing)[surface(source)]


def _surface_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float, float]:
    """(directed ASD pred->ref, symmetric ASSD, HD95) with the empty-mask conventions."""
    prediction_empty, reference_empty = not prediction.any(), not reference.any()
    if prediction_empty and reference_empty:
        return 0.0, 0.0, 0.0
    if prediction_empty or reference_empty:
        return (float("inf"),) * 3
    forward = directed_surface_distances(prediction, reference, spacing)
    backward = directed_surface_distances(reference, prediction, spacing)
    pooled = np.concatenate([forward, backward])
    return float(forward.mean()), float(pooled.mean()), float(np.percentile(pooled, 95))


def average_surface_distance(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    symmetric: bool = True,
) -> float:
    """Symmetric (pooled) or directed (prediction -> reference) average surface distance."""
    directed, pooled, _ = _surface_metrics(prediction.astype(bool), reference.astype(bool), spacing)
    return pooled if symmetric else directed


def hausdorff95(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> float:
    return _surface_metrics(prediction.astype(bool), reference.astype(bool), spacing)[2]


@dataclass(frozen=True)
class CaseMetrics:
    """All metrics of one label in one case; distances in mm and in voxels."""

    dice: float
    jaccard: float
    asd_mm: float
    assd_mm: float
    hd95_mm: float
    asd_voxels: float
    assd_voxels: float
    hd95_voxels: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def evaluate_masks(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> CaseMetrics:
    """Every metric of one binary prediction against its reference."""
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    in_mm = _surface_metrics(prediction, reference, spacing)
    in_voxels = _surface_metrics(prediction, reference, (1.0,) * prediction.ndim)
    return CaseMetrics(dice(prediction, reference), jaccard(prediction, reference), *in_mm, *in_voxels)
