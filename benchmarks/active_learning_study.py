"""Simulation study of attention-guided active learning on LA 2018, in the product's setting.

An annotator opens ActiveAnnotate on new left-atrium scans with the attention U-Net trained on
the 16 labelled LA volumes (``--model``; the first 16 cases of ``train.list``). The study's pool
is the next ``pool`` cases, never seen by that model; each pool volume starts with an equal
interval of labelled axial slices (``start_fraction`` of its slices). Round after round, each
query strategy picks ``budget_fraction`` of the pool's slices, their ground truth is revealed
(the simulated annotator), and the strategy's model is fine-tuned on every slice labelled so far
(``round_steps`` steps), until ``max_fraction`` of the slices are labelled. After each round the
model is scored on the held-out cases (the last ``validation`` of ``train.list``) and the mean
P-DSC over the pool is recorded for the stop criterion (change below sigma). "full-annotation"
fine-tunes on every slice of the pool for the same steps: the reference the strategies approach.
"start-slices-only" fine-tunes for the same rounds on the start slices alone: the control that
tells what the extra steps give from what the chosen slices give.

Strategies: p-dsc, p-dsc-spread, disagreement, entropy, random, equal-interval, and
full-annotation (p-accuracy too if asked: on the atrium alone it equals P-DSC, so it is not run
by default); each chain
runs ``repeats`` times with different seeds (fine-tuning's sampling, and random's picks). Every
chain saves its state after each round under ``OUTPUT/runs/``, so that the study stops and
continues per strategy, repeat and round, and several processes can share the work
(``--strategies``, ``--repeats``). ``--report`` (also run at the end) writes:

- ``rows.csv``: every round of every chain;
- ``curves.csv`` and ``curves.png``: Dice against slices labelled, mean and spread per strategy,
  the stop criterion marked;
- ``summary.json`` and ``summary.md``: per budget and strategy, and the answers to "is P-DSC at
  least as good as random and equal-interval" and "how few slices come within 1 point of full
  annotation".

Volumes are cropped around the atrium (``margin`` voxels, as the UA-MT / SASSNet preprocessing
crops around the label) and put on the model's grid (1.25 mm); slice fractions count that grid's
slices (each is two slices of the original 0.625 mm scans).

Settings: ``paper`` (the default: 500-step rounds to 40 %, 20 held-out cases; hours of GPU),
``cpu`` (40-step rounds, 10 held-out cases: two CPU hours, too few steps for the labels to
matter), ``early-rounds`` (the paper's 500-step rounds, the first two only, 10 held-out cases:
about 35 minutes per chain on one core) and ``smoke``.

    python benchmarks/active_learning_study.py --setting cpu --output benchmark_results/active_learning
    python benchmarks/active_learning_study.py --report --output benchmark_results/active_learning
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from asdseg.active.finetune import FineTuneSettings, fine_tune
from asdseg.active.slice_scores import SliceScores, mean_agreement, score_slices
from asdseg.active.sparse_labels import SparseLabels
from asdseg.active.stopping import DEFAULT_SIGMA, has_converged
from asdseg.active.strategies import STRATEGIES, select_slices
from asdseg.data_paths import require_la2018
from asdseg.evaluation.figures import save_active_learning_curves
from asdseg.evaluation.metrics import dice
from asdseg.inference.sliding_window import card_window_settings, predict_volume
from asdseg.io.atomic_write import atomic_path
from asdseg.io.datasets import case_names
from asdseg.io.image_io import image_to_array, read_image
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.preprocessing.transforms import (
    foreground_box,
    normalize_intensity,
    resample_like,
    resample_to_spacing,
)
from asdseg.registry import load_network
from asdseg.registry.model_card import ModelCard
from asdseg.training.data import Case

FULL_ANNOTATION = "full-annotation"
#: The control: no new labels, the same fine-tuning rounds on the start slices alone. What a
#: strategy gains over it comes from its slices; what the control gains comes from the steps.
START_SLICES_ONLY = "start-slices-only"
ALL_STRATEGIES = [*STRATEGIES, FULL_ANNOTATION, START_SLICES_ONLY]
#: The chains that query nothing (they label every slice, or none new), as the curves name them.
REFERENCE_CHAINS = {FULL_ANNOTATION: "full annotation (all slices)", START_SLICES_ONLY: "start slices only"}
#: The study's default: on a one-organ task such as the atrium, P-accuracy (Eq. 4) equals P-DSC
#: slice for slice, so a p-accuracy chain would repeat the p-dsc chain pick for pick.
LA_STRATEGIES = [strategy for strategy in ALL_STRATEGIES if strategy != "p-accuracy"]
#: The differences the summary reports: the paper's query and the product's variants of it (the
#: default, p-dsc-spread, among them), each against random and equal-interval.
COMPARISONS = list(itertools.product(("p-dsc", "p-dsc-spread", "disagreement"), ("random", "equal-interval")))
#: Cases of train.list the starting model was trained on (the papers' 16 labelled LA volumes).
STARTING_MODEL_CASES = 16


@dataclass(frozen=True)
class StudySettings:
    pool: int  #: volumes after the starting model's training cases
    validation: int  #: held-out volumes (the last of train.list)
    start_fraction: float  #: slices labelled at the start, at equal intervals
    budget_fraction: float  #: slices queried per round, as a fraction of the pool's slices
    max_fraction: float  #: the study stops once this fraction is labelled
    round_steps: int
    learning_rate: float
    repeats: int
    batch_size: int = 2
    margin: int = 16  #: voxels around the label kept when cropping (original resolution)


# The paper's round schedule (section 3: SGD, rate 0.001, momentum 0.9, weight decay 1e-4, 500
# steps per round): hours of GPU.
PAPER = StudySettings(
    pool=16,
    validation=20,
    start_fraction=0.05,
    budget_fraction=0.05,
    max_fraction=0.40,
    round_steps=500,
    learning_rate=0.001,
    repeats=3,
)
SETTINGS = {
    "paper": PAPER,
    # What 2 CPU cores finish in about two hours: the paper's rate, 40 steps per round (the
    # paper: 500), 10 held-out cases. (At 0.005, ActiveAnnotate's earlier rate, 40-step rounds
    # moved the held-out Dice by up to 4 points between rounds and repeats.)
    "cpu": replace(PAPER, validation=10, round_steps=40),
    # The paper's 500-step rounds, but only the first two (to 15 % of slices, where the cpu
    # setting's strategies differed most), on 10 held-out cases: about 35 minutes per chain on
    # one core. It asks whether the chosen slices matter once a round trains long enough for
    # labels to count (in the cpu setting the control, no new labels, was level with random).
    "early-rounds": replace(PAPER, validation=10, max_fraction=0.15),
    # Checks that the script runs end to end; its numbers mean nothing.
    "smoke": StudySettings(
        pool=2,
        validation=1,
        start_fraction=0.1,
        budget_fraction=0.1,
        max_fraction=0.3,
        round_steps=2,
        learning_rate=0.001,
        repeats=1,
    ),
}


@dataclass
class Volume:
    name: str
    image: np.ndarray  #: normalised, on the model's grid (x, y, z)
    label: np.ndarray  #: int64 (x, y, z)
    spacing: tuple[float, float, float]


def load_volume(root: Path, name: str, card: ModelCard, margin: int) -> Volume:
    """One case cropped around the atrium and put on the model's grid."""
    folder = root / "train" / name
    image, label = read_image(folder / "image.nii.gz"), read_image(folder / "label.nii.gz")
    box = foreground_box(image_to_array(label), margin)
    size = [stop - start for start, stop in zip(box.start, box.stop, strict=True)]
    image = resample_to_spacing(
        sitk.Cast(sitk.RegionOfInterest(image, size, list(box.start)), sitk.sitkFloat32), card.spacing
    )
    label = resample_like(
        sitk.RegionOfInterest(label, size, list(box.start)), image, sitk.sitkNearestNeighbor
    )
    array = normalize_intensity(image_to_array(image), card.data["preprocessing"]["normalization"])
    return Volume(name, array, image_to_array(label, np.int64), image.GetSpacing())


