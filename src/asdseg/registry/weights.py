"""A model's weights: where they are (beside the card or downloaded on first use), checked
against the card's SHA-256, loaded into the card's network, and written (as float16 for models kept
in git) so that replacing a model survives a crash at any moment."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdseg.errors import ModelError
from asdseg.io.atomic_write import atomic_path
from asdseg.io.json_files import write_json
from asdseg.progress import ProgressCallback
from asdseg.registry.catalogue import check_shipped_name, user_models_dir
from asdseg.registry.download import download_file, sha256_of
from asdseg.registry.model_card import CARD_FILE, ModelCard, validate_card

if TYPE_CHECKING:
    import torch
    from torch import nn


def downloads_dir() -> Path:
    return user_models_dir().parent / "downloads"


def weights_location(card: ModelCard) -> Path:
    """Where ``card``'s weights are: beside the card, or, for a card with a download source whose
    weights are not there, in the download folder under their SHA-256 (so that a package folder
    may be read-only, and two versions of a model never share a file)."""
    if card.weights_path.is_file() or card.weights_url is None:
        return card.weights_path
    return downloads_dir() / card.weights_sha256 / card.data["weights"]["file"]


def fetch_weights(card: ModelCard, progress: ProgressCallback | None = None) -> Path:
    """``card``'s weights, downloaded first from its download source if they are not here yet
    (``progress`` as in :func:`asdseg.registry.download.download_file`)."""
    path = weights_location(card)
    if path.is_file() or card.weights_url is None:
        return path
    return download_file(card.weights_url, path, card.weights_sha256, progress, f"downloading {card.name}")


def verify_weights(card: ModelCard, weights_path: Path | None = None) -> Path:
    """Check that the weights exist and match the card's SHA-256; returns their path."""
    path = weights_path or weights_location(card)
    if not path.is_file():
        remedy = (
            f"run 'asdseg models install {card.name}' to download it"
            if card.weights_url
            else "reinstall the model"
        )
        raise ModelError(f"model {card.name!r}: weights file {path} is missing; {remedy}.")
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
    default the card's, downloaded on first use), in eval mode. Weights stored as float16 are
    cast back into the float32 network."""
    import torch

    path = verify_weights(card, weights_path or fetch_weights(card))
    network = network_from_architecture(card.data["architecture"], f"model {card.name!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as error:  # torch.load raises many types (UnpicklingError, RuntimeError...)
        raise ModelError(
            f"model {card.name!r}: cannot load weights {path} into {card.data['architecture']['name']}: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error
    # numpy, one tensor at a time on this thread: torch's parallel reductions, about 200 of them,
    # took half a second of a segmentation's start on a busy 2-core machine.
    broken = [
        name
        for name, tensor in network.state_dict().items()
        if tensor.is_floating_point() and not np.isfinite(tensor.numpy()).all()
    ]
    if broken:
        raise ModelError(
            f"model {card.name!r}: weights {path} hold NaN or infinite values ({broken[0]}...); the "
            "training run that wrote them diverged. Retrain with a lower learning rate."
        )
    return network.eval()


def install_model(
    card_path: str | Path, weights_path: str | Path | None = None, as_new_version: bool = False
) -> ModelCard:
    """Install a model (card + weights, checksum verified and loaded first) into the user's
    model folder, its weights as float16 (:func:`save_model`).

    ``weights_path`` defaults to the file the card names, beside the card (or its download
    source). A shipped model's name is refused unless ``as_new_version`` (:func:`check_shipped_name`).
    The card and the weights are written atomically; an existing model of that name is replaced
    only after both new files are complete.
    """
    source_card = ModelCard.load(card_path)
    check_shipped_name(source_card.name, source_card.data["version"], as_new_version)
    network = load_network(source_card, Path(weights_path) if weights_path else None)
    return save_model(network, source_card.data, user_models_dir() / source_card.name, half_precision=True)


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
    the weights' SHA-256 filled in) into ``directory``. Used by training to produce an
    installable model and by the release of shipped models.

    Replacing a model survives a crash (kill -9, power loss) at any moment: the new weights go
    into a file of their own (named after their checksum where the card's file name is taken),
    and the rename of the card that names them is the one step that switches models, so the
    folder always holds a whole model, the old or the new. The old weights file goes last."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _weights_in_use(directory)
    state = half_precision_state(network) if half_precision else network.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    checksum = hashlib.sha256(weights).hexdigest()
    weights_file = card_data["weights"]["file"]
    if previous is not None and previous.name == weights_file:
        weights_file = f"{Path(weights_file).stem}-{checksum[:12]}{Path(weights_file).suffix}"
    card_data = {**card_data, "weights": {"file": weights_file, "sha256": checksum}}
    validate_card(card_data, directory / CARD_FILE)
    with atomic_path(directory / weights_file) as temporary:
        temporary.write_bytes(weights)
    write_json(directory / CARD_FILE, card_data)
    if previous is not None and previous.name != weights_file:
        previous.unlink(missing_ok=True)
    return ModelCard.load(directory / CARD_FILE)


def _weights_in_use(directory: Path) -> Path | None:
    """The weights file the model card in ``directory`` names, if there is a readable card."""
    try:
        return ModelCard.load(directory / CARD_FILE).weights_path
    except ModelError:
        return None
