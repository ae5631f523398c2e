"""The registry of models: shipped with the package, or installed by the user.

Each model is a folder holding ``card.json`` and the weights file the card names. Shipped
models live in the package (``asdseg/models``); installed ones under ``$ASDSEG_HOME/models``
(default ``~/.asdseg/models``). A user-installed model of the same name overrides a shipped one.

Listing and finding models reads only the cards: torch is imported by the functions that touch
weights, so that Slicer's model list never loads torch into the application.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from asdseg.errors import ModelError
from asdseg.io.image_io import atomic_path
from asdseg.registry.model_card import ATTENTION_ARCHITECTURES, CARD_FILE, ModelCard, validate_card

if TYPE_CHECKING:
    import torch
    from torch import nn


def shipped_models_dir() -> Path:
    return Path(str(resources.files("asdseg").joinpath("models")))


def user_models_dir() -> Path:
    return Path(os.environ.get("ASDSEG_HOME", Path.home() / ".asdseg")) / "models"


def model_dirs() -> list[Path]:
    """Folders searched for models, later ones overriding earlier ones."""
    return [shipped_models_dir(), user_models_dir()]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def available_models(warn: Callable[[str], None] = _warn) -> dict[str, ModelCard]:
    """Every model whose card is present and valid, by name. A broken card (hand-edited, half
    copied) is skipped with a ``warn``-ing rather than making every other model unusable."""
    models: dict[str, ModelCard] = {}
    for directory in model_dirs():
        for card_path in sorted(directory.glob(f"*/{CARD_FILE}")):
            try:
                card = ModelCard.load(card_path)
            except ModelError as error:
                warn(f"skipping a broken model: {error}")
                continue
            models[card.name] = card
    return models


def attention_models() -> dict[str, ModelCard]:
    """Installed models that can rank slices and be fine-tuned on them (an attention head)."""
    return {
        name: card
        for name, card in available_models().items()
        if card.data["architecture"]["name"] in ATTENTION_ARCHITECTURES
    }


def find_model(name: str) -> ModelCard:
    """An installed or shipped model by name, or a model folder (or its ``card.json``) by path,
    such as the one a fine-tuning round writes."""
    path = Path(name)
    if path.is_dir() and (path / CARD_FILE).is_file():
        return ModelCard.load(path / CARD_FILE)
    if path.name == CARD_FILE and path.is_file():
        return ModelCard.load(path)
    models = available_models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none installed"
        raise ModelError(
            f"unknown model {name!r} (available: {known}). List them with 'asdseg models list' "
            "or install one with 'asdseg models install CARD.json'."
        )
    return models[name]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(card: ModelCard, weights_path: Path | None = None) -> Path:
    """Check that the weights exist and match the card's SHA-256; returns their path."""
    path = weights_path or card.weights_path
    if not path.is_file():
        raise ModelError(f"model {card.name!r}: weights file {path} is missing; reinstall the model.")
    actual = sha256_of(path)
    if actual != card.weights_sha256:
        raise ModelError(
            f"model {card.name!r}: weights {path} do not match their model card (SHA-256 "
            f"{actual[:12]}... instead of {card.weights_sha256[:12]}...). The file is corrupt or "
            "belongs to another model; reinstall the model from its original files."
        )
    return path


def network_from_architecture(architecture: dict, source: str) -> nn.Module:
    """Build an ``architecture`` entry (``name``, ``params``) of a card or training config, with
    a :class:`ModelError` naming ``source`` for an unknown name or parameters it does not take."""
    from asdseg.networks import ARCHITECTURES, build_network

    name, params = architecture.get("name"), architecture.get("params", {})
    if name not in ARCHITECTURES:
        raise ModelError(f"{source}: unknown network {name!r}; known: {', '.join(sorted(ARCHITECTURES))}.")
    try:
        return build_network(name, params)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelError(
            f"{source}: cannot build network {name!r} with parameters {params}: {error}."
        ) from error


def load_network(card: ModelCard, weights_path: Path | None = None) -> nn.Module:
    """Build the card's architecture and load its checksum-verified weights (``weights_path``,
    default the card's), in eval mode."""
    import torch

    path = verify_weights(card, weights_path)
    network = network_from_architecture(card.data["architecture"], f"model {card.name!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as error:  # torch.load raises many types (UnpicklingError, RuntimeError...)
        raise ModelError(
            f"model {card.name!r}: cannot load weights {path} into {card.data['architecture']['name']}: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error
    broken = [name for name, tensor in network.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise ModelError(
            f"model {card.name!r}: weights {path} hold NaN or infinite values ({broken[0]}...); the "
            "training run that wrote them diverged. Retrain with a lower learning rate."
        )
    return network.eval()


def install_model(card_path: str | Path, weights_path: str | Path | None = None) -> ModelCard:
    """Copy a model (card + weights, checksum verified first) into the user's model folder.

    ``weights_path`` defaults to the file the card names, beside the card. The card and the
    weights are written atomically; an existing model of that name is replaced only after both
    new files are complete.
    """
    source_card = ModelCard.load(card_path)
    data = source_card.data
    source_weights = verify_weights(source_card, Path(weights_path) if weights_path else None)
    load_network(source_card, source_weights)  # refuse now what segment would refuse later
    target = user_models_dir() / source_card.name
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(target / data["weights"]["file"]) as temporary:
        shutil.copyfile(source_weights, temporary)
    with atomic_path(target / CARD_FILE) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return ModelCard.load(target / CARD_FILE)


def half_precision_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """``network``'s state with floating-point tensors stored as float16: half the bytes, for
    models kept in git. Loading it into the float32 network casts back; the rounding changes
    the outputs very little (the model card reports by how much)."""
    return {
        name: tensor.half() if tensor.is_floating_point() else tensor
        for name, tensor in network.state_dict().items()
    }


def save_model(
    network: nn.Module, card_data: dict, directory: str | Path, half_precision: bool = False
) -> ModelCard:
    """Write ``network``'s weights (as float16 with ``half_precision``) and ``card_data`` (with
    the weights' SHA-256 filled in) into ``directory``, both atomically. Used by training to
    produce an installable model and by the release of shipped models."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_file = card_data["weights"]["file"]
    state = half_precision_state(network) if half_precision else network.state_dict()
    with atomic_path(directory / weights_file) as temporary:
        torch.save(state, temporary)
        card_data = {**card_data, "weights": {"file": weights_file, "sha256": sha256_of(temporary)}}
        validate_card(card_data, directory / CARD_FILE)
    with atomic_path(directory / CARD_FILE) as card_temporary:
        card_temporary.write_text(json.dumps(card_data, indent=2) + "\n", encoding="utf-8")
    return ModelCard.load(directory / CARD_FILE)
