"""Judging a model on held-out cases: metrics raw and after largest-component filtering, and
the calibration of its confidence maps against real per-voxel correctness."""

from __future__ import annotations

import numpy as np
import pytest

from asdseg.evaluation.model_evaluation import (
    CONFIDENCE_MAP,
    SOFTMAX,
    ReferenceCase,
    evaluate_model,
    near_organ,
)
from asdseg.inference.postprocessing import keep_largest_component
from asdseg.io.image_io import array_to_image, image_to_array
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.preprocessing.transforms import normalize_intensity
from asdseg.registry.model_card import ModelCard

from conftest import IntensityClassifier


def test_near_organ_is_the_band_within_the_distance_in_mm() -> None:
    label_map = np.zeros((21, 5, 5), dtype=np.int64)
    label_map[10] = 1
    band = near_organ([label_map, np.zeros_like(label_map)], (0.5, 1.0, 1.0), 2.0)
    assert np.flatnonzero(band[:, 0, 0]).tolist() == list(range(6, 15))  # 4 voxels of 0.5 mm each side
    assert not near_organ([np.zeros_like(label_map)], (1.0, 1.0, 1.0), 2.0).any()


def test_metrics_and_calibration_of_a_network_with_known_outputs(tiny_model: ModelCard) -> None:
    """The pointwise network predicts foreground where the z-scored image is positive, with
    confidence sigmoid(|z|) and top softmax probability sigmoid(20 |z|). Against that very
    label map every voxel is correct, so each ECE is 1 - the map's mean."""
    data = {
        **tiny_model.data,
        "labels": tiny_model.data["labels"][:2],
        "outputs": {"sdm": True, "confidence": True},
    }
    card = ModelCard(data, tiny_model.directory)
    image, _ = phantom_image(make_phantom(shape=(30, 26, 22), seed=4))
    z = normalize_intensity(image_to_array(image), "zscore")
    predicted = (z > 0).astype(np.uint8)
    largest, reports = keep_largest_component(predicted, [1])
    assert reports[0].components > 1  # so that the two post-processings differ
    case = ReferenceCase("phantom", image, array_to_image(predicted, image))

    evaluation = evaluate_model(card, IntensityClassifier(), [case, case], bins=10, near_mm=0.5)

    means = evaluation.means()
    assert means["raw"][1]["cases"] == 2 and means["raw"][1]["dice"] == pytest.approx(1.0)
    expected = 2 * largest.sum() / (largest.sum() + predicted.sum())
    assert means["largest_component"][1]["dice"] == pytest.approx(expected)
    confidence = evaluation.calibration[CONFIDENCE_MAP]["all voxels"]
    assert confidence.total == 2 * z.size
    assert confidence.expected_calibration_error() == pytest.approx(
        1 - np.mean(1 / (1 + np.exp(-np.abs(z)))), abs=1e-5
    )
    softmax = evaluation.calibration[SOFTMAX]["all voxels"]
    assert softmax.expected_calibration_error() == pytest.approx(
        1 - np.mean(1 / (1 + np.exp(-20 * np.abs(z)))), abs=1e-5
    )
    near = evaluation.calibration[CONFIDENCE_MAP]["near the organ"]
    assert near.total == 2 * predicted.sum()  # within 0.5 mm of 1 mm voxels: the organ itself
    summary = evaluation.calibration_summary()[SOFTMAX]["near the organ"]
    assert summary["voxels"] == near.total and summary["error_auroc"] is None  # no voxel is wrong
