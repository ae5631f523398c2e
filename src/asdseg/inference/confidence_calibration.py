"""A confidence map worth showing, and a per-volume "check this result" flag derived from it.

A confidence network trained briefly is under-confident and ranks errors poorly, while the
segmenter's own top class probability ranks them better. A model card may therefore carry a
``confidence_calibration``: a logistic map fitted on cases the model did not train on,

    calibrated = sigmoid(a * logit(confidence network) + b * logit(top probability) + c),

which keeps what each map knows and makes the result a probability of being right (a voxel shown
0.8 is right 8 times in 10). From it, the expected error rate within ``band_mm`` of the
predicted organ says how much of the organ's surroundings the model expects to have wrong; above
the card's ``flag_threshold`` the volume is flagged for a human to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_CLIP = 1e-6


def logit(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(values.astype(np.float64), _CLIP, 1 - _CLIP)
    return np.log(clipped / (1 - clipped))


def features(confidence: np.ndarray, top_probability: np.ndarray) -> np.ndarray:
    """(voxels, 2) logits of the two maps, the inputs of the calibration."""
    return np.stack([logit(confidence).ravel(), logit(top_probability).ravel()], axis=1)


def fit_logistic(inputs: np.ndarray, correct: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Weights (a, b, c) of sigmoid(inputs @ (a, b) + c) by Newton's method (maximum likelihood
    logistic regression, with a tiny ridge so that separable data stays finite)."""
    design = np.column_stack([inputs, np.ones(len(inputs))])
    target = correct.astype(np.float64).ravel()
    weights = np.zeros(design.shape[1])
    ridge = 1e-6 * np.eye(design.shape[1])
    for _ in range(iterations):
        probability = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (probability - target) + ridge @ weights
        hessian = (design * (probability * (1 - probability))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


@dataclass(frozen=True)
class ConfidenceCalibration:
    """The card's ``confidence_calibration`` entry."""

    weights: tuple[float, float, float]
    band_mm: float = 5.0
    flag_threshold: float | None = None

    @classmethod
    def from_card(cls, entry: dict[str, Any]) -> ConfidenceCalibration:
        return cls(tuple(entry["weights"]), entry.get("band_mm", 5.0), entry.get("flag_threshold"))

    def to_card(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": "logistic on logit(confidence network) and logit(top class probability)",
            "weights": [round(float(weight), 6) for weight in self.weights],
            "band_mm": self.band_mm,
        }
        if self.flag_threshold is not None:
            entry["flag_threshold"] = round(float(self.flag_threshold), 6)
        return entry

    def apply(self, confidence: np.ndarray, top_probability: np.ndarray) -> np.ndarray:
        """The calibrated confidence map, float32, shaped like ``confidence``."""
        a, b, c = self.weights
        score = a * logit(confidence) + b * logit(top_probability) + c
        return (1 / (1 + np.exp(-score))).astype(np.float32)

    def expected_error(self, calibrated: np.ndarray, label_map: np.ndarray, spacing) -> float | None:
        """Mean of (1 - calibrated confidence) within ``band_mm`` of the predicted organ(s):
        the share of the organ's surroundings the model expects to have wrong; None when
        nothing was segmented."""
        band = near_prediction(label_map, spacing, self.band_mm)
        return float(1.0 - calibrated[band].mean()) if band.any() else None

    def check_message(self, expected_error: float | None) -> str | None:
        """The warning a flagged volume gets, or None."""
        if expected_error is None or self.flag_threshold is None or expected_error <= self.flag_threshold:
            return None
        return (
            f"check this result: the model expects {100 * expected_error:.1f} % of the voxels within "
            f"{self.band_mm:g} mm of the organ to be wrong (flagged above {100 * self.flag_threshold:.1f} %)"
        )


def near_prediction(label_map: np.ndarray, spacing, distance_mm: float) -> np.ndarray:
    """Voxels within ``distance_mm`` of the predicted foreground."""
    from scipy import ndimage  # a fifth of a second, paid only by models with a confidence map

    foreground = label_map > 0
    if not foreground.any():
        return foreground
    return ndimage.distance_transform_edt(~foreground, sampling=tuple(spacing)) <= distance_mm


def best_flag_threshold(expected_errors: np.ndarray, dice: np.ndarray, poor_dice: float) -> float:
    """The expected-error threshold that best tells the cases below ``poor_dice`` from the
    others (Youden's J on the calibration cases); the midpoint between neighbouring values."""
    values = np.sort(np.unique(expected_errors))
    candidates = (values[1:] + values[:-1]) / 2 if len(values) > 1 else values
    poor = dice < poor_dice
    best, best_score = float(candidates[-1]), -np.inf
    for threshold in candidates:
        flagged = expected_errors > threshold
        sensitivity = flagged[poor].mean() if poor.any() else 0.0
        specificity = (~flagged[~poor]).mean() if (~poor).any() else 0.0
        if sensitivity + specificity - 1 > best_score:
            best, best_score = float(threshold), sensitivity + specificity - 1
    return best