def equal_interval_slices(count: int, fraction: float) -> set[int]:
    """``fraction`` of ``count`` slices (at least one), spread at equal intervals."""
    wanted = max(1, round(fraction * count))
    return {int(index) for index in np.linspace(0, count, wanted, endpoint=False) + count / wanted / 2}


class Study:
    """The pool, the held-out cases and the settings one chain needs."""

    def __init__(
        self, card: ModelCard, pool: list[Volume], validation: list[Volume], settings: StudySettings
    ):
        self.card, self.pool, self.validation, self.settings = card, pool, validation, settings
        self.total_slices = sum(volume.label.shape[2] for volume in pool)
        self.budget = max(1, round(settings.budget_fraction * self.total_slices))
        self.start = [
            equal_interval_slices(volume.label.shape[2], settings.start_fraction) for volume in pool
        ]

    def rounds(self) -> int:
        started = sum(len(slices) for slices in self.start)
        return round((self.settings.max_fraction * self.total_slices - started) / self.budget)

    def predictions(self, card: ModelCard, volumes: list[Volume]) -> list[dict[str, np.ndarray]]:
        network, window = load_network(card), card_window_settings(card)
        return [predict_volume(network, volume.image, window, torch.device("cpu")) for volume in volumes]

    def pool_scores(self, card: ModelCard) -> list[SliceScores]:
        return [
            score_slices(output["probabilities"], output["attention_probabilities"])
            for output in self.predictions(card, self.pool)
        ]

    def validation_dice(self, card: ModelCard) -> float:
        outputs = self.predictions(card, self.validation)
        return float(
            np.mean(
                [
                    dice(output["probabilities"].argmax(axis=0) == 1, volume.label == 1)
                    for output, volume in zip(outputs, self.validation, strict=True)
                ]
            )
        )

    def fine_tune(self, card: ModelCard, labelled: list[set[int]], seed: int, folder: Path) -> ModelCard:
        cases = [
            Case(
                volume.name,
                volume.image,
                SparseLabels(volume.label, slices).training_target(),
                volume.spacing,
            )
            for volume, slices in zip(self.pool, labelled, strict=True)
        ]
        tuning = FineTuneSettings(
            steps=self.settings.round_steps,
            learning_rate=self.settings.learning_rate,
            batch_size=self.settings.batch_size,
            checkpoint_every=self.settings.round_steps,
            seed=seed,
        )
        return fine_tune(card, cases, folder, tuning, name=card.name, device="cpu").model


