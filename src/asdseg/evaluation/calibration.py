"""How far a voxel-wise confidence map can be taken at its word.

A confidence map is calibrated when, among the voxels it gives confidence c, a fraction c is
segmented correctly. The reliability diagram plots that fraction per confidence bin; the
expected calibration error (ECE) is the voxel-weighted mean gap between a bin's mean confidence
and its accuracy. Bins are accumulated case by case so that a whole validation split never has
to sit in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def binned(
    confidence: np.ndarray, correct: np.ndarray, where: np.ndarray | None, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The counted voxels (all, or those in ``where``) as flat arrays: confidence clipped to
    [0, 1], correctness, and the index of the equal-width bin of [0, 1] each falls in
    (confidence 1.0 in the last bin)."""
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence {confidence.shape} and correctness {correct.shape} differ in shape")
    if where is not None:
        confidence, correct = confidence[where], correct[where]
    values = np.clip(confidence.astype(np.float64), 0.0, 1.0).ravel()
    index = np.minimum((values * bins).astype(np.int64), bins - 1)
    return values, correct.astype(bool).ravel(), index


@dataclass
class ReliabilityBins:
    """Voxel counts, summed confidence and summed correctness in ``bins`` equal-width bins of
    [0, 1]; confidence 1.0 falls in the last bin."""

    bins: int = 10
    counts: np.ndarray = field(init=False)
    confidence_sums: np.ndarray = field(init=False)
    correct_sums: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"need at least one bin, not {self.bins}")
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.confidence_sums = np.zeros(self.bins)
        self.correct_sums = np.zeros(self.bins)

    def add(self, confidence: np.ndarray, correct: np.ndarray, where: np.ndarray | None = None) -> None:
        """Count the voxels of one case: ``confidence`` in [0, 1], ``correct`` whether the
        prediction there matches the reference, ``where`` an optional mask of voxels to count."""
        values, hits, index = binned(confidence, correct, where, self.bins)
        self.counts += np.bincount(index, minlength=self.bins)
        self.confidence_sums += np.bincount(index, weights=values, minlength=self.bins)
        self.correct_sums += np.bincount(index, weights=hits, minlength=self.bins)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def mean_confidence(self) -> np.ndarray:
        """Per bin; NaN where the bin is empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.confidence_sums / self.counts

    @property
    def accuracy(self) -> np.ndarray:
        """Fraction of correct voxels per bin; NaN where the bin is empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.correct_sums / self.counts

    def expected_calibration_error(self) -> float:
        """Sum over bins of (share of voxels) x |mean confidence - accuracy|."""
        if self.total == 0:
            raise ValueError("no voxels counted")
        filled = self.counts > 0
        gaps = np.abs(self.confidence_sums[filled] - self.correct_sums[filled])
        return float(gaps.sum() / self.total)

    def summary(self) -> dict[str, object]:
        """JSON-ready figures: ECE, voxel count, overall accuracy and mean confidence, and per bin
        its count, mean confidence and accuracy (None where empty)."""

        def listed(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(value) else round(float(value), 5) for value in values]

        return {
            "ece": self.expected_calibration_error(),
            "voxels": self.total,
            "accuracy": float(self.correct_sums.sum() / self.total),
            "mean_confidence": float(self.confidence_sums.sum() / self.total),
            "bin_counts": self.counts.tolist(),
            "bin_confidence": listed(self.mean_confidence),
            "bin_accuracy": listed(self.accuracy),
        }


@dataclass
class ErrorDetection:
    """How well a confidence map points at the voxels segmented wrongly: the area under the ROC
    curve of "less confident where wrong" (0.5: no better than chance; 1: every wrong voxel less
    confident than every right one). Calibration alone does not say this: a constant map equal
    to the accuracy is calibrated and useless. Confidences are counted in ``bins`` fine bins
    (ties within a bin count half), so that cases can be accumulated."""

    bins: int = 1000
    correct_counts: np.ndarray = field(init=False)
    wrong_counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.correct_counts = np.zeros(self.bins, dtype=np.int64)
        self.wrong_counts = np.zeros(self.bins, dtype=np.int64)

    def add(self, confidence: np.ndarray, correct: np.ndarray, where: np.ndarray | None = None) -> None:
        """Count one case's voxels, as :meth:`ReliabilityBins.add`."""
        _, hits, index = binned(confidence, correct, where, self.bins)
        self.correct_counts += np.bincount(index[hits], minlength=self.bins)
        self.wrong_counts += np.bincount(index[~hits], minlength=self.bins)

    def auroc(self) -> float | None:
        """None when every counted voxel is right (or every one wrong): nothing to detect."""
        right, wrong = int(self.correct_counts.sum()), int(self.wrong_counts.sum())
        if right == 0 or wrong == 0:
            return None
        wrong_below = np.cumsum(self.wrong_counts) - self.wrong_counts
        pairs = self.correct_counts * (wrong_below + 0.5 * self.wrong_counts)
        return float(pairs.sum() / (right * wrong))
