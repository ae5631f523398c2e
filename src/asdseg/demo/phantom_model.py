"""The phantom model the demo runs where the LA 2018 data is not found.

It is a small VNet with an SDM head, trained on the CPU on synthetic phantoms
(:mod:`asdseg.phantoms`) and installed as the user model ``phantom-demo``. It shows the whole
pipeline working with real weights; it knows nothing about anatomy.

Training runs in rounds and stops once the model segments both structures well on held-out
phantoms, so that it is good on any CPU: the same steps give different weights on different CPU
kernels (AVX2 or AVX-512), and a fixed number of steps that was enough on one machine was not on
another. Each round ends at a tenth of the learning rate, so the weights it is judged by have
settled. A model that misses the bar after the last round is installed all the same, and its
card and the demo say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asdseg.evaluation.metrics import dice
from asdseg.inference.sliding_window import WindowSettings, predict_volume
from asdseg.networks import build_network
from asdseg.phantoms import ELLIPSOID, SPHERE, make_phantom
from asdseg.preprocessing.transforms import normalize_intensity
from asdseg.registry import save_model, user_models_dir
from asdseg.registry.model_card import ModelCard
from asdseg.training.losses import dice_ce_loss, signed_distance_target

NAME = "phantom-demo"
PATCH = 32
#: Both structures must reach this Dice (mean over the held-out phantoms) to end training.
TARGET_DICE = 0.95
ROUND_STEPS = 120
MAX_ROUNDS = 6
LEARNING_RATE = 3e-3
#: Held-out phantoms the model is judged on (training draws seeds of 1000 and above).
VALIDATION_SEEDS = (101, 102, 103)

CARD = {
    "name": NAME,
    "version": "2",
    "description": "Demo model for synthetic phantoms (ellipsoid + sphere); not for clinical images.",
    "task": "phantom",
    "modality": "synthetic MRI-like phantom (asdseg.phantoms), 1 mm isotropic",
    "architecture": {
        "name": "vnet",
        "params": {"num_classes": 3, "base_filters": 8, "dropout": 0.0, "sdm_head": True},
    },
    "outputs": {"sdm": True, "confidence": False},
    "labels": [
        {"value": 0, "name": "background", "color": [0, 0, 0]},
        {"value": 1, "name": "ellipsoid", "color": [230, 159, 0]},
        {"value": 2, "name": "sphere", "color": [86, 180, 233]},
    ],
    "preprocessing": {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore"},
    "inference": {"patch_size": [PATCH, PATCH, PATCH], "overlap": 0.5, "blend": "gaussian"},
    "training": {
        "data": "synthetic phantoms generated on the fly (asdseg.phantoms, seeds 1000+)",
        "protocol": (
            f"supervised Dice+CE plus SDM MSE on random 32^3 crops, Adam; rounds of {ROUND_STEPS} steps "
            f"(the last quarter at a tenth of the learning rate) until both structures reach Dice "
            f"{TARGET_DICE} on held-out phantoms, at most {MAX_ROUNDS} rounds"
        ),
        "recipe": "demo",
        "hardware": "CPU",
    },
    "metrics": {},
    "license": "Apache-2.0 (synthetic data)",
    "weights": {"file": "model.pt", "sha256": "0" * 64},
}


def _training_batch(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, ...]:
    images, labels, sdms = [], [], []
    for _ in range(batch):
        phantom = make_phantom(seed=int(rng.integers(1000, 10**6)))
        start = [int(rng.integers(0, s - PATCH + 1)) for s in phantom.image.shape]
        crop = tuple(slice(a, a + PATCH) for a in start)
        label = phantom.label[crop]
        images.append(normalize_intensity(phantom.image, "zscore")[crop])
        labels.append(label)
        sdms.append(np.stack([signed_distance_target(label == value) for value in (ELLIPSOID, SPHERE)]))
    return (
        torch.from_numpy(np.stack(images))[:, None],
        torch.from_numpy(np.stack(labels)).long(),
        torch.from_numpy(np.stack(sdms)),
    )


def held_out_dice(network: torch.nn.Module) -> dict[str, float]:
    """Per structure, the mean Dice of ``network`` (in eval mode) over the held-out phantoms,
    segmented whole with the card's sliding windows."""
    settings = WindowSettings((PATCH, PATCH, PATCH), overlap=CARD["inference"]["overlap"])
    scores: dict[str, list[float]] = {label["name"]: [] for label in CARD["labels"][1:]}
    with torch.inference_mode():
        for seed in VALIDATION_SEEDS:
            phantom = make_phantom(seed=seed)
            volume = normalize_intensity(phantom.image, "zscore")
            prediction = predict_volume(network, volume, settings, torch.device("cpu"))["probabilities"]
            prediction = prediction.argmax(axis=0)
            for label in CARD["labels"][1:]:
                value = label["value"]
                scores[label["name"]].append(dice(prediction == value, phantom.label == value))
    return {name: float(np.mean(values)) for name, values in scores.items()}