def chain_folder(output: Path, strategy: str, repeat: int) -> Path:
    return output / "runs" / f"{strategy}-repeat{repeat}"


def load_state(folder: Path) -> dict[str, Any] | None:
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save_state(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "state.json", state, indent=1)


def round_row(
    study: Study, strategy: str, repeat: int, round_index: int, labelled: list[set[int]], **figures: Any
) -> dict[str, Any]:
    """One round of a chain: where it stands (slices labelled) and ``figures`` (dice,
    mean_p_dsc, stopped_here, seconds)."""
    count = sum(len(slices) for slices in labelled)
    return {
        "strategy": strategy,
        "repeat": repeat,
        "round": round_index,
        "labelled_slices": count,
        "labelled_fraction": count / study.total_slices,
        **figures,
    }


def start_state(study: Study, strategy: str, repeat: int, initial: dict[str, Any]) -> dict[str, Any]:
    row = round_row(
        study,
        strategy,
        repeat,
        0,
        study.start,
        dice=initial["dice"],
        mean_p_dsc=initial["mean_p_dsc"],
        stopped_here=False,
        seconds=0.0,
    )
    return {"labelled": [sorted(slices) for slices in study.start], "rows": [row], "model": None}


def next_labelled(
    study: Study, strategy: str, labelled: list[set[int]], scores: list[SliceScores], rng: np.random.Generator
) -> list[set[int]]:
    if strategy == FULL_ANNOTATION:
        return [set(range(volume.label.shape[2])) for volume in study.pool]
    if strategy == START_SLICES_ONLY:
        return labelled
    chosen = [set(slices) for slices in labelled]
    for query in select_slices(strategy, scores, chosen, study.budget, rng):
        chosen[query.volume].add(query.slice)
    return chosen


