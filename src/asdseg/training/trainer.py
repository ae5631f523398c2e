"""The training loop: sampling, the recipe's updates, validation, logs, curves, checkpoints.

Everything a run needs to continue is in ``checkpoint.pt`` (networks, optimisers, step, random
generators, log rows, training time), written atomically every ``checkpoint_every`` steps, so
``--resume`` continues exactly where the last checkpoint left off. ``log.csv`` and
``curves.png`` are rewritten from the log rows at each checkpoint and at the end; the trained
segmenter is saved as an installable model (``model/card.json`` + weights) when the run
completes.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asdseg.devices import auto_training_precision, autocast, select_device
from asdseg.errors import InputError, NumericalError
from asdseg.evaluation.figures import save_training_curves
from asdseg.evaluation.metrics import dice
from asdseg.inference.sliding_window import WindowSettings, predict_volume
from asdseg.io.atomic_write import atomic_path
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.networks import architecture_outputs
from asdseg.registry import find_model, load_network, save_model
from asdseg.registry.model_card import ModelCard
from asdseg.training.batchnorm_statistics import reestimate_batchnorm_statistics
from asdseg.training.checkpoint import load_checkpoint, save_checkpoint
from asdseg.training.config import TrainingConfig
from asdseg.training.data import Case, CaseSplit, PatchSampler, load_split
from asdseg.training.dataset_training import dataset_card
from asdseg.training.distributed import check_replicas_agree, device_for, init_distributed
from asdseg.training.recipes import RECIPE_CLASSES
from asdseg.training.recipes.base import Recipe
from asdseg.training.weight_averaging import FinalWeightAverage

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainingResult:
    output_dir: Path
    history: list[dict[str, float]]
    model: ModelCard | None
    #: True when ``should_stop`` ended the run before its last step.
    stopped: bool = False


def learning_rate(config: TrainingConfig, step: int) -> float:
    return config.learning_rate * config.lr_decay_factor ** (step // config.lr_decay_every)


def validation_dice(
    network: torch.nn.Module,
    cases: list[Case],
    patch_size: tuple[int, int, int],
    num_classes: int,
    device,
    layout: torch.memory_format,
) -> float:
    """Mean Dice over the validation cases and foreground classes, by sliding-window inference;
    the network is handed back in the run's memory ``layout`` (inference may change it), so that
    a resumed run trains exactly as an uninterrupted one."""
    settings = WindowSettings(tuple(patch_size), overlap=0.5)
    network.eval()
    scores = []
    for case in cases:
        prediction = predict_volume(network, case.image, settings, device)["probabilities"].argmax(axis=0)
        scores += [dice(prediction == value, case.label == value) for value in range(1, num_classes)]
    network.to(memory_format=layout).train()
    return float(np.mean(scores)) if scores else float("nan")


def starting_model_entry(card: ModelCard) -> dict[str, Any]:
    """What a model card says of the released model its run started from. Kept in the
    checkpoint, so that a resumed run still knows it after that model is gone, and in the new
    card: its weights went through both trainings (``steps`` there counts this run's only), and
    through the trainings that model started from, if it did."""
    training = card.data["training"]
    kept = ("steps", "training_minutes", "config", "started_from")
    return {
        "name": card.name,
        "version": card.data["version"],
        "weights_sha256": card.weights_sha256,
        **{key: training[key] for key in kept if key in training},
    }


class Trainer:
    """Runs ``config`` into ``output_dir``; ``resume`` continues from its checkpoint.

    ``split`` replaces the cases the config's data section describes (fine-tuning brings its
    own sparsely labelled volumes) and ``base_card`` is the card the saved model's card starts
    from (labels, preprocessing and inference settings of the model being fine-tuned).
    """

    def __init__(
        self,
        config: TrainingConfig,
        output_dir: str | Path,
        device: str = "auto",
        split: CaseSplit | None = None,
        base_card: dict[str, Any] | None = None,
    ) -> None:
        config.check()
        self.base_card = base_card
        self.config = config
        self.output_dir = Path(output_dir)
        self.context = init_distributed()
        self.device = device_for(self.context, device) or select_device(device)
        #: The autocast precision this run computes in ("auto" resolved for this device).
        self.precision = (
            auto_training_precision(self.device) if config.precision == "auto" else config.precision
        )
        torch.manual_seed(config.seed)
        #: Each process draws its own patches.
        self.rng = np.random.default_rng([config.seed, self.context.rank])
        num_classes = config.network.get("params", {}).get("num_classes")
        self.split: CaseSplit = split if split is not None else load_split(config.data, num_classes)
        self.sampler = PatchSampler(
            config.patch_size, config.foreground_probability, config.augment, self.rng
        )
        self.recipe: Recipe = RECIPE_CLASSES[config.recipe](config, self.device)
        if config.channels_last:
            for network in self.recipe.networks.values():
                network.to(memory_format=self.memory_format)
        if self.context.enabled:
            self.recipe.distribute()
        self.weight_average = (
            None
            if config.average_weights_after is None
            else FinalWeightAverage(self.recipe.export_network(), config.average_weights_after)
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        #: The released model this run started from (:func:`starting_model_entry`), if any.
        self.started_from: dict[str, Any] | None = None
        #: Seconds spent in :meth:`run` before the current call (earlier calls and resumed runs).
        self.earlier_seconds = 0.0
        self.run_started: float | None = None
        self.checkpointed_seconds = 0.0

    def start_from(self, card: ModelCard) -> None:
        """Load a released model's weights into the networks this run exports (the segmenter, and
        the confidence network where the recipe ships one); the rest start as the recipe builds
        them."""
        exported = self.recipe.export_architecture()
        if card.data["architecture"] != exported:
            raise InputError(
                f"model {card.name!r} is a {card.data['architecture']['name']} with parameters "
                f"{card.data['architecture'].get('params', {})}; this {self.config.recipe} run trains a "
                f"{exported['name']} with {exported.get('params', {})}. Start from a model of the same "
                "architecture, or set the run's network to the model's."
            )
        self.recipe.export_network().load_state_dict(load_network(card).state_dict())
        self.started_from = starting_model_entry(card)

    # State ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "recipe": self.recipe.state_dict(),
            "recipe_settings": self.recipe.settings,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "history": self.history,
            "started_from": self.started_from,
            "training_seconds": self.training_seconds(),
            "machine": describe_machine(),
            "precision": self.precision,
            **({"weight_average": self.weight_average.state_dict()} if self.weight_average else {}),
        }

    def resume(self) -> None:
        state = load_checkpoint(self.output_dir / CHECKPOINT_FILE)
        if state["config"]["recipe"] != self.config.recipe:
            raise InputError(
                f"{self.output_dir}: the checkpoint is from recipe {state['config']['recipe']!r}, not "
                f"{self.config.recipe!r}; use another output folder."
            )
        self.check_resumed_settings(state.get("recipe_settings"))
        self.recipe.load_state_dict(state["recipe"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        if self.context.enabled:  # the checkpoint holds rank 0's stream; the others start afresh
            self.rng = np.random.default_rng([self.config.seed, self.context.rank, self.step])
            self.sampler.rng = self.rng
        self.history = list(state["history"])
        if self.weight_average is not None and "weight_average" in state:
            self.weight_average.load_state_dict(state["weight_average"])
        self.started_from = state.get("started_from")
        self.earlier_seconds = self.checkpointed_seconds = float(state.get("training_seconds", 0.0))

    def check_resumed_settings(self, saved: dict[str, Any] | None) -> None:
        """Refuse to continue a checkpoint under other loss settings than it was trained with: a
        changed default (DAN's confidence target) or an edited ``loss`` would switch the run's
        losses halfway, unseen. Settings added since the checkpoint, and checkpoints from before
        settings were recorded, are not checked."""
        if saved is None:
            return
        current = self.recipe.settings
        changed = sorted(key for key in saved if saved[key] != current.get(key))
        if changed:
            was = ", ".join(f"{key}={saved[key]!r}" for key in changed)
            now = ", ".join(f"{key}={current.get(key)!r}" for key in changed)
            raise InputError(
                f"{self.output_dir}: the checkpoint was trained with {was}, but this run's settings give "
                f"{now}. Set them in the config's loss section as the checkpoint had them to continue it, "
                "or use another output folder."
            )

    def training_seconds(self) -> float:
        """Wall-clock seconds this run has trained, validation included, across resumptions; the
        card reports them, so a run's cost is measured rather than read off a progress bar."""
        running = 0.0 if self.run_started is None else time.monotonic() - self.run_started
        return self.earlier_seconds + running

    def write_logs(self) -> None:
        """``log.csv`` and ``curves.png`` from the log rows, both atomically."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(key for row in self.history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_path(self.output_dir / "log.csv") as temporary:
            temporary.write_text(buffer.getvalue(), encoding="utf-8")
        if self.history:
            save_training_curves(self.history, self.output_dir / "curves.png")

    def checkpoint(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state = self.state()
        save_checkpoint(self.output_dir / CHECKPOINT_FILE, state)
        #: The card reports the time the checkpoint holds, so that a release from the checkpoint
        #: reports the same.
        self.checkpointed_seconds = state["training_seconds"]
        self.write_logs()

    # Loop -------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        started = time.perf_counter()
        config = self.config
        rate = learning_rate(config, self.step)
        self.recipe.set_learning_rate(rate)
        images, labels = self.sampler.batch(self.split.labelled, config.labelled_per_batch)
        unlabelled = None
        if self.recipe.semi_supervised:
            unlabelled_count = config.batch_size - config.labelled_per_batch
            pool = self.split.unlabelled or self.split.labelled
            unlabelled = self.sampler.batch([case.without_label() for case in pool], unlabelled_count)[0]
            unlabelled = self.to_device(unlabelled)
        with autocast(self.device, self.precision):
            losses = self.recipe.training_step(
                self.to_device(images), labels.to(self.device), unlabelled, self.step
            )
        if not all(math.isfinite(value) for value in losses.values()):
            raise NumericalError(
                f"training diverged at step {self.step + 1} (loss {losses}); nothing of this step was "
                f"saved. Lower the learning rate (now {rate:g}) and start again."
            )
        self.step += 1
        if self.weight_average is not None:
            self.weight_average.update(self.recipe.export_network(), self.step)
        # The step's own time (patches, forward, backward, update), without validation: what a
        # plan's step time (asdseg plan) predicts.
        row = {"step": self.step, "learning_rate": rate, **losses}
        row["step_seconds"] = time.perf_counter() - started
        validate = self.step % config.validate_every == 0 or self.step == config.steps
        if self.context.is_main and self.split.validation and validate:
            row["validation_dice"] = validation_dice(
                self.recipe.networks["segmenter"],
                self.split.validation,
                config.patch_size,
                self.recipe.num_classes,
                self.device,
                self.memory_format,
            )
        self.history.append(row)
        if self.context.is_main and (self.step % config.checkpoint_every == 0 or self.step == config.steps):
            self.checkpoint()
        return row

    @property
    def memory_format(self) -> torch.memory_format:
        """The networks' and batches' memory layout (``config.channels_last``)."""
        return torch.channels_last_3d if self.config.channels_last else torch.contiguous_format

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images on the training device, in the networks' memory layout."""
        return images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def run(
        self,
        until: int | None = None,
        show_progress: bool = True,
        on_step: Callable[[dict[str, float]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainingResult:
        """Train to step ``until`` (default: the config's last step). ``on_step`` sees each
        step's log row; ``should_stop`` is asked before each step and ends the run early, without
        a model, keeping the last checkpoint."""
        until = self.config.steps if until is None else min(until, self.config.steps)
        if self.step == 0 and (self.output_dir / CHECKPOINT_FILE).exists():
            raise InputError(
                f"{self.output_dir} already holds a run's checkpoint; continue it with --resume or "
                "choose another output folder (nothing was overwritten)."
            )
        if self.step == 0 and self.config.init_from is not None and self.started_from is None:
            # A fresh run only: a resumed one takes its weights from the checkpoint, and its
            # starting model may have been uninstalled since.
            self.start_from(find_model(self.config.init_from))
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.output_dir / "config.json", self.config.to_dict())
        self.run_started = time.monotonic()
        bar = None
        if show_progress and self.context.is_main:
            from tqdm import tqdm

            bar = tqdm(total=until, initial=self.step, desc=f"training {self.config.recipe}", unit="step")
        stopped = False
        while self.step < until:
            if should_stop is not None and should_stop():
                stopped = True
                break
            row = self.train_step()
            if on_step is not None:
                on_step(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
        if bar is not None:
            bar.close()
        if self.context.enabled:
            check_replicas_agree(self.recipe.networks["segmenter"])
        self.earlier_seconds, self.run_started = self.training_seconds(), None
        finished = self.step >= self.config.steps
        model = self.save_model() if finished and self.context.is_main else None
        return TrainingResult(self.output_dir, self.history, model, stopped)

    def save_model(self) -> ModelCard:
        validated = [row["validation_dice"] for row in self.history if "validation_dice" in row]
        config = self.config
        architecture = self.recipe.export_architecture()
        card = {
            "name": f"{config.recipe}-trained",
            "version": "1",
            "description": f"Trained with asdseg train --recipe {config.recipe}.",
            "task": "left-atrium" if config.data.root else "phantom",
            "modality": "as the training data",
            "architecture": architecture,
            "outputs": architecture_outputs(architecture),
            "labels": config.labels,
            "preprocessing": {
                "spacing": list(self.split.spacing),
                "normalization": config.data.normalization,
                **({"intensity": config.data.intensity} if config.data.intensity is not None else {}),
            },
            "inference": {"patch_size": list(config.patch_size), "overlap": 0.5, "blend": "gaussian"},
            "training": {
                "data": config.data.root or "synthetic phantoms",
                "protocol": f"{config.data.labelled} labelled cases, recipe {config.recipe}",
                "recipe": config.recipe,
                "steps": self.step,
                "training_minutes": round(self.checkpointed_seconds / 60, 1),
                "hardware": f"{self.context.world_size} x {self.device}",
                "machine": machine_line(),
                "precision": self.precision,
                "notes": self.recipe.card_notes(),
                **({"started_from": self.started_from} if self.started_from else {}),
            },
            "metrics": {"validation_dice": validated[-1]} if validated else {},
            "license": "as the training data",
            "weights": {"file": "model.pt", "sha256": "0" * 64},
        }
        card = dataset_card(card, config.recipe, config.data)
        if self.base_card is not None:
            kept = {key: card[key] for key in ("architecture", "metrics", "weights")}
            training = {
                **card["training"],
                **self.base_card.get("training", {}),
                **{key: card["training"][key] for key in ("steps", "training_minutes")},
            }
            card = {**self.base_card, **kept, "training": training}
        network = self.recipe.export_network()
        if self.weight_average is not None:
            self.weight_average.apply(network)
        if config.batchnorm_statistics_batches:
            reestimate_batchnorm_statistics(
                network,
                self.split.labelled + self.split.unlabelled,
                config.patch_size,
                config.batchnorm_statistics_batches,
                config.batch_size,
                self.device,
                config.seed,
                self.precision,
            )
        return save_model(network, card, self.output_dir / "model")
