"""Which models there are and where they come from: the shipped folder inside the package and
the user's folder (``$ASDSEG_HOME/models``, default ``~/.asdseg/models``), the default model, and
the rule that keeps a user's model from hiding a shipped one by accident. Reads only the cards."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from asdseg.errors import ModelError
from asdseg.registry.model_card import CARD_FILE, ModelCard

#: The model a radiologist gets without choosing one (``asdseg segment``, the demo, the ASDSeg
#: module): the left-atrium model trained on every labelled case we have.
DEFAULT_MODEL = "la-sassnet-72"


def shipped_models_dir() -> Path:
    return Path(str(resources.files("asdseg").joinpath("models")))


def user_models_dir() -> Path:
    return Path(os.environ.get("ASDSEG_HOME", Path.home() / ".asdseg")) / "models"


def model_dirs() -> list[Path]:
    """Folders searched for models, later ones overriding earlier ones."""
    return [shipped_models_dir(), user_models_dir()]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _cards_in(directory: Path, warn: Callable[[str], None]) -> dict[str, ModelCard]:
    """The valid cards of the model folders in ``directory``, by name. A broken card (hand-edited,
    half copied) is skipped with a ``warn``-ing rather than making every other model unusable."""
    models: dict[str, ModelCard] = {}
    for card_path in sorted(directory.glob(f"*/{CARD_FILE}")):
        try:
            card = ModelCard.load(card_path)
        except ModelError as error:
            warn(f"skipping a broken model: {error}")
            continue
        models[card.name] = card
    return models


def available_models(warn: Callable[[str], None] = _warn) -> dict[str, ModelCard]:
    """Every model whose card is present and valid, by name; a user's model hides a shipped one
    of the same name."""
    models: dict[str, ModelCard] = {}
    for directory in model_dirs():
        models.update(_cards_in(directory, warn))
    return models


def shipped_models() -> dict[str, ModelCard]:
    """The models that come with the package, by name, whether or not a user's model hides them."""
    return _cards_in(shipped_models_dir(), _warn)


def model_origin(card: ModelCard) -> str:
    """Where ``card``'s model comes from, for a person choosing one: ``shipped``, ``user folder``
    (saying which shipped model it hides, if any) or ``path`` (a model folder given by path)."""
    folder = card.directory.resolve().parent
    if folder == shipped_models_dir().resolve():
        return "shipped"
    if folder != user_models_dir().resolve():
        return "path"
    hidden = shipped_models().get(card.name)
    return "user folder" if hidden is None else f"user folder, hides shipped v{hidden.data['version']}"


def check_shipped_name(name: str, version: str, as_new_version: bool = False) -> None:
    """Refuse to install a model under a shipped model's name, which would silently replace the
    shipped one wherever that name is asked for, unless ``as_new_version`` says that is meant and
    ``version`` tells the two apart."""
    shipped = shipped_models().get(name)
    if shipped is None:
        return
    shipped_version = shipped.data["version"]
    if not as_new_version:
        raise ModelError(
            f"{name!r} is the name of a shipped model (v{shipped_version}); a model installed under it "
            f"would be used instead of the shipped one without a word. Choose another name (e.g. "
            f"{name}-2), or pass --as-new-version to install it as a new version of {name!r} on purpose."
        )
    if version == shipped_version:
        raise ModelError(
            f"{name!r} v{version} is the shipped model's version; give the new version another number "
            "(release --version, or the card's 'version')."
        )


def find_model(name: str) -> ModelCard:
    """An installed or shipped model by name, or a model folder (or its ``card.json``) by path,
    such as the one a fine-tuning round writes. A bare name that a model has means that model,
    even where the current folder holds a folder of that name: ``./name`` means the folder."""
    path = Path(name)
    models = available_models()
    if name in models and not {"/", os.sep} & set(name):
        return models[name]
    if path.is_dir() and (path / CARD_FILE).is_file():
        return ModelCard.load(path / CARD_FILE)
    if path.name == CARD_FILE and path.is_file():
        return ModelCard.load(path)
    if name not in models:
        known = ", ".join(sorted(models)) or "none installed"
        raise ModelError(
            f"unknown model {name!r} (available: {known}). List them with 'asdseg models list' "
            "or install one with 'asdseg models install CARD.json'."
        )
    return models[name]


def default_model(models: dict[str, ModelCard] | None = None) -> ModelCard | None:
    """The :data:`DEFAULT_MODEL` among ``models`` (default: every available model), or None where
    it is not installed."""
    models = available_models() if models is None else models
    return models.get(DEFAULT_MODEL)
