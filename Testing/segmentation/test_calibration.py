"""Reliability bins, the expected calibration error and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asdseg.evaluation.calibration import ErrorDetection, ReliabilityBins
from asdseg.evaluation.figures import save_reliability_diagram


def test_a_calibrated_map_has_an_ece_near_zero_and_an_overconfident_one_its_gap() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0, 1, size=200_000)
    calibrated = ReliabilityBins(10)
    calibrated.add(confidence, rng.uniform(0, 1, size=confidence.shape) < confidence)
    assert calibrated.expected_calibration_error() < 0.01

    overconfident = ReliabilityBins(10)
    overconfident.add(np.full(1000, 0.95), np.arange(1000) < 600)
    assert overconfident.expected_calibration_error() == pytest.approx(0.35)
    summary = overconfident.summary()
    assert summary["accuracy"] == pytest.approx(0.6) and summary["voxels"] == 1000
    assert summary["bin_counts"][9] == 1000 and summary["bin_accuracy"][0] is None


def test_bins_accumulate_over_cases_and_respect_the_mask() -> None:
    together, apart = ReliabilityBins(4), ReliabilityBins(4)
    confidence = np.array([0.0, 0.3, 0.6, 1.0, 0.9, 0.2])
    correct = np.array([True, False, True, True, False, True])
    together.add(confidence, correct)
    apart.add(confidence[:3], correct[:3])
    apart.add(confidence[3:], correct[3:])
    assert np.array_equal(together.counts, apart.counts)
    assert together.expected_calibration_error() == pytest.approx(apart.expected_calibration_error())
    assert together.counts.tolist() == [2, 1, 1, 2]  # 1.0 falls in the last bin

    masked = ReliabilityBins(4)
    masked.add(confidence, correct, where=confidence > 0.5)
    assert masked.total == 3 and masked.counts.tolist() == [0, 0, 1, 2]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        ReliabilityBins().add(np.zeros(3), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="no voxels"):
        ReliabilityBins().expected_calibration_error()


def test_the_reliability_diagram_is_a_png(tmp_path: Path) -> None:
    bins = ReliabilityBins(10)
    bins.add(np.linspace(0, 1, 500), np.linspace(0, 1, 500) > 0.3)
    path = save_reliability_diagram({"a map": bins}, tmp_path / "reliability.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_error_detection_is_one_for_a_separating_map_and_half_for_a_constant_one() -> None:
    correct = np.array([True] * 6 + [False] * 4)
    separating, constant, reversed_map = ErrorDetection(), ErrorDetection(), ErrorDetection()
    separating.add(np.where(correct, 0.9, 0.2), correct)
    constant.add(np.full(10, 0.97), correct)
    reversed_map.add(np.where(correct, 0.2, 0.9), correct)
    assert separating.auroc() == 1.0 and constant.auroc() == 0.5 and reversed_map.auroc() == 0.0

    rng = np.random.default_rng(2)  # against the rank statistic on a random map, over two cases
    confidence, hits = rng.uniform(size=4000), rng.uniform(size=4000) < 0.7
    split = ErrorDetection()
    split.add(confidence[:2500], hits[:2500])
    split.add(confidence[2500:], hits[2500:])
    greater = (confidence[hits][:, None] > confidence[~hits][None, :]).mean()
    assert split.auroc() == pytest.approx(greater, abs=1e-3)
    masked = ErrorDetection()
    masked.add(confidence, hits, where=hits)
    assert masked.auroc() is None