@dataclass(frozen=True)
class DemoTraining:
    """A trained phantom network, how many steps it took and its held-out Dice per structure."""

    network: torch.nn.Module
    steps: int
    dice: dict[str, float]

    @property
    def good(self) -> bool:
        return min(self.dice.values()) >= TARGET_DICE

    def card(self) -> dict:
        """The model card, with the held-out Dice and, for a model that missed the bar, a
        description that says so."""
        verdict = "" if self.good else f" Below the target Dice {TARGET_DICE} on held-out phantoms."
        metrics = {
            "phantom_validation": {
                "dice": self.dice,
                "phantoms": len(VALIDATION_SEEDS),
                "steps": self.steps,
                "target_dice": TARGET_DICE,
            }
        }
        return {**CARD, "description": CARD["description"] + verdict, "metrics": metrics}


def validation_summary(card: ModelCard) -> str:
    """One line on how well the phantom model segments the held-out phantoms."""
    validation = card.data["metrics"]["phantom_validation"]
    scores = ", ".join(f"{name} {value:.3f}" for name, value in validation["dice"].items())
    line = f"Phantom model: held-out Dice {scores} after {validation['steps']} training steps"
    if min(validation["dice"].values()) < validation["target_dice"]:
        line += f"; below the target {validation['target_dice']}, so expect a poor segmentation"
    return line


def _train_round(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    first_step: int,
    progress: Callable[[int, int, float], None] | None,
) -> None:
    """``ROUND_STEPS`` steps, the last quarter of them at a tenth of the learning rate."""
    network.train()
    for step in range(ROUND_STEPS):
        settling = step >= ROUND_STEPS * 3 // 4
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE / 10 if settling else LEARNING_RATE
        image, label, sdm = _training_batch(rng, batch=2)
        outputs = network(image)
        loss = dice_ce_loss(outputs["logits"], label) + F.mse_loss(outputs["sdm"], sdm)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(first_step + step + 1, ROUND_STEPS * MAX_ROUNDS, float(loss.detach()))
    network.eval()


def train_demo_model(
    seed: int = 0, progress: Callable[[int, int, float], None] | None = None
) -> DemoTraining:
    """Train the phantom VNet in rounds until both structures reach :data:`TARGET_DICE` on the
    held-out phantoms, or :data:`MAX_ROUNDS` rounds are done; ``progress(step, most steps,
    loss)`` is called after each step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(CARD["architecture"]["name"], CARD["architecture"]["params"])
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    for round_index in range(MAX_ROUNDS):
        _train_round(network, optimizer, rng, round_index * ROUND_STEPS, progress)
        training = DemoTraining(network, (round_index + 1) * ROUND_STEPS, held_out_dice(network))
        if training.good:
            break
    return training


def ensure_demo_model(
    directory: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> ModelCard:
    """The installed phantom model, training and installing it first if it is missing or was
    made by an earlier version of this module; ``say`` hears how good the model is."""
    directory = directory or user_models_dir() / NAME
    card_path = directory / "card.json"
    card = ModelCard.load(card_path) if card_path.exists() else None
    if card is None or card.data["version"] != CARD["version"]:
        if say is not None:
            say("Training the phantom model once, until it segments held-out phantoms well...")
        training = train_demo_model(progress=progress)
        card = save_model(training.network, training.card(), directory)
    if say is not None:
        say(validation_summary(card))
    return card


def main() -> None:
    """``python -m asdseg.demo.phantom_model``: install the phantom model in the model folder of
    ``$ASDSEG_HOME`` and print its folder. The Slicer self-test runs this in a child process, so
    that the training neither blocks nor loads torch into Slicer."""
    print(ensure_demo_model().directory)


if __name__ == "__main__":
    main()
