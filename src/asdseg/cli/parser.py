"""The ``asdseg`` parser: one subcommand per module of this package, in the order ``--help`` lists
them, and argparse taught that a negative number is a value, not an option."""

from __future__ import annotations

import argparse
import re
from typing import Any

from asdseg.cli import (
    demo,
    devices,
    evaluate,
    finetune,
    import_dicom_rt,
    models,
    plan,
    release,
    segment,
    suggest,
    train,
)

#: What ``asdseg --help`` says first.
DESCRIPTION = (
    "The ``asdseg`` command line: segment, evaluate, models, plan, train, suggest, finetune, devices, demo."
)
#: Each command's module (``add_parser`` adds its subcommand, its handler the default), in order.
COMMANDS = (
    segment,
    evaluate,
    models,
    plan,
    train,
    release,
    import_dicom_rt,
    suggest,
    finetune,
    devices,
    demo,
)

#: Every way to write a negative number, the engine's own (-1.5e-05), -inf and -nan included
#: (the last two are then refused as not finite, by name).
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf(inity)?|nan)$", re.IGNORECASE)


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, taking every negative number (:data:`NEGATIVE_NUMBER`) for a value.
    argparse's own rule knows only -1 and -1.5, and reads -inf as -i with the value nf, so it
    refused ROI corners the engine prints. No option of asdseg looks like a number."""

    def _parse_optional(self, arg_string: str) -> Any:
        return None if NEGATIVE_NUMBER.match(arg_string) else super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="asdseg", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser
