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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asdseg.errors import InputError
from asdseg.model_evaluation import ModelEvaluation
from asdseg.registry import half_precision_state
from asdseg.training.checkpoint import load_checkpoint
from asdseg.training.config import TrainingConfig, config_from_dict
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


def load_finished_run(run_dir: str | Path) -> FinishedRun:
    """The exported network of the run in ``run_dir``, from its last checkpoint; a run that has
    not reached its last step is refused."""
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
    config = config_from_dict(state["config"])
    if state["step"] < config.steps:
        raise InputError(
            f"{run_dir}: the run stopped at step {state['step']} of {config.steps}; finish it with "
            "'asdseg train --resume' before releasing it."
        )
    recipe = RECIPE_CLASSES[config.recipe](config, torch.device("cpu"))
    recipe.load_state_dict(state["recipe"])
    network = recipe.export_network().eval()
    return FinishedRun(config, int(state["step"]), network, recipe.export_architecture(), recipe.card_notes())


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
