"""Simulation study of attention-guided active learning on LA 2018.

Every volume of a training pool starts with labels on every ``initial_every``-th axial slice.
An attention 3D U-Net is trained on them; then, round after round, each query strategy picks
``budget`` more slices over the pool, their ground truth is revealed (the simulated annotator)
and the model of that strategy is fine-tuned on everything labelled so far. After each round the
model is scored on held-out volumes, and the mean P-DSC over the pool is recorded for the stop
criterion (change below sigma). A model trained on every slice of the pool, for as many steps
as a strategy's whole chain, gives the full-annotation Dice.

Reported: Dice against the fraction of slices labelled (``rows.csv`` and ``curves.png``), per
strategy the smallest fraction reaching full-annotation Dice minus 1 point and the round where
the stop criterion fired, and the Spearman rank correlation between per-slice P-DSC and the real
per-slice Dice on the held-out volumes (``summary.json``, ``summary.md``).

Volumes are cropped around the left atrium (a margin of ``margin`` voxels, as the UA-MT / SASSNet
preprocessing crops around the label) and downsampled by ``downsample``; slice fractions count
slices of those volumes.

    python benchmarks/active_learning_study.py --setting compact --output benchmark_results/active_learning
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy.stats import spearmanr

from asdseg.active.finetune import FineTuneSettings, fine_tune
from asdseg.active.slice_scores import SliceScores, mean_agreement, score_slices
from asdseg.active.sparse_labels import SparseLabels
from asdseg.active.starter_model import untrained_attention_model
from asdseg.active.stopping import DEFAULT_SIGMA, has_converged
from asdseg.active.strategies import STRATEGIES, select_slices
from asdseg.demo import find_la2018
from asdseg.figures import save_active_learning_curves
from asdseg.image_io import image_to_array, read_image
from asdseg.inference import predict_volume
from asdseg.labels import Label
from asdseg.metrics import dice
from asdseg.model_card import ModelCard
from asdseg.preprocessing import foreground_box, normalize_intensity
from asdseg.registry import load_network
from asdseg.training.data import Case, case_names, downsample_pair

LABELS = [Label(0, "background", (0, 0, 0)), Label(1, "left atrium", (220, 60, 60))]


@dataclass(frozen=True)
class StudySettings:
    downsample: int
    pool: int  #: training volumes (the first of train.list)
    validation: int  #: held-out volumes (the last of train.list)
    initial_every: int  #: label every n-th slice to start with
    budget: int  #: slices queried per round, over the whole pool
    rounds: int
    initial_steps: int
    round_steps: int
    base_filters: int
    patch_size: tuple[int, int, int]
    margin: int = 16  #: voxels around the label kept when cropping (full resolution)
    learning_rate: float = 0.01
    batch_size: int = 2


SETTINGS = {
    # Every 8th slice of the 2x-downsampled volumes is every 16th slice at full resolution.
    "compact": StudySettings(
        downsample=2,
        pool=8,
        validation=4,
        initial_every=8,
        budget=8,
        rounds=5,
        initial_steps=400,
        round_steps=100,
        base_filters=8,
        patch_size=(48, 48, 32),
    ),
    "paper": StudySettings(
        downsample=1,
        pool=60,
        validation=20,
        initial_every=16,
        budget=40,
        rounds=10,
        initial_steps=4000,
        round_steps=1000,
        base_filters=16,
        patch_size=(112, 112, 80),
        batch_size=4,
    ),
    # Checks that the script runs end to end; its numbers mean nothing.
    "smoke": StudySettings(
        downsample=4,
        pool=2,
        validation=1,
        initial_every=4,
        budget=2,
        rounds=2,
        initial_steps=4,
        round_steps=2,
        base_filters=4,
        patch_size=(16, 16, 16),
    ),
}


@dataclass
class Volume:
    name: str
    image: np.ndarray  #: normalised (x, y, z)
    label: np.ndarray  #: int64 (x, y, z)
    spacing: tuple[float, float, float]


def load_volume(root: Path, name: str, settings: StudySettings) -> Volume:
    folder = root / "train" / name
    image, label = read_image(folder / "image.nii.gz"), read_image(folder / "label.nii.gz")
    box = foreground_box(image_to_array(label), settings.margin)
    size = [stop - start for start, stop in zip(box.start, box.stop, strict=True)]
    image = sitk.RegionOfInterest(image, size, list(box.start))
    label = sitk.RegionOfInterest(label, size, list(box.start))
    if settings.downsample > 1:
        image, label = downsample_pair(image, label, settings.downsample)
    array = normalize_intensity(image_to_array(image), "zscore")
    return Volume(name, array, image_to_array(label, np.int64), image.GetSpacing())


def training_cases(volumes: list[Volume], labelled: list[set[int]]) -> list[Case]:
    return [
        Case(volume.name, volume.image, SparseLabels(volume.label, slices).training_target(), volume.spacing)
        for volume, slices in zip(volumes, labelled, strict=True)
    ]


def train(card: ModelCard, cases: list[Case], steps: int, settings: StudySettings, folder: Path) -> ModelCard:
    tuning = FineTuneSettings(
        steps=steps,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        checkpoint_every=steps,
    )
    return fine_tune(card, cases, folder, tuning, name=card.name, device="cpu").model


def predictions(card: ModelCard, volumes: list[Volume]) -> list[dict[str, np.ndarray]]:
    network = load_network(card)
    window = card.window_settings()
    return [predict_volume(network, volume.image, window, torch.device("cpu")) for volume in volumes]


def pool_scores(card: ModelCard, volumes: list[Volume]) -> list[SliceScores]:
    return [
        score_slices(output["probabilities"], output["attention_probabilities"])
        for output in predictions(card, volumes)
    ]


def validation_dice(card: ModelCard, volumes: list[Volume]) -> float:
    return float(
        np.mean(
            [
                dice(output["probabilities"].argmax(axis=0) == 1, volume.label == 1)
                for output, volume in zip(predictions(card, volumes), volumes, strict=True)
            ]
        )
    )


def rank_correlation(card: ModelCard, volumes: list[Volume]) -> dict[str, float]:
    """Spearman correlation between P-DSC and the real Dice of each held-out slice where the
    reference or the prediction holds the atrium."""
    p_dsc, real = [], []
    for output, volume in zip(predictions(card, volumes), volumes, strict=True):
        scores = score_slices(output["probabilities"], output["attention_probabilities"])
        prediction = output["probabilities"].argmax(axis=0) == 1
        for index in range(volume.label.shape[2]):
            reference = volume.label[:, :, index] == 1
            if reference.any() or prediction[:, :, index].any():
                p_dsc.append(scores.p_dsc[index])
                real.append(dice(prediction[:, :, index], reference))
    result = spearmanr(p_dsc, real)
    return {"spearman": float(result.statistic), "p_value": float(result.pvalue), "slices": len(real)}


def run_strategy(
    strategy: str,
    initial: ModelCard,
    pool: list[Volume],
    validation: list[Volume],
    initial_labelled: list[set[int]],
    initial_scores: list[SliceScores],
    settings: StudySettings,
    folder: Path,
    first_row: dict[str, Any],
) -> tuple[list[dict[str, Any]], ModelCard]:
    """The rounds of one strategy. The pool is scored once per model: the scores of a round's
    new model give both its mean P-DSC and the next round's query."""
    total_slices = sum(volume.label.shape[2] for volume in pool)
    labelled = [set(slices) for slices in initial_labelled]
    rng = np.random.default_rng(2024)
    model, scores = initial, initial_scores
    rows, history = [{**first_row, "strategy": strategy}], [first_row["mean_p_dsc"]]
    for round_index in range(1, settings.rounds + 1):
        started = time.monotonic()
        queries = select_slices(strategy, scores, labelled, settings.budget, rng)
        for query in queries:
            labelled[query.volume].add(query.slice)
        model = train(
            model,
            training_cases(pool, labelled),
            settings.round_steps,
            settings,
            folder / f"round-{round_index}",
        )
        scores = pool_scores(model, pool)
        history.append(mean_agreement(scores))
        count = sum(len(slices) for slices in labelled)
        rows.append(
            {
                "strategy": strategy,
                "round": round_index,
                "labelled_slices": count,
                "labelled_fraction": count / total_slices,
                "dice": validation_dice(model, validation),
                "mean_p_dsc": history[-1],
                "stopped_here": has_converged(history, DEFAULT_SIGMA)
                and not any(row["stopped_here"] for row in rows),
                "seconds": time.monotonic() - started,
            }
        )
        print(f"{strategy} round {round_index}: {rows[-1]}", flush=True)
    return rows, model


