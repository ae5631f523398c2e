"""The calibrated confidence map and the per-volume check flag."""

from __future__ import annotations

import numpy as np
import pytest

from asdseg.evaluation.calibration import ReliabilityBins
from asdseg.inference.confidence_calibration import (
    ConfidenceCalibration,
    best_flag_threshold,
    features,
    fit_logistic,
    logit,
    near_prediction,
)


def test_the_fit_recovers_a_known_logistic_map_and_calibrates_it() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.05, 0.95, 200_000)
    top_probability = rng.uniform(0.5, 0.999, 200_000)
    truth = np.array([0.3, 1.5, 0.8])
    score = truth[0] * logit(confidence) + truth[1] * logit(top_probability) + truth[2]
    probability = 1 / (1 + np.exp(-score))
    correct = rng.random(200_000) < probability
    weights = fit_logistic(features(confidence, top_probability), correct)
    np.testing.assert_allclose(weights, truth, atol=0.05)

    calibration = ConfidenceCalibration(tuple(weights))
    raw, calibrated = ReliabilityBins(), ReliabilityBins()
    raw.add(confidence, correct)
    calibrated.add(calibration.apply(confidence, top_probability), correct)
    assert calibrated.expected_calibration_error() < 0.01 < raw.expected_calibration_error()


def test_expected_error_is_read_near_the_predicted_organ_only() -> None:
    label_map = np.zeros((20, 20, 20), dtype=np.int64)
    label_map[8:12, 8:12, 8:12] = 1
    calibration = ConfidenceCalibration((0.0, 0.0, 0.0), band_mm=2.0, flag_threshold=0.3)
    calibrated = np.ones(label_map.shape, dtype=np.float32)
    calibrated[0, 0, 0] = 0.0  # far from the organ: does not count
    assert calibration.expected_error(calibrated, label_map, (1, 1, 1)) == 0.0
    calibrated[10, 10, 10] = 0.0  # inside the band
    error = calibration.expected_error(calibrated, label_map, (1, 1, 1))
    band = near_prediction(label_map, (1, 1, 1), 2.0)
    assert band[10, 10, 10] and not band[0, 0, 0] and not band[8, 8, 14]
    assert error == pytest.approx(1 / band.sum(), rel=1e-5)
    assert calibration.check_message(error) is None
    assert "check this result" in calibration.check_message(0.4)
    assert calibration.expected_error(calibrated, np.zeros_like(label_map), (1, 1, 1)) is None


def test_the_flag_threshold_separates_the_poor_cases() -> None:
    errors = np.array([0.02, 0.03, 0.04, 0.10, 0.12])
    dice = np.array([0.93, 0.91, 0.90, 0.80, 0.70])
    threshold = best_flag_threshold(errors, dice, poor_dice=0.85)
    assert 0.04 < threshold < 0.10


def test_the_card_entry_round_trips() -> None:
    calibration = ConfidenceCalibration((0.5, 1.0, -0.2), 5.0, 0.08)
    assert ConfidenceCalibration.from_card(calibration.to_card()) == calibration
