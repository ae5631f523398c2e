"""A slice suggestion as a record: printed as a table, written as JSON, read back by Slicer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from asdseg.io.json_files import read_json, write_json

if TYPE_CHECKING:  # suggest needs torch; Slicer's process only reads the record
    from asdseg.active.suggest import SliceSuggestion


def suggestion_record(
    suggestion: SliceSuggestion, strategy: str, labelled_slices: set[int]
) -> dict[str, Any]:
    """The suggested slices (most wanted first) with their scores, every slice's scores, and
    the quality estimates the stop criterion compares between rounds."""
    scores = suggestion.scores

    def row(index: int) -> dict[str, Any]:
        return {
            "slice": index,
            "p_dsc": round(float(scores.p_dsc[index]), 6),
            "p_accuracy": round(float(scores.p_accuracy[index]), 6),
            "entropy": round(float(scores.entropy[index]), 4),
            "disagreement_voxels": int(scores.disagreement[index]),
            "both_empty": bool(scores.both_empty[index]),
            "beyond_organ_end": bool(scores.beyond_organ_end[index]),
        }

    return {
        "strategy": strategy,
        "second_opinion": suggestion.second_opinion,
        "suggested": [row(query.slice) for query in suggestion.queries],
        "labelled_slices": sorted(labelled_slices),
        "mean_p_dsc": scores.mean_agreement("p_dsc"),
        "mean_p_accuracy": scores.mean_agreement("p_accuracy"),
        "slices": [row(index) for index in range(scores.slice_count)],
    }


def format_suggestions(record: dict[str, Any]) -> str:
    lines = [
        f"{len(record['suggested'])} slice(s) to label next ({record['strategy']}, against the "
        f"model's {record.get('second_opinion', 'attention')} second opinion):",
        f"{'rank':>4}  {'slice':>5}  {'P-DSC':>7}  {'P-acc':>7}  {'disagree':>8}  {'entropy':>9}",
    ]
    for rank, row in enumerate(record["suggested"], start=1):
        disagreement = row.get("disagreement_voxels")  # absent from records of earlier versions
        scores = (
            f"{row['p_dsc']:>7.4f}  {row['p_accuracy']:>7.4f}  "
            f"{'—' if disagreement is None else disagreement:>8}  {row['entropy']:>9.1f}"
        )
        lines.append(f"{rank:>4}  {row['slice']:>5}  {scores}")
    lines.append(
        f"mean P-DSC {record['mean_p_dsc']:.4f}, mean P-accuracy {record['mean_p_accuracy']:.4f} "
        "(over slices where the model sees an organ)"
    )
    return "\n".join(lines)


def write_suggestions(record: dict[str, Any], path: str | Path) -> None:
    write_json(path, record)


def read_suggestions(path: str | Path) -> dict[str, Any]:
    return read_json(path, "suggestions", "slice suggestion written by 'asdseg suggest'")
