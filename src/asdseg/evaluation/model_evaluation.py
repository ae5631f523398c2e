"""A model judged on held-out cases, the way its card and the benchmarks report it.

Each case is segmented once at its own resolution. The label map is scored as predicted
("raw") and after keeping the largest component of each organ, in voxels and in mm. The
confidence maps are scored against real per-voxel correctness: the confidence network's map
where the model has one, and the segmenter's own top softmax probability for comparison. Each
is judged on calibration (ECE) and on error detection (AUROC), over every voxel and over the
voxels near the organ. Far from the organ almost every voxel is trivially right and certain,
and those voxels would otherwise swamp the ECE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from torch import nn

from asdseg.evaluation.calibration import ErrorDetection, ReliabilityBins
from asdseg.evaluation.evaluate_predictions import evaluate_label_maps, mean_rows
from asdseg.inference.postprocessing import keep_largest_component
from asdseg.inference.segment import SegmentationOptions, channel_array, segment_image
from asdseg.io.datasets import case_paths
from asdseg.io.image_io import image_to_array, read_image
from asdseg.progress import ProgressCallback
from asdseg.registry.model_card import ModelCard

POST_PROCESSING = ("raw", "largest_component")
CONFIDENCE_MAP = "confidence network"
SOFTMAX = "top softmax probability"


@dataclass(frozen=True)
class ReferenceCase:
    name: str
    image: sitk.Image
    reference: sitk.Image


def reference_cases(root: Path, names: Sequence[str]) -> list[ReferenceCase]:
    """Cases of a data folder in a training layout (LA 2018's ``train/<name>/``, or a dataset
    folder: :mod:`asdseg.io.datasets`), at their original resolution."""
    return [ReferenceCase(name, *(read_image(path) for path in case_paths(root, name))) for name in names]


@dataclass
class ModelEvaluation:
    """Per-case metric rows by post-processing; reliability bins and error detection by
    confidence map and region (``all voxels`` / ``near the organ``)."""

    rows: dict[str, list[dict[str, object]]] = field(
        default_factory=lambda: {kind: [] for kind in POST_PROCESSING}
    )
    calibration: dict[str, dict[str, ReliabilityBins]] = field(default_factory=dict)
    error_detection: dict[str, dict[str, ErrorDetection]] = field(default_factory=dict)

    def means(self) -> dict[str, dict[int, dict[str, float]]]:
        """Per post-processing, per label value: the mean of every metric over the cases."""
        return {kind: mean_rows(rows) for kind, rows in self.rows.items()}

    def calibration_summary(self) -> dict[str, dict[str, dict[str, object]]]:
        """Per map and region: :meth:`ReliabilityBins.summary` plus ``error_auroc``."""
        return {
            name: {
                region: {**bins.summary(), "error_auroc": self.error_detection[name][region].auroc()}
                for region, bins in regions.items()
            }
            for name, regions in self.calibration.items()
        }


def near_organ(label_maps: Sequence[np.ndarray], spacing: Sequence[float], distance_mm: float) -> np.ndarray:
    """Voxels within ``distance_mm`` of any foreground voxel of any of ``label_maps``."""
    foreground = np.logical_or.reduce([label_map > 0 for label_map in label_maps])
    if not foreground.any():
        return foreground
    return ndimage.distance_transform_edt(~foreground, sampling=tuple(spacing)) <= distance_mm


def evaluate_model(
    card: ModelCard,
    network: nn.Module,
    cases: Sequence[ReferenceCase],
    options: SegmentationOptions | None = None,
    bins: int = 15,
    near_mm: float = 5.0,
    progress: ProgressCallback | None = None,
) -> ModelEvaluation:
    """Segment every case with ``network`` (``options`` without largest-component filtering,
    which is applied here as the second post-processing) and collect metrics and calibration.
    ``progress`` is called with (cases done, cases, case name)."""
    options = replace(options or SegmentationOptions(), largest_component=False)
    values = [label.value for label in card.foreground_labels]
    evaluation = ModelEvaluation()
    for done, case in enumerate(cases, start=1):
        result = segment_image(case.image, card, network, options, source=case.name)
        prediction = result.label_array()
        reference = image_to_array(case.reference, np.int64)
        spacing = case.image.GetSpacing()
        largest, _ = keep_largest_component(prediction, values)
        for kind, label_map in zip(POST_PROCESSING, (prediction, largest)):
            metrics = evaluate_label_maps(label_map, reference, spacing, values)
            evaluation.rows[kind] += [
                {"case": case.name, "label": value, **case_metrics.as_dict()}
                for value, case_metrics in metrics.items()
            ]
        maps = {SOFTMAX: channel_array(result.probabilities).max(axis=0)}
        if result.confidence is not None:
            maps = {CONFIDENCE_MAP: image_to_array(result.confidence), **maps}
        nearby = near_organ([prediction, reference], spacing, near_mm)
        regions = {"all voxels": None, "near the organ": nearby}
        correct = prediction == reference
        for name, confidence in maps.items():
            for region, where in regions.items():
                evaluation.calibration.setdefault(name, {}).setdefault(region, ReliabilityBins(bins))
                evaluation.calibration[name][region].add(confidence, correct, where)
                evaluation.error_detection.setdefault(name, {}).setdefault(region, ErrorDetection())
                evaluation.error_detection[name][region].add(confidence, correct, where)
        if progress is not None:
            progress(done, len(cases), case.name)
    return evaluation
