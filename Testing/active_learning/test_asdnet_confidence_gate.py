"""The ASDNet confidence-gate diagnostic counts, per gamma, the voxels the gate keeps, their
accuracy and the share of the segmenter's errors among them."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def gate() -> ModuleType:
    return load_script("benchmarks/asdnet_confidence_gate.py")


def test_gate_counts_match_a_hand_computed_case(gate: ModuleType) -> None:
    counts = gate.GateCounts((0.2, 0.7))
    # Two cases: 10 voxels, 3 of them wrong.
    counts.add(np.array([0.1, 0.3, 0.8, 0.9, 0.95]), np.array([True, True, False, False, False]))
    counts.add(np.array([0.6, 0.75, 0.1, 0.99, 0.5]), np.array([False, True, False, False, False]))
    summary = counts.summary()
    assert summary["voxels"] == 10
    assert summary["accuracy"] == pytest.approx(0.7)
    # gamma 0.2 keeps 8 voxels (all but the two at 0.1), 2 of them wrong (0.3 and 0.75).
    assert summary["gammas"]["0.2"] == pytest.approx(
        {"kept_share": 0.8, "kept_accuracy": 0.75, "errors_kept_share": 2 / 3}
    )
    # gamma 0.7 keeps 0.8, 0.9, 0.95, 0.75 and 0.99: 5 voxels, 1 wrong.
    assert summary["gammas"]["0.7"] == pytest.approx(
        {"kept_share": 0.5, "kept_accuracy": 0.8, "errors_kept_share": 1 / 3}
    )


def test_a_gate_that_keeps_nothing_has_no_accuracy(gate: ModuleType) -> None:
    counts = gate.GateCounts((0.99,))
    counts.add(np.array([0.5, 0.6]), np.array([False, True]))
    row = counts.summary()["gammas"]["0.99"]
    assert row["kept_share"] == 0.0
    assert row["kept_accuracy"] is None
    assert row["errors_kept_share"] == 0.0