def run_chain(study: Study, strategy: str, repeat: int, output: Path, initial: dict[str, Any]) -> None:
    """Every round of one strategy and repeat, continuing from its saved state. Only the last
    round's model is kept."""
    folder = chain_folder(output, strategy, repeat)
    state = load_state(folder) or start_state(study, strategy, repeat, initial)
    seed = 1000 + repeat
    card = ModelCard.load(Path(state["model"])) if state["model"] else study.card
    scores = study.pool_scores(card) if state["model"] else initial["scores"]
    while len(state["rows"]) <= study.rounds():
        round_index = len(state["rows"])
        started = time.monotonic()
        rng = np.random.default_rng((seed, round_index))
        labelled = next_labelled(study, strategy, [set(s) for s in state["labelled"]], scores, rng)
        round_folder = folder / f"round-{round_index}"
        shutil.rmtree(round_folder, ignore_errors=True)  # a round stopped before its state was saved
        card = study.fine_tune(card, labelled, seed + round_index, round_folder)
        # Full annotation suggests nothing, so its pool is not re-scored: no P-DSC, no stop.
        if strategy == FULL_ANNOTATION:
            mean_p_dsc, stopped_here = None, False
        else:
            scores = study.pool_scores(card)
            history = [row["mean_p_dsc"] for row in state["rows"]] + [mean_agreement(scores)]
            mean_p_dsc = history[-1]
            stopped_here = has_converged(history, DEFAULT_SIGMA) and not any(
                row["stopped_here"] for row in state["rows"]
            )
        state["rows"].append(
            round_row(
                study,
                strategy,
                repeat,
                round_index,
                labelled,
                dice=study.validation_dice(card),
                mean_p_dsc=mean_p_dsc,
                stopped_here=stopped_here,
                seconds=time.monotonic() - started,
            )
        )
        state["labelled"] = [sorted(slices) for slices in labelled]
        state["model"] = str(round_folder / "model" / "card.json")
        save_state(folder, state)
        shutil.rmtree(folder / f"round-{round_index - 1}", ignore_errors=True)
        print(f"{strategy} repeat {repeat} round {round_index}: {state['rows'][-1]}", flush=True)


def initial_figures(study: Study, output: Path) -> dict[str, Any]:
    """The starting model's held-out Dice, its pool scores and their mean P-DSC (cached)."""
    scores = study.pool_scores(study.card)
    path = output / "initial.json"
    if path.is_file():
        figures = json.loads(path.read_text())
    else:
        figures = {"dice": study.validation_dice(study.card), "mean_p_dsc": mean_agreement(scores)}
        output.mkdir(parents=True, exist_ok=True)
        write_json(path, figures, indent=1)
    return {**figures, "scores": scores}


# --- report ---------------------------------------------------------------------------------


