"""``asdseg models``: list (the default), show or install models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from asdseg.cli.arguments import AS_NEW_VERSION_HELP
from asdseg.errors import InputError

if TYPE_CHECKING:
    from asdseg.registry.model_card import ModelCard


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list (the default), show or install models")
    actions = models.add_subparsers(dest="action")
    actions.add_parser("list", help="list installed and shipped models (what 'asdseg models' alone does)")
    show = actions.add_parser("show", help="show a model card")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the whole card as JSON")
    install = actions.add_parser(
        "install",
        help="install a model from a card (and weights) file, or download a model's weights by its name",
    )
    install.add_argument(
        "model",
        help="a model card JSON (installed into your model folder, weights as float16), or the name of a "
        "model whose card has a download source (its weights are fetched now rather than on first use)",
    )
    install.add_argument("--weights", help="weights file (default: the file the card names, beside it)")
    install.add_argument("--as-new-version", action="store_true", help=AS_NEW_VERSION_HELP)
    models.set_defaults(handler=command_models, action="list")


def command_models(args: argparse.Namespace) -> int:
    if args.action == "list":
        _list_models()
    elif args.action == "show":
        _show_model(args.name, args.json)
    else:
        _install_model(args)
    return 0


def _list_models() -> None:
    from asdseg.registry import available_models

    models = available_models()
    if not models:
        print("no models installed; 'asdseg demo' installs the phantom demo model.")
    for name, card in sorted(models.items()):
        version, task = f"v{card.data['version']}", card.data["task"]
        print(f"{name:<20} {version:<6} {_model_source(card):<12} {task:<16} {card.data['description']}")


def _show_model(name: str, as_json: bool) -> None:
    from asdseg.registry import find_model

    card = find_model(name)
    if as_json:
        print(json.dumps(card.data, indent=2))
    else:
        print(f"{card.summary()}\n  from: {_model_source(card)} ({card.directory})")


def _model_source(card: ModelCard) -> str:
    """Where a model comes from, and whether its weights still have to be downloaded."""
    from asdseg.registry import model_origin, weights_location

    origin = model_origin(card)
    return origin if weights_location(card).is_file() else f"{origin}, download on first use"


def _install_model(args: argparse.Namespace) -> None:
    """``models install``: a card file is installed into the user's folder; a model's name
    fetches its weights from the card's download source, if they are not here yet."""
    from asdseg.registry import find_model, install_model, load_network, weights_location

    if args.model.endswith(".json") or Path(args.model).exists():
        card = install_model(args.model, args.weights, args.as_new_version)
        print(f"installed {card.name} (v{card.data['version']}) into {card.directory}")
        return
    given = [option for option in ("weights", "as_new_version") if getattr(args, option)]
    if given:
        options = ", ".join(f"--{option.replace('_', '-')}" for option in given)
        raise InputError(f"{options}: only with a model card file, not with a model's name ({args.model}).")
    card = find_model(args.model)
    present = weights_location(card).is_file()
    load_network(card)  # downloads them on first use, checks them and loads them
    verb = "already here" if present else "downloaded"
    print(f"{card.name} (v{card.data['version']}): weights {verb}, {weights_location(card)}")
