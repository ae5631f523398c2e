"""The LA reproduction benchmark's report pairs each recipe with supervised training at the same
seeds (and mirroring), the comparison the README quotes."""

from __future__ import annotations

from types import ModuleType

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def la_reproduction() -> ModuleType:
    return load_script("benchmarks/la_reproduction.py")


def row(raw: float, largest: float) -> dict:
    return {"metrics": {"raw": {"dice": raw}, "largest_component": {"dice": largest}}}


def test_recipes_are_paired_with_supervised_at_the_same_seeds(la_reproduction: ModuleType) -> None:
    results = {
        "supervised": row(0.80, 0.82),
        "sassnet-ce-dice": row(0.81, 0.815),
        "supervised, seeds 2025 then 1337": row(0.86, 0.87),
        "sassnet-ce-dice, seeds 2025 then 1337": row(0.88, 0.88),
        "sassnet-ce-dice, seeds 1337 then 7": row(0.90, 0.90),  # no supervised run at these seeds
    }
    paired = la_reproduction.paired_with_supervised(results)
    assert list(paired) == ["sassnet-ce-dice", "sassnet-ce-dice, seeds 2025 then 1337"]
    assert paired["sassnet-ce-dice"] == pytest.approx({"raw": 1.0, "largest_component": -0.5})
    assert paired["sassnet-ce-dice, seeds 2025 then 1337"] == pytest.approx(
        {"raw": 2.0, "largest_component": 1.0}
    )


def test_evaluated_model_folders_pair_by_run_and_mirroring(la_reproduction: ModuleType) -> None:
    runs = "benchmark_results/la_reproduction/compact"
    results = {
        f"{runs}/supervised, seeds 2025 then 7/model (no mirroring)": row(0.86, 0.87),
        f"{runs}/supervised, seeds 2025 then 7/model (mirrored x, y)": row(0.88, 0.89),
        f"{runs}/sassnet-ce-dice, seeds 2025 then 7/model (no mirroring)": row(0.87, 0.87),
        f"{runs}/sassnet-ce-dice, seeds 2025 then 7/model (mirrored x, y)": row(0.88, 0.88),
        f"{runs}/sassnet-ce-dice, seeds 1337 then 7/model (mirrored x, y)": row(0.90, 0.91),
        f"{runs}/supervised, seeds 1337 then 7/model (mirrored x, y)": row(0.88, 0.88),
    }
    paired = la_reproduction.paired_with_supervised(results)
    assert {
        name: {kind: round(diff, 6) for kind, diff in by_kind.items()} for name, by_kind in paired.items()
    } == {
        "sassnet-ce-dice, seeds 2025 then 7 (no mirroring)": {"raw": 1.0, "largest_component": 0.0},
        "sassnet-ce-dice, seeds 2025 then 7 (mirrored x, y)": {"raw": 0.0, "largest_component": -1.0},
        "sassnet-ce-dice, seeds 1337 then 7 (mirrored x, y)": {"raw": 2.0, "largest_component": 3.0},
    }
    report = la_reproduction.paired_markdown(paired)
    means = report[next(i for i, line in enumerate(report) if line.startswith("| recipe |")) + 2 :]
    assert means == [
        "| sassnet-ce-dice (mirrored x, y) | 2 | 2 | +1.00 | +1.00 |",
        "| sassnet-ce-dice (no mirroring) | 2 | 1 | +1.00 | +0.00 |",
    ]