def first_reaching(rows: list[dict[str, Any]], target: float) -> float | None:
    reached = [row["labelled_fraction"] for row in rows if row["dice"] >= target]
    return min(reached) if reached else None


def summary_markdown(summary: dict[str, Any]) -> str:
    settings = summary["settings"]
    lines = [
        f"LA 2018 active-learning simulation, setting `{summary['setting']}`: {settings['pool']} pool "
        f"volumes, {settings['validation']} held out, cropped around the atrium and downsampled "
        f"{settings['downsample']}x; start: every {settings['initial_every']}th slice; {settings['budget']} "
        f"slices per round, {settings['rounds']} rounds of {settings['round_steps']} fine-tuning steps. "
        f"Wall time {summary['minutes']:.0f} min.",
        "",
        f"Full-annotation Dice: {100 * summary['full_annotation_dice']:.2f} % "
        f"({summary['full_annotation_steps']} steps on every slice).",
        "",
        "| strategy | final Dice % | final slices labelled % | min. fraction reaching full - 1 point "
        "| stop criterion fired at |",
        "|---|---|---|---|---|",
    ]
    for strategy, entry in summary["strategies"].items():
        reached = entry["min_fraction_reaching_full_minus_1"]
        reached = "not reached" if reached is None else f"{100 * reached:.1f} %"
        stopped = entry["stopped_at"]
        stopped = (
            "not within the rounds" if stopped is None else f"round {stopped[0]} ({100 * stopped[1]:.1f} %)"
        )
        lines.append(
            f"| {strategy} | {100 * entry['final_dice']:.2f} | {100 * entry['final_fraction']:.1f} | "
            f"{reached} | {stopped} |"
        )
    for name, correlation in summary["rank_correlation"].items():
        lines.append(
            f"\nSpearman rank correlation between P-DSC and real slice Dice ({name} model, "
            f"{correlation['slices']} held-out slices): {correlation['spearman']:.3f} "
            f"(p = {correlation['p_value']:.1e})."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="compact")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument("--rounds", type=int, help="overrides the setting's number of rounds")
    parser.add_argument("--output", default="benchmark_results/active_learning")
    args = parser.parse_args()
    root = find_la2018()
    if root is None:
        raise SystemExit("LA 2018 data not found at ../shared/data/la2018 (or $ASDSEG_LA2018).")
    settings = SETTINGS[args.setting]
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    output = Path(args.output)
    started = time.monotonic()
    names = case_names(root)
    pool = [load_volume(root, name, settings) for name in names[: settings.pool]]
    validation = [load_volume(root, name, settings) for name in names[-settings.validation :]]
    initial_labelled = [
        set(range(settings.initial_every // 2, volume.label.shape[2], settings.initial_every))
        for volume in pool
    ]
    untrained = untrained_attention_model(
        LABELS,
        pool[0].spacing,
        output / "untrained",
        "la-attention-study",
        settings.patch_size,
        settings.base_filters,
    )
    initial = train(
        untrained,
        training_cases(pool, initial_labelled),
        settings.initial_steps,
        settings,
        output / "initial",
    )
    count = sum(len(slices) for slices in initial_labelled)
    initial_scores = pool_scores(initial, pool)
    first_row = {
        "round": 0,
        "labelled_slices": count,
        "labelled_fraction": count / sum(volume.label.shape[2] for volume in pool),
        "dice": validation_dice(initial, validation),
        "mean_p_dsc": mean_agreement(initial_scores),
        "stopped_here": False,
        "seconds": time.monotonic() - started,
    }
    print(f"initial model: {first_row}", flush=True)
    full_steps = settings.initial_steps + settings.rounds * settings.round_steps
    everything = [set(range(volume.label.shape[2])) for volume in pool]
    full = train(
        untrained, training_cases(pool, everything), full_steps, settings, output / "full-annotation"
    )
    full_dice = validation_dice(full, validation)
    print(f"full annotation: Dice {full_dice:.4f}", flush=True)

    rows, strategies, final_models = [], {}, {}
    for strategy in args.strategies:
        own, final_models[strategy] = run_strategy(
            strategy,
            initial,
            pool,
            validation,
            initial_labelled,
            initial_scores,
            settings,
            output / strategy,
            first_row,
        )
        rows += own
        stops = [row for row in own if row["stopped_here"]]
        strategies[strategy] = {
            "final_dice": own[-1]["dice"],
            "final_fraction": own[-1]["labelled_fraction"],
            "min_fraction_reaching_full_minus_1": first_reaching(own, full_dice - 0.01),
            "stopped_at": (stops[0]["round"], stops[0]["labelled_fraction"]) if stops else None,
        }
        write_outputs(output, rows, full_dice)
    correlations = {"initial": rank_correlation(initial, validation)}
    if "p-dsc" in final_models:
        correlations["final p-dsc"] = rank_correlation(final_models["p-dsc"], validation)
    summary = {
        "setting": args.setting,
        "settings": {key: value for key, value in vars(settings).items()},
        "minutes": (time.monotonic() - started) / 60,
        "full_annotation_dice": full_dice,
        "full_annotation_steps": full_steps,
        "strategies": strategies,
        "rank_correlation": correlations,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "summary.md").write_text(summary_markdown(summary))
    print(summary_markdown(summary))


def write_outputs(output: Path, rows: list[dict[str, Any]], full_dice: float) -> None:
    output.mkdir(parents=True, exist_ok=True)
    with (output / "rows.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    save_active_learning_curves(rows, full_dice, output / "curves.png")


if __name__ == "__main__":
    main()