def read_rows(output: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((output / "runs").glob("*/state.json")):
        rows += json.loads(path.read_text())["rows"]
    return rows


def curve_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per strategy and round: mean, minimum and maximum Dice and labelled fraction over the
    repeats, and how many repeats' stop criterion fired at that round."""
    points = []
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        own = [row for row in rows if row["strategy"] == strategy]
        for round_index in sorted({row["round"] for row in own}):
            at = [row for row in own if row["round"] == round_index]
            values = [row["dice"] for row in at]
            points.append(
                {
                    "strategy": strategy,
                    "round": round_index,
                    "repeats": len(at),
                    "labelled_fraction": float(np.mean([row["labelled_fraction"] for row in at])),
                    "dice": float(np.mean(values)),
                    "dice_min": min(values),
                    "dice_max": max(values),
                    "stops": sum(row["stopped_here"] for row in at),
                }
            )
    return points


def comparisons(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's questions, answered from the curves."""
    by = {(point["strategy"], point["round"]): point for point in points}
    rounds = sorted({point["round"] for point in points if point["round"] > 0})
    full = [by[(FULL_ANNOTATION, r)]["dice"] for r in rounds if (FULL_ANNOTATION, r) in by]
    full_dice = full[-1] if full else None
    answers: dict[str, Any] = {"full_annotation_dice": full_dice, "strategies": {}}
    for strategy in dict.fromkeys(point["strategy"] for point in points):
        if strategy == FULL_ANNOTATION:
            continue
        own = [by[(strategy, r)] for r in rounds if (strategy, r) in by]
        reached = [
            p["labelled_fraction"] for p in own if full_dice is not None and p["dice"] >= full_dice - 0.01
        ]
        answers["strategies"][strategy] = {
            "final_dice": own[-1]["dice"] if own else None,
            "min_fraction_within_1_point_of_full": min(reached) if reached else None,
            "rounds": len(own),
        }
    for strategy, other in COMPARISONS:
        pairs = [
            (by[(strategy, r)], by[(other, r)]) for r in rounds if (strategy, r) in by and (other, r) in by
        ]
        answers[f"{strategy}_minus_{other}"] = [round(100 * (a["dice"] - b["dice"]), 2) for a, b in pairs]
    return answers


def report(output: Path) -> None:
    rows = read_rows(output)
    if not rows:
        raise SystemExit(f"no finished round under {output / 'runs'}")
    points = curve_points(rows)
    write_csv(output / "rows.csv", rows)
    write_csv(output / "curves.csv", points)
    answers = comparisons(points)
    run = json.loads((output / "run.json").read_text())
    summary = {**run, "points": points, "answers": answers}
    write_json(output / "summary.json", summary, indent=1)
    with atomic_path(output / "summary.md") as temporary:
        temporary.write_text(summary_markdown(summary))
    save_active_learning_curves(
        plotted_points(points), answers["full_annotation_dice"], output / "curves.png"
    )
    print(summary_markdown(summary))


def plotted_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The curves as drawn: full annotation and the start-slices control at the budget of their
    round (they label all slices, or none, so their own fractions would put them at 100 % and
    5 %), so that every curve compares at equal fine-tuning steps."""
    budget = {
        point["round"]: point["labelled_fraction"]
        for point in points
        if point["strategy"] not in REFERENCE_CHAINS
    }
    return [
        {
            **point,
            "strategy": REFERENCE_CHAINS.get(point["strategy"], point["strategy"]),
            "labelled_fraction": budget.get(point["round"], point["labelled_fraction"])
            if point["strategy"] in REFERENCE_CHAINS
            else point["labelled_fraction"],
        }
        for point in points
    ]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def repeats_run(points: list[dict[str, Any]]) -> str:
    """How many chains each strategy has started ("2" or "2 to 3"), which may be fewer than the
    setting's ``repeats`` while the study is still running."""
    counts = sorted({point["repeats"] for point in points if point["round"] == 0})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def summary_markdown(summary: dict[str, Any]) -> str:
    settings, answers = summary["settings"], summary["answers"]
    points = summary["points"]
    strategies = list(dict.fromkeys(point["strategy"] for point in points))
    rounds = sorted({point["round"] for point in points})
    by = {(point["strategy"], point["round"]): point for point in points}
    lines = [
        f"LA 2018 active-learning simulation, setting `{summary['setting']}`: starting model "
        f"`{summary['model']}` (trained on the first {STARTING_MODEL_CASES} cases of train.list, held-out "
        f"Dice {100 * summary['initial_dice']:.2f} %); pool of {settings['pool']} further cases "
        f"({summary['pool_slices']} slices at 1.25 mm), {settings['validation']} held-out cases; start "
        f"{100 * settings['start_fraction']:.0f} % of slices at equal intervals, "
        f"{summary['budget']} slices ({100 * settings['budget_fraction']:.0f} %) per round up to "
        f"{100 * settings['max_fraction']:.0f} %, {settings['round_steps']} fine-tuning steps per round "
        f"at rate {settings['learning_rate']}; {repeats_run(points)} repeats (seeds) per strategy. "
        f"{summary['machine_line']}.",
        "",
        "Held-out Dice % per round, mean over repeats [min - max]:",
        "",
        "| strategy | " + " | ".join(f"round {r}" for r in rounds) + " |",
        "|---|" + "---|" * len(rounds),
    ]
    for strategy in strategies:
        cells = []
        for r in rounds:
            point = by.get((strategy, r))
            cells.append(
                "—"
                if point is None
                else f"{100 * point['dice']:.2f} "
                f"[{100 * point['dice_min']:.2f}-{100 * point['dice_max']:.2f}]"
                + (f" stop x{point['stops']}" if point["stops"] else "")
            )
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    queried = [strategy for strategy in strategies if strategy not in REFERENCE_CHAINS]
    fractions = [
        f"{percent(by[(queried[0], r)]['labelled_fraction'])} %"
        for r in rounds
        if queried and (queried[0], r) in by
    ]
    lines += [
        "",
        "Slices labelled per round (non-full strategies): " + ", ".join(fractions) + ".",
        "",
        f"Full annotation, final round: {percent(answers['full_annotation_dice'])} % Dice.",
        "",
        "| strategy | final Dice % | smallest fraction within 1 point of full annotation |",
        "|---|---|---|",
    ]
    for strategy, entry in answers["strategies"].items():
        reached = entry["min_fraction_within_1_point_of_full"]
        lines.append(
            f"| {strategy} | {percent(entry['final_dice'])} | "
            f"{'not reached' if reached is None else percent(reached) + ' %'} |"
        )
    for strategy, other in COMPARISONS:
        difference = answers.get(f"{strategy}_minus_{other}")
        if difference:
            lines.append(f"\n{strategy} minus {other}, Dice points per round: {difference}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="paper")
    parser.add_argument(
        "--model", default="src/asdseg/models/la-attention", help="the starting model's folder"
    )
    parser.add_argument("--strategies", nargs="+", choices=ALL_STRATEGIES, default=LA_STRATEGIES)
    parser.add_argument("--repeats", nargs="+", type=int, help="which repeats (0-based) this process runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, default=Path("benchmark_results/active_learning"))
    parser.add_argument("--report", action="store_true", help="only summarise the chains finished so far")
    args = parser.parse_args()
    if args.report:
        report(args.output)
        return
    root = require_la2018()
    torch.set_num_threads(args.threads)
    settings = SETTINGS[args.setting]
    card = ModelCard.load(Path(args.model) / "card.json")
    names = case_names(root)
    pool_names = names[STARTING_MODEL_CASES : STARTING_MODEL_CASES + settings.pool]
    if set(pool_names) & set(names[-settings.validation :]):
        raise SystemExit("the pool and the held-out cases overlap; lower --pool or --validation.")
    study = Study(
        card,
        [load_volume(root, name, card, settings.margin) for name in pool_names],
        [load_volume(root, name, card, settings.margin) for name in names[-settings.validation :]],
        settings,
    )
    initial = initial_figures(study, args.output)
    run = {
        "setting": args.setting,
        "settings": asdict(settings),
        "model": card.name,
        "initial_dice": initial["dice"],
        "pool_slices": study.total_slices,
        "budget": study.budget,
        "machine_line": machine_line(describe_machine()),
    }
    write_json(args.output / "run.json", run, indent=1)
    for strategy in args.strategies:
        for repeat in args.repeats if args.repeats is not None else range(settings.repeats):
            run_chain(study, strategy, repeat, args.output, initial)
    report(args.output)


if __name__ == "__main__":
    main()
