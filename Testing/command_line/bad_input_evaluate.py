"""Bad input to ``evaluate``: the cases that test_bad_input.py runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from workspace_helpers import Cases, folder, label_of, volume


def evaluate(w: Path, *extra: str) -> list[str]:
    return ["evaluate", "--pred", str(w / "lab.nii.gz"), "--ref", str(w / "lab.nii.gz"), *extra]


def fraction_of(w: Path) -> np.ndarray:
    """The label map scaled into [0, 0.8]: what truncation to integers would turn into zeros."""
    return label_of(w).astype(np.float32) * 0.4


def spaced_label(w: Path) -> Path:
    label = sitk.ReadImage(str(w / "lab.nii.gz"))
    label.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(label, str(w / "coarse.nii.gz"))
    return w / "coarse.nii.gz"


def folder_with(w: Path, name: str, *cases: str) -> str:
    """A folder of copies of the workspace's label map, one per case name."""
    (w / name).mkdir()
    for case in cases:
        shutil.copy(w / "lab.nii.gz", w / name / f"{case}.nii.gz")
    return str(w / name)


#: evaluate: case -> (argv built in the workspace, fragments the error message must contain).
EVALUATE_CASES: Cases = {
    "evaluate --csv into an image file": (
        lambda w: evaluate(w, "--csv", str(w / "table.nii.gz")),
        ("--csv", "table.nii.gz", "give a .csv file name"),
    ),
    "evaluate: folders that hold different cases": (
        lambda w: [
            "evaluate",
            "--pred",
            folder_with(w, "p", "a", "b"),
            "--ref",
            folder_with(w, "r", "a", "c"),
        ],
        ("only among the predictions: b", "only among the references: c"),
    ),
    "evaluate --labels a,b": (lambda w: evaluate(w, "--labels", "a,b"), ("--labels", "a,b")),
    "evaluate --labels 0": (lambda w: evaluate(w, "--labels", "0"), ("--labels", "1 to 65535")),
    "evaluate a probability map": (
        lambda w: [
            "evaluate",
            "--pred",
            volume(w, "p.nii.gz", fraction_of(w)),
            "--ref",
            str(w / "lab.nii.gz"),
        ],
        ("p.nii.gz", "not label values"),
    ),
    "evaluate negative labels": (
        lambda w: [
            "evaluate",
            "--pred",
            volume(w, "n.nii.gz", -label_of(w).astype(np.int16)),
            "--ref",
            str(w / "lab.nii.gz"),
        ],
        ("n.nii.gz", "not label values"),
    ),
    "evaluate two empty maps without --labels": (
        lambda w: [
            "evaluate",
            "--pred",
            volume(w, "a.nii.gz", 0 * label_of(w)),
            "--ref",
            volume(w, "b.nii.gz", 0 * label_of(w)),
        ],
        ("no label", "--labels 1"),
    ),
    "evaluate --csv is a folder": (
        lambda w: evaluate(w, "--csv", folder(w / "m.csv")),
        ("--csv", "m.csv", "is a folder"),
    ),
    "evaluate --csv is the prediction": (
        lambda w: [
            "evaluate",
            "--pred",
            str(w / "lab.nii.gz"),
            "--ref",
            str(w / "img.nii.gz"),
            "--csv",
            str(w / "lab.nii.gz"),
        ],
        ("--csv", "is the input"),
    ),
    "evaluate grids differ": (
        lambda w: ["evaluate", "--pred", str(w / "lab.nii.gz"), "--ref", str(spaced_label(w))],
        ("do not share one voxel grid",),
    ),
    "evaluate counts differ": (
        lambda w: [
            "evaluate",
            "--pred",
            str(w / "lab.nii.gz"),
            str(w / "lab.nii.gz"),
            "--ref",
            str(w / "lab.nii.gz"),
        ],
        ("2 predictions but 1 references",),
    ),
}
