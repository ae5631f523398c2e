"""What do the slices each query strategy suggests first hold? A diagnostic beside the study.

The active-learning study (``active_learning_study.py``) asks which strategy's labels raise the
held-out Dice most; at CPU scale its fine-tuning rounds are too short to answer. This script
asks a question that needs no fine-tuning: on the study's pool (the same cases, crop, start
slices and starting model ``la-attention``), which slices does each strategy suggest first, and
how much of the starting model's error do they hold? For budgets of 5, 15 and 35 % of the pool's
slices, picked at once from the start state, it reports per strategy:

- the share of the model's wrong voxels (prediction != reference, on slices not yet labelled)
  that lie in the picked slices: what labelling them could correct;
- the share of the atrium's voxels in the picked slices: how much of the organ they show;
- the mean real Dice of the picked slices that hold the atrium or a prediction of it.

``most-errors`` (the slices with the most wrong voxels, which only an oracle knows) is the upper
bound; random is averaged over 20 draws. Writes ``picks.json`` and ``picks.md``.

    python benchmarks/active_learning_picks.py --output benchmarks/results/active_learning_study
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from active_learning_study import SETTINGS, STARTING_MODEL_CASES, Study, load_volume

from asdseg.active.slice_scores import score_slices
from asdseg.active.strategies import select_slices
from asdseg.data_paths import require_la2018
from asdseg.evaluation.metrics import dice
from asdseg.io.atomic_write import atomic_path
from asdseg.io.datasets import case_names
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry.model_card import ModelCard

BUDGETS = (0.05, 0.15, 0.35)
RANDOM_DRAWS = 20
ORACLE = "most-errors"
#: The study's query strategies (its references, full annotation and the control, pick nothing).
STRATEGIES = ["p-dsc", "p-dsc-spread", "disagreement", "entropy", "random", "equal-interval"]


def slice_table(study: Study) -> list[dict[str, np.ndarray]]:
    """Per pool volume and axial slice: the starting model's scores, wrong voxels, atrium
    voxels and real Dice (nan where neither the reference nor the prediction holds the atrium)."""
    tables = []
    for output, volume in zip(study.predictions(study.card, study.pool), study.pool, strict=True):
        predicted, reference = output["probabilities"].argmax(axis=0) == 1, volume.label == 1
        slices = range(reference.shape[2])
        tables.append(
            {
                "scores": score_slices(output["probabilities"], output["attention_probabilities"]),
                "wrong": (predicted != reference).sum(axis=(0, 1)),
                "atrium": reference.sum(axis=(0, 1)),
                "dice": np.array(
                    [
                        dice(predicted[..., k], reference[..., k])
                        if predicted[..., k].any() or reference[..., k].any()
                        else np.nan
                        for k in slices
                    ]
                ),
            }
        )
    return tables


def picks(
    strategy: str, tables: list[dict[str, Any]], start: list[set[int]], budget: int, seed: int
) -> list[set[int]]:
    """The slices ``strategy`` suggests first, per volume."""
    chosen: list[set[int]] = [set() for _ in tables]
    if strategy == ORACLE:
        candidates = [
            (-int(table["wrong"][k]), volume, k)
            for volume, table in enumerate(tables)
            for k in range(len(table["wrong"]))
            if k not in start[volume]
        ]
        for _, volume, k in sorted(candidates)[:budget]:
            chosen[volume].add(k)
        return chosen
    scores = [table["scores"] for table in tables]
    for query in select_slices(strategy, scores, start, budget, np.random.default_rng(seed)):
        chosen[query.volume].add(query.slice)
    return chosen


def what_picks_hold(
    tables: list[dict[str, Any]], start: list[set[int]], chosen: list[set[int]]
) -> dict[str, float]:
    def total(key: str, slices: list[set[int]] | None) -> float:
        return float(
            sum(
                table[key][k]
                for volume, table in enumerate(tables)
                for k in (slices[volume] if slices is not None else range(len(table[key])))
                if k not in start[volume]
            )
        )

    picked_dice = [table["dice"][k] for table, slices in zip(tables, chosen, strict=True) for k in slices]
    return {
        "picked_slices": sum(len(slices) for slices in chosen),
        "wrong_voxel_share": total("wrong", chosen) / total("wrong", None),
        "atrium_share": total("atrium", chosen) / total("atrium", None),
        "mean_slice_dice": float(np.nanmean(picked_dice))
        if not np.all(np.isnan(picked_dice))
        else float("nan"),
    }


def measure(study: Study, tables: list[dict[str, Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for fraction in BUDGETS:
        budget = round(fraction * study.total_slices)
        rows = {}
        for strategy in [*STRATEGIES, ORACLE]:
            draws = RANDOM_DRAWS if strategy == "random" else 1
            held = [
                what_picks_hold(tables, study.start, picks(strategy, tables, study.start, budget, seed))
                for seed in range(draws)
            ]
            rows[strategy] = {key: float(np.nanmean([entry[key] for entry in held])) for key in held[0]}
        results[f"{100 * fraction:.0f} %"] = {"slices": budget, "strategies": rows}
    return results


def markdown(results: dict[str, Any], study: Study) -> str:
    lines = [
        f"What the slices each strategy suggests first hold: starting model `{study.card.name}` on the "
        f"study's pool ({len(study.pool)} cases, {study.total_slices} slices at "
        f"{' x '.join(f'{value:g}' for value in study.card.spacing)} mm, start slices "
        f"{100 * study.settings.start_fraction:.0f} % at equal intervals); picks made at once from the start "
        f"state; random averaged over {RANDOM_DRAWS} draws; {ORACLE} = the slices with the most wrong voxels "
        f"(an oracle). Shares are of the slices not yet labelled. {results['seconds']:.0f} s in all.",
        "",
        "| budget | strategy | wrong voxels in picks % | atrium voxels in picks % "
        "| mean Dice of picked slices % |",
        "|---|---|---|---|---|",
    ]
    for budget, entry in results["budgets"].items():
        for strategy, row in entry["strategies"].items():
            lines.append(
                f"| {budget} ({entry['slices']} slices) | {strategy} "
                f"| {100 * row['wrong_voxel_share']:.1f} | {100 * row['atrium_share']:.1f} "
                f"| {100 * row['mean_slice_dice']:.1f} |"
            )
    return "\n".join([*lines, "", f"Machine: {results['machine_line']}", ""])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="src/asdseg/models/la-attention", help="the starting model's folder"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/active_learning_study"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    root = require_la2018()
    torch.set_num_threads(args.threads)
    settings = SETTINGS["paper"]
    card = ModelCard.load(Path(args.model) / "card.json")
    pool = case_names(root)[STARTING_MODEL_CASES : STARTING_MODEL_CASES + settings.pool]
    started = time.monotonic()
    study = Study(card, [load_volume(root, name, card, settings.margin) for name in pool], [], settings)
    budgets = measure(study, slice_table(study))
    results = {
        "model": card.name,
        "pool": pool,
        "budgets": budgets,
        "seconds": time.monotonic() - started,
        "machine": describe_machine(),
        "machine_line": machine_line(describe_machine()),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "picks.json", results, indent=1)
    with atomic_path(args.output / "picks.md") as temporary:
        temporary.write_text(markdown(results, study))
    print(markdown(results, study))


if __name__ == "__main__":
    main()
