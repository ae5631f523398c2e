"""The phantom model the demo runs while no trained clinical model is shipped.

It is a small VNet with an SDM head, trained in about a minute on the CPU on synthetic
phantoms (:mod:`asdseg.phantoms`) and installed as the user model ``phantom-demo``. It shows
the whole pipeline working with real weights; it knows nothing about anatomy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asdseg.losses import dice_ce_loss, signed_distance_target
from asdseg.model_card import ModelCard
from asdseg.networks import build_network
from asdseg.phantoms import make_phantom
from asdseg.preprocessing import normalize_intensity
from asdseg.registry import save_model, user_models_dir

NAME = "phantom-demo"
PATCH = 32

CARD = {
    "name": NAME,
    "version": "1",
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
        "protocol": "supervised Dice+CE plus SDM MSE on random 32^3 crops",
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
        sdms.append(np.stack([signed_distance_target(label == value) for value in (1, 2)]))
    return (
        torch.from_numpy(np.stack(images))[:, None],
        torch.from_numpy(np.stack(labels)).long(),
        torch.from_numpy(np.stack(sdms)),
    )


def train_demo_model(
    steps: int = 240, seed: int = 0, progress: Callable[[int, int, float], None] | None = None
) -> torch.nn.Module:
    """Train the phantom VNet; ``progress(step, steps, loss)`` is called after each step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(CARD["architecture"]["name"], CARD["architecture"]["params"])
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    network.train()
    for step in range(steps):
        image, label, sdm = _training_batch(rng, batch=2)
        outputs = network(image)
        loss = dice_ce_loss(outputs["logits"], label) + F.mse_loss(outputs["sdm"], sdm)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps, float(loss.detach()))
    return network.eval()


def ensure_demo_model(
    directory: Path | None = None, progress: Callable[[int, int, float], None] | None = None
) -> ModelCard:
    """The installed phantom model, training and installing it first if it is missing."""
    directory = directory or user_models_dir() / NAME
    card_path = directory / "card.json"
    if card_path.exists():
        return ModelCard.load(card_path)
    return save_model(train_demo_model(progress=progress), CARD, directory)
