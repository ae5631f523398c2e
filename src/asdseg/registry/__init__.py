"""The registry of models: shipped with the package, or installed by the user.

Each model is a folder holding ``card.json`` and the weights file the card names. Shipped
models live in the package (``asdseg/models``); installed ones under ``$ASDSEG_HOME/models``
(default ``~/.asdseg/models``). A user-installed model of the same name overrides a shipped one,
so installing one under a shipped model's name needs an explicit "as a new version" (else the
user would run other weights than the ones they asked for by name without knowing it).

A card may name a download source (``weights.url``) instead of bundling its weights, to keep
them out of the repository; they are downloaded on first use into ``$ASDSEG_HOME/downloads``.
Installed weights are stored in half precision (float16), half the bytes; loading casts them
back to float32.

Listing and finding models (:mod:`asdseg.registry.catalogue`) reads only the cards: torch is
imported by the functions that touch weights (:mod:`asdseg.registry.weights`), so that Slicer's
model list never loads torch into the application.
"""

from asdseg.registry.catalogue import (
    DEFAULT_MODEL,
    available_models,
    check_shipped_name,
    default_model,
    find_model,
    model_dirs,
    model_origin,
    shipped_models,
    shipped_models_dir,
    user_models_dir,
)
from asdseg.registry.download import sha256_of
from asdseg.registry.weights import (
    downloads_dir,
    fetch_weights,
    half_precision_state,
    install_model,
    load_network,
    network_from_architecture,
    save_model,
    verify_weights,
    weights_location,
)

__all__ = [
    "DEFAULT_MODEL",
    "available_models",
    "check_shipped_name",
    "default_model",
    "downloads_dir",
    "fetch_weights",
    "find_model",
    "half_precision_state",
    "install_model",
    "load_network",
    "model_dirs",
    "model_origin",
    "network_from_architecture",
    "save_model",
    "sha256_of",
    "shipped_models",
    "shipped_models_dir",
    "user_models_dir",
    "verify_weights",
    "weights_location",
]
