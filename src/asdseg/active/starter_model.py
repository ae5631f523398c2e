"""An untrained attention U-Net to start an active-learning session from, when no trained
attention model exists for the task: the first fine-tuning round trains it on the first
labelled slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from asdseg.io.labels import Label
from asdseg.networks import build_network
from asdseg.registry import save_model
from asdseg.registry.model_card import ModelCard

#: Patch and width that train at a useful pace on a laptop CPU.
DEFAULT_PATCH_SIZE = (64, 64, 32)
DEFAULT_BASE_FILTERS = 16


def untrained_attention_model(
    labels: Sequence[Label],
    spacing: Sequence[float],
    folder: str | Path,
    name: str = "attention-start",
    patch_size: Sequence[int] = DEFAULT_PATCH_SIZE,
    base_filters: int = DEFAULT_BASE_FILTERS,
    seed: int = 0,
) -> ModelCard:
    """Save a freshly initialised attention U-Net for ``labels`` (background first, value 0)
    working at ``spacing`` mm into ``folder``; returns its card."""
    if not labels or labels[0].value != 0:
        raise ValueError("labels must start with the background (value 0)")
    params = {"num_classes": len(labels), "base_filters": base_filters}
    card = {
        "name": name,
        "version": "0",
        "description": "Untrained attention 3D U-Net: the starting point of an active-learning session.",
        "task": "active learning",
        "modality": "as the images it is fine-tuned on",
        "architecture": {"name": "attention-unet", "params": params},
        "outputs": {"sdm": False, "confidence": False},
        "labels": [label.to_dict() for label in labels],
        "preprocessing": {"spacing": [float(value) for value in spacing], "normalization": "zscore"},
        "inference": {"patch_size": list(patch_size), "overlap": 0.25, "blend": "gaussian"},
        "training": {"data": "none yet", "protocol": "untrained (random initialisation)"},
        "metrics": {},
        "license": "Apache-2.0",
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }
    torch.manual_seed(seed)
    return save_model(build_network("attention-unet", params), card, folder)
