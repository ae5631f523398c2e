"""How much an annotator changed on one slice: the cost of a label, measured rather than guessed.

When a suggested slice is pre-filled with the model's prediction the annotator corrects instead
of drawing, and what it cost is the voxels they added and removed; Dice of the prediction
against the corrected slice says how good the prediction was there. Both are kept per slice
(in the sparse labels' slices file), so rounds and strategies can be compared by the work they
took, not only by the number of slices. Numpy only: Slicer's process computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from asdseg.errors import InputError

#: The keys of a slice's entry in the slices file, as :meth:`SliceEffort.to_dict` writes them.
FIELDS = ("prefilled", "added", "removed", "dice")


def _is_number(value: Any) -> bool:
    """An int or float from JSON, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SliceEffort:
    """One labelled slice: whether it started as the prediction (``prefilled``), the voxels the
    annotator made foreground or changed to another label (``added``) and made background
    (``removed``), and the mean Dice of prediction vs. corrected slice (None: no prediction)."""

    prefilled: bool
    added: int
    removed: int
    dice: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"prefilled": self.prefilled, "added": self.added, "removed": self.removed, "dice": self.dice}

    @classmethod
    def from_dict(cls, entry: Any) -> SliceEffort:
        """The effort an entry of :meth:`to_dict` describes; InputError says what is wrong with
        a malformed one (it comes from a file or a saved scene someone may have edited)."""
        if not isinstance(entry, dict) or set(entry) != set(FIELDS):
            raise InputError(f"expected an object with {', '.join(FIELDS)}, got {entry!r}")
        if not isinstance(entry["prefilled"], bool):
            raise InputError(f"'prefilled' must be true or false, got {entry['prefilled']!r}")
        for key in ("added", "removed"):
            if not (_is_number(entry[key]) and isinstance(entry[key], int) and entry[key] >= 0):
                raise InputError(f"{key!r} must be a voxel count (a whole number from 0), got {entry[key]!r}")
        dice = entry["dice"]
        if dice is not None and not (_is_number(dice) and 0 <= dice <= 1):
            raise InputError(f"'dice' must be null or a number from 0 to 1, got {dice!r}")
        dice = None if dice is None else float(dice)
        return cls(entry["prefilled"], entry["added"], entry["removed"], dice)

    def summary(self) -> str:
        """What the annotator is shown, e.g. ``+12 -3, Dice 0.93`` (written with a minus sign, and
        without Dice when there was no prediction)."""
        text = f"+{self.added} \u2212{self.removed}"
        return text if self.dice is None else f"{text}, Dice {self.dice:.2f}"


def mean_dice(prediction: np.ndarray, corrected: np.ndarray) -> float:
    """Mean over the foreground labels in either array of Dice(prediction == v, corrected == v);
    1.0 when both are empty (the model was right that there is nothing)."""
    values = sorted((set(np.unique(prediction)) | set(np.unique(corrected))) - {0})
    if not values:
        return 1.0
    scores = []
    for value in values:
        predicted, drawn = prediction == value, corrected == value
        scores.append(2.0 * np.count_nonzero(predicted & drawn) / (predicted.sum() + drawn.sum()))
    return float(np.mean(scores))


def measure_effort(corrected: np.ndarray, prediction: np.ndarray | None, prefilled: bool) -> SliceEffort:
    """The effort on one slice from its corrected labels and the prediction (label arrays of
    the same shape). What the annotator started from is the prediction when the slice was
    pre-filled with it, else an empty slice."""
    if prefilled and prediction is None:
        raise ValueError("a pre-filled slice needs the prediction it was filled with")
    if prediction is not None and prediction.shape != corrected.shape:
        raise ValueError(f"prediction {prediction.shape} and corrected {corrected.shape} differ in shape")
    before = prediction if prefilled else np.zeros_like(corrected)
    added = np.count_nonzero((corrected != 0) & (corrected != before))
    removed = np.count_nonzero((before != 0) & (corrected == 0))
    dice = None if prediction is None else mean_dice(prediction, corrected)
    return SliceEffort(prefilled, int(added), int(removed), dice)
