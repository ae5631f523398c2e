"""Turn a finished training run into a model to ship.

The trainer saves a working model with a minimal card. A release does more. It rebuilds the
exported network (with its confidence network, where the recipe has one) from the run's final
checkpoint. It stores the weights as float16, to keep the file small enough for git. It
evaluates the exact shipped weights on the run's held-out cases at their original resolution
and writes the figures into a full card. The card also records the data split by case name, so
that anyone can check which cases a model has seen.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from asdseg.errors import InputError
from asdseg.evaluation.evaluate_predictions import COLUMNS, write_csv
from asdseg.evaluation.figures import save_reliability_diagram
from asdseg.evaluation.model_evaluation import (
    CONFIDENCE_MAP,
    POST_PROCESSING,
    ModelEvaluation,
    evaluate_model,
    reference_cases,
)
from asdseg.io.json_files import write_json
from asdseg.io.labels import Label
from asdseg.progress import ProgressCallback
from asdseg.registry import half_precision_state, save_model
from asdseg.registry.model_card import CARD_FILE, ModelCard, check_model_name
from asdseg.training.checkpoint import load_checkpoint
from asdseg.training.config import TrainingConfig, config_from_dict
from asdseg.training.data import split_names
from asdseg.training.recipes import RECIPE_CLASSES
from asdseg.training.trainer import CHECKPOINT_FILE

METRIC_COLUMNS = ("dice", "jaccard", "hd95_voxels", "asd_voxels", "hd95_mm", "asd_mm")


@dataclass
class FinishedRun:
    config: TrainingConfig
    steps: int
    #: The network the model ships, in eval mode, with the run's float32 weights.
    network: nn.Module
    #: The card's ``architecture`` entry that rebuilds ``network``.
    architecture: dict[str, Any]
    #: What the recipe says about its choices (the card's ``training.notes``).
    notes: str
    #: The released model the run started from (``Trainer.started_from``), if any.
    started_from: dict[str, Any] | None = None
    #: Minutes the run trained (None for a checkpoint written before runs measured them).
    training_minutes: float | None = None
    #: The autocast precision it trained in and the machine it trained on, where the checkpoint
    #: recorded them.
    precision: str | None = None
    machine: dict[str, Any] | None = None


def load_finished_run(run_dir: str | Path) -> FinishedRun:
    """The exported network of the run in ``run_dir``, from its last checkpoint; a run that has
    not reached its last step is refused."""
    state = load_checkpoint(
        Path(run_dir) / CHECKPOINT_FILE, "train the run to its last step before releasing it."
    )
    config = config_from_dict(state["config"])
    if state["step"] < config.steps:
        raise InputError(
            f"{run_dir}: the run stopped at step {state['step']} of {config.steps}; finish it with "
            "'asdseg train --resume' before releasing it."
        )
    recipe = RECIPE_CLASSES[config.recipe](config, torch.device("cpu"))
    recipe.load_state_dict(state["recipe"])
    network = recipe.export_network().eval()
    return FinishedRun(
        config,
        int(state["step"]),
        network,
        recipe.export_architecture(),
        recipe.card_notes(),
        state.get("started_from"),
        round(state["training_seconds"] / 60, 1) if "training_seconds" in state else None,
        state.get("precision"),
        state.get("machine"),
    )


def as_shipped(network: nn.Module) -> nn.Module:
    """A copy of ``network`` holding what loading its float16 weights file gives, so that the
    figures in the card are those of the shipped weights."""
    shipped = copy.deepcopy(network)
    shipped.load_state_dict(half_precision_state(network))
    return shipped.eval()


def validation_metrics(evaluation: ModelEvaluation, label_value: int) -> dict[str, Any]:
    """The card's ``metrics.validation`` entry: per post-processing, the mean of each metric
    over the cases (Dice and Jaccard as fractions, distances in voxels and in mm)."""
    means = evaluation.means()
    entry: dict[str, Any] = {"cases": int(means["raw"][label_value]["cases"])}
    for kind, by_label in means.items():
        entry[kind] = {column: round(by_label[label_value][column], 4) for column in METRIC_COLUMNS}
        entry[kind]["cases_with_empty_mask"] = int(by_label[label_value]["cases_with_empty_mask"])
    return entry


def calibration_metrics(evaluation: ModelEvaluation) -> dict[str, dict[str, dict[str, object]]]:
    """The card's ``metrics.calibration`` entry: ECE, voxels, accuracy and mean confidence per
    map and region, without the per-bin figures (the release writes those beside the card)."""
    return {
        name: {
            region: {key: value for key, value in summary.items() if not key.startswith("bin_")}
            for region, summary in regions.items()
        }
        for name, regions in evaluation.calibration_summary().items()
    }


#: Above this expected calibration error the card warns that the confidence map is relative.
CALIBRATED_ECE = 0.05


def write_release(
    run: FinishedRun, data: dict[str, Any], shipped: ModelEvaluation, folder: Path
) -> ModelCard:
    """The run's network as float16 weights with the card ``data``, and the validation files
    (:func:`write_validation_files`), into ``folder``."""
    card = save_model(run.network, data, folder, half_precision=True)
    write_validation_files(data, shipped, folder)
    return card


def write_validation_files(data: dict[str, Any], shipped: ModelEvaluation, folder: Path) -> None:
    """``validation.csv`` (per case and organ), ``calibration.json`` and ``calibration.png``
    of the evaluation ``shipped`` of the model whose card ``data`` lives in ``folder``."""
    rows = [{"post_processing": kind, **row} for kind, kind_rows in shipped.rows.items() for row in kind_rows]
    write_csv(rows, folder / "validation.csv", ("post_processing", *COLUMNS))
    write_json(folder / "calibration.json", shipped.calibration_summary())
    curves = {
        f"{name}, {region}, error AUROC {shipped.error_detection[name][region].auroc():.2f}": bins
        for name, regions in shipped.calibration.items()
        for region, bins in regions.items()
    }
    cases = data["metrics"]["validation"]["cases"]
    save_reliability_diagram(
        curves, folder / "calibration.png", f"{data['name']}: reliability on {cases} validation cases"
    )


def confidence_caveat(shipped: ModelEvaluation) -> str:
    """A sentence for the card's description when the confidence map is far from calibrated,
    so that a reader of the model list knows to read it as relative."""
    if CONFIDENCE_MAP not in shipped.calibration:
        return ""
    summary = shipped.calibration[CONFIDENCE_MAP]["all voxels"].summary()
    if summary["ece"] <= CALIBRATED_ECE:
        return ""
    mean, accuracy, ece = summary["mean_confidence"], summary["accuracy"], summary["ece"]
    return (
        f" Its confidence map is not calibrated (on the validation cases: mean {mean:.2f} where "
        f"{100 * accuracy:.0f} % of voxels are right, ECE {100 * ece:.0f} %): read it as relative, "
        "lower = less sure."
    )


def organ_metrics(evaluation: ModelEvaluation, labels: list[Label]) -> dict[str, Any]:
    """The card's ``metrics.validation``: :func:`validation_metrics` for a one-organ model; for
    several organs, each organ's under ``organs`` (by name) and the mean Dice and Jaccard over
    the organs at the top, which the model list shows."""
    if len(labels) == 1:
        return validation_metrics(evaluation, labels[0].value)
    organs = {label.name: validation_metrics(evaluation, label.value) for label in labels}
    first = organs[labels[0].name]
    entry: dict[str, Any] = {"cases": first["cases"]}
    for kind in POST_PROCESSING:
        entry[kind] = {
            column: round(float(np.mean([organ[kind][column] for organ in organs.values()])), 4)
            for column in ("dice", "jaccard")
        }
    return {**entry, "organs": organs}


def release_run(
    run_dir: str | Path,
    name: str,
    output_dir: str | Path,
    version: str = "1.0",
    progress: ProgressCallback | None = None,
) -> ModelCard:
    """A finished run on a data folder as a model in ``output_dir/name``: its card (the
    trainer's, with the data's licence and provenance) gets the float16 weights' figures on the
    run's validation cases at their stored resolution, per organ. Nothing is in place until all
    of it is written: the model is assembled in a hidden folder beside it and renamed."""
    check_model_name(name)
    folder = Path(output_dir) / name
    if folder.exists():
        raise InputError(f"{folder} already exists; choose another --name or remove that model first.")
    run = load_finished_run(run_dir)
    if run.config.data.root is None:
        raise InputError(f"{run_dir}: trained on synthetic phantoms; a release needs a run on a data folder.")
    names = split_names(run.config.data)
    if not names["validation"]:
        raise InputError(
            f"{run_dir}: the run held out no validation case, so the model cannot be judged; train "
            "again with --validation N (or a splits file with validation cases)."
        )
    base = ModelCard.load(Path(run_dir) / "model" / CARD_FILE).data
    card = ModelCard({**base, "name": name, "version": version}, folder)
    cases = reference_cases(Path(run.config.data.root), names["validation"])
    shipped = evaluate_model(card, as_shipped(run.network), cases, progress=progress)
    data = card.data
    data["metrics"] = {
        "validation": organ_metrics(shipped, card.foreground_labels),
        "calibration": calibration_metrics(shipped),
    }
    data["description"] += confidence_caveat(shipped)
    assembly = folder.with_name(f".{name}.release")
    shutil.rmtree(assembly, ignore_errors=True)
    try:
        write_release(run, data, shipped, assembly)
        assembly.rename(folder)
    finally:
        shutil.rmtree(assembly, ignore_errors=True)
    return ModelCard.load(folder / CARD_FILE)
