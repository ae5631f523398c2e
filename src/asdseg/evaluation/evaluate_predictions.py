"""Evaluating predicted label files against reference label files (``asdseg evaluate``)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.evaluation.metrics import CaseMetrics, evaluate_masks
from asdseg.io.atomic_write import atomic_path
from asdseg.io.image_io import image_to_array, read_image, same_geometry

COLUMNS = ("case", "label", *CaseMetrics.__dataclass_fields__)


def evaluate_label_maps(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], values: Iterable[int]
) -> dict[int, CaseMetrics]:
    return {value: evaluate_masks(prediction == value, reference == value, spacing) for value in values}


def pair_by_case(
    predictions: Sequence[str | Path], references: Sequence[str | Path]
) -> list[tuple[Path, Path]]:
    """Predictions and references given as files in the same order, or as folders (or several
    files) whose volumes are paired by case name as ``asdseg segment`` names its outputs (an
    nnU-Net ``labelsTr`` folder pairs with a folder of predictions). A case on one side only is
    refused, naming it."""
    from asdseg.inference.batch import batch_cases

    if not any(Path(path).is_dir() for path in [*predictions, *references]):
        if len(predictions) != len(references):
            raise InputError(
                f"{len(predictions)} predictions but {len(references)} references; give one --ref per "
                "--pred, or two folders whose files are paired by case name."
            )
        return list(zip(map(Path, predictions), map(Path, references)))
    predicted = {case.name: case.image for case in batch_cases(predictions)}
    referenced = {case.name: case.image for case in batch_cases(references)}
    alone = {
        "predictions": sorted(set(predicted) - set(referenced)),
        "references": sorted(set(referenced) - set(predicted)),
    }
    if any(alone.values()):
        sides = "; ".join(
            f"only among the {side}: {', '.join(names)}" for side, names in alone.items() if names
        )
        raise InputError(
            f"--pred and --ref do not hold the same cases ({sides}); every prediction needs the "
            "reference of the same name, and every reference a prediction."
        )
    return [(predicted[name], referenced[name]) for name in sorted(predicted)]


def evaluate_files(
    pairs: Sequence[tuple[Path, Path]], values: Sequence[int] | None = None
) -> list[dict[str, object]]:
    """One row per (case, label). ``values`` defaults to the non-zero values present in
    either file of each pair."""
    cases = []
    for prediction_path, reference_path in pairs:
        prediction_image, reference_image = read_image(prediction_path), read_image(reference_path)
        if not same_geometry(prediction_image, reference_image, tolerance=1e-3):
            raise InputError(
                f"{prediction_path} and {reference_path} do not share one voxel grid "
                f"(sizes {prediction_image.GetSize()} vs {reference_image.GetSize()}); "
                "evaluate a prediction against the reference it was made for."
            )
        prediction = label_array(prediction_image, prediction_path)
        reference = label_array(reference_image, reference_path)
        cases.append((prediction_path, prediction, reference, reference_image.GetSpacing()))
    if values is None:
        # Every label of any case, so that a case where both maps lack a label scores it as
        # agreement (Dice 1) instead of leaving it out of the means.
        values = sorted(set().union(*(np.unique(np.r_[p.ravel(), r.ravel()]) for _, p, r, _ in cases)) - {0})
        if not values:
            raise InputError(
                "no label in any prediction or reference (every voxel is 0): nothing to evaluate. "
                "To score empty maps as agreement (Dice 1), name the labels, e.g. --labels 1."
            )
    rows = []
    for prediction_path, prediction, reference, spacing in cases:
        for value, case_metrics in evaluate_label_maps(prediction, reference, spacing, values).items():
            rows.append({"case": str(prediction_path), "label": int(value), **case_metrics.as_dict()})
    return rows


def label_array(image: sitk.Image, source: Path) -> np.ndarray:
    """The (x, y, z) label values of a label map; a map of fractions (probabilities, an SDM) is
    refused instead of being truncated to zeros."""
    array = image_to_array(image, np.float64)
    if not np.array_equal(array, np.round(array)) or array.min() < 0:
        raise InputError(
            f"{source}: holds values that are not label values (non-integer or negative, range "
            f"{array.min():g} to {array.max():g}); is it a probability or distance map? Evaluate label maps."
        )
    return array.astype(np.int64)


def mean_rows(rows: Sequence[dict[str, object]]) -> dict[int, dict[str, float]]:
    """Per-label mean of each metric over cases; infinite distances are left out of the mean
    (and counted) so that one empty prediction does not hide the others."""
    means: dict[int, dict[str, float]] = {}
    for value in sorted({int(row["label"]) for row in rows}):
        selected = [row for row in rows if row["label"] == value]
        summary: dict[str, float] = {"cases": len(selected)}
        for column in COLUMNS[2:]:
            finite = [float(row[column]) for row in selected if math.isfinite(float(row[column]))]
            summary[column] = float(np.mean(finite)) if finite else math.inf
        summary["cases_with_empty_mask"] = sum(math.isinf(float(row["hd95_mm"])) for row in selected)
        means[value] = summary
    return means


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """A fixed-width table for the terminal."""
    header = ["case", "label", "Dice", "Jaccard", "ASD mm", "ASSD mm", "HD95 mm", "HD95 vox"]
    keys = ["dice", "jaccard", "asd_mm", "assd_mm", "hd95_mm", "hd95_voxels"]
    lines = [" ".join(f"{h:>10}" if i else f"{h:<30}" for i, h in enumerate(header))]
    for row in rows:
        name = Path(str(row["case"])).name[:30]
        cells = [f"{name:<30}", f"{row['label']:>10}"] + [f"{float(row[k]):>10.4f}" for k in keys]
        lines.append(" ".join(cells))
    for value, summary in mean_rows(rows).items():
        cells = [f"{'mean':<30}", f"{value:>10}"] + [f"{summary[k]:>10.4f}" for k in keys]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, object]], path: str | Path, columns: Sequence[str] = COLUMNS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
