"""evaluate scores a label absent from both maps as agreement (Dice 1), not as a silent wrong result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from workspace_helpers import label_of, volume

from asdseg.cli import main


def test_two_empty_maps_score_dice_1_when_the_label_is_named(workspace: Path, tmp_path: Path) -> None:
    empty = volume(workspace, "empty.nii.gz", 0 * label_of(workspace))
    assert (
        main(["evaluate", "--pred", empty, "--ref", empty, "--labels", "1", "--csv", str(tmp_path / "m.csv")])
        == 0
    )
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1:4] == ["1", "1.0", "1.0"]


def test_a_label_absent_from_one_case_counts_as_agreement(workspace: Path, tmp_path: Path) -> None:
    label = label_of(workspace)
    only_ellipsoid = volume(workspace, "e.nii.gz", np.where(label == 2, 0, label).astype(np.uint8))
    full = str(workspace / "lab.nii.gz")
    args = ["evaluate", "--pred", full, only_ellipsoid, "--ref", full, only_ellipsoid]
    assert main([*args, "--csv", str(tmp_path / "m.csv")]) == 0
    rows = [line.split(",")[:3] for line in (tmp_path / "m.csv").read_text().splitlines()[1:]]
    assert [row[1:] for row in rows] == [["1", "1.0"], ["2", "1.0"], ["1", "1.0"], ["2", "1.0"]]
