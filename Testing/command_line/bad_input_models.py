"""Bad input to ``models`` and ``release`` (the model registry): the cases that test_bad_input.py runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from workspace_helpers import Cases, card_copy, folder, write

from asdseg.networks import build_network
from asdseg.registry import save_model, shipped_models, user_models_dir

from conftest import tiny_card


def shipped_version(name: str) -> str:
    return shipped_models()[name].data["version"]


def nan_card(w: Path) -> str:
    """A copy of the tiny model whose card's window overlap is NaN (Python's json writes it)."""
    card = json.loads(Path(card_copy(w, name="nan-card")).read_text())
    card["inference"]["overlap"] = float("nan")
    return write(w / "candidate" / "card.json", json.dumps(card))


def nan_model(w: Path) -> str:
    card = {**tiny_card("nan-model")}
    network = build_network("vnet", card["architecture"]["params"])
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    return str(save_model(network, card, w / "nan-model").directory / "card.json")


#: models: case -> (argv built in the workspace, fragments the error message must contain).
MODELS_CASES: Cases = {
    "install: a card with NaN": (
        lambda w: ["models", "install", nan_card(w)],
        ("card.json", "inference.overlap", "finite"),
    ),
    "install: weights.file escapes the folder": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="escape",
                weights={
                    **json.loads((user_models_dir() / "tiny" / "card.json").read_text())["weights"],
                    "file": "../../x.pt",
                },
            ),
            "--weights",
            str(user_models_dir() / "tiny" / "model.pt"),
        ],
        ("weights.file", "../../x.pt", "plain file name"),
    ),
    "install: weights.file is card.json": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="self",
                weights={
                    **json.loads((user_models_dir() / "tiny" / "card.json").read_text())["weights"],
                    "file": "card.json",
                },
            ),
            "--weights",
            str(user_models_dir() / "tiny" / "model.pt"),
        ],
        ("weights.file", "card.json"),
    ),
    "install: unknown architecture": (
        lambda w: [
            "models",
            "install",
            card_copy(w, name="unknown-net", architecture={"name": "xnet", "params": {}}),
        ],
        ("unknown-net", "unknown network 'xnet'"),
    ),
    "install: parameters the network does not take": (
        lambda w: [
            "models",
            "install",
            card_copy(w, name="odd", architecture={"name": "vnet", "params": {"x": 1}}),
        ],
        ("odd", "cannot build network 'vnet'"),
    ),
    "install: weights of another architecture": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="other",
                architecture={"name": "vnet", "params": {"num_classes": 3, "base_filters": 4}},
            ),
        ],
        ("other", "cannot load weights"),
    ),
    "install: weights that do not unpickle": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="garbage",
                weights={"file": "model.pt", "sha256": hashlib.sha256(b"garbage").hexdigest()},
            ),
            "--weights",
            write(w / "g.pt", "garbage"),
        ],
        ("garbage", "cannot load weights"),
    ),
    "install: NaN weights": (
        lambda w: ["models", "install", nan_model(w)],
        ("nan-model", "NaN or infinite"),
    ),
    "install: card is a folder": (
        lambda w: ["models", "install", folder(w / "card.json")],
        ("card.json", "cannot read the model card"),
    ),
    "install: card is not JSON": (
        lambda w: ["models", "install", write(w / "card.json", "{")],
        ("card.json", "cannot read the model card"),
    ),
    "show: unknown model": (lambda w: ["models", "show", "nope"], ("unknown model 'nope'",)),
    "install: a shipped model's name": (
        lambda w: ["models", "install", card_copy(w, name="la-dan")],
        ("'la-dan' is the name of a shipped model", "--as-new-version"),
    ),
    "install: a new version numbered as the shipped one": (
        lambda w: [
            "models",
            "install",
            card_copy(w, name="la-dan", version=shipped_version("la-dan")),
            "--as-new-version",
        ],
        (f"'la-dan' v{shipped_version('la-dan')} is the shipped model's version",),
    ),
    "install: a model's name with --weights": (
        lambda w: ["models", "install", "la-dan", "--weights", str(w / "img.nii.gz")],
        ("--weights: only with a model card file", "la-dan"),
    ),
    "install: a model's name with --as-new-version": (
        lambda w: ["models", "install", "la-dan", "--as-new-version"],
        ("--as-new-version: only with a model card file",),
    ),
    "install: an unknown model's name": (
        lambda w: ["models", "install", "nope"],
        ("unknown model 'nope'",),
    ),
}


#: release: case -> (argv built in the workspace, fragments the error message must contain).
RELEASE_CASES: Cases = {
    "release: --as-new-version outside the model folder": (
        lambda w: [
            "release",
            str(w),
            "--name",
            "la-sassnet",
            "--as-new-version",
            "--output-dir",
            str(w / "m"),
        ],
        ("--as-new-version", "shadows no shipped model"),
    ),
    "release: a shipped model's name": (
        lambda w: ["release", str(w), "--name", "la-sassnet"],
        ("'la-sassnet' is the name of a shipped model", "--as-new-version"),
    ),
    "release: a new version numbered as the shipped one": (
        lambda w: [
            "release",
            str(w),
            "--name",
            "la-sassnet",
            "--version",
            shipped_version("la-sassnet"),
            "--as-new-version",
        ],
        ("is the shipped model's version",),
    ),
    "release: a run stopped before its first checkpoint": (
        lambda w: ["release", folder(w / "stopped"), "--name", "stopped"],
        ("no checkpoint there", "train the run to its last step before releasing it"),
    ),
}
