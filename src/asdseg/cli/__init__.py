"""The ``asdseg`` command line, one module per command (each adds its subcommand to the parser and
handles it: parse, call the engine, print), with :mod:`~asdseg.cli.arguments` (every argument
type), :mod:`~asdseg.cli.parser` (the parser), :mod:`~asdseg.cli.console` (warnings, progress)
and :mod:`~asdseg.cli.exits` (exit statuses, errors and SIGTERM)."""

from __future__ import annotations

from collections.abc import Sequence

from asdseg.cli.arguments import check_roi_space
from asdseg.cli.exits import (
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    EXIT_WORSE,
    Terminated,
    run_command,
)
from asdseg.cli.finetune import TEACH_REPORT
from asdseg.cli.parser import build_parser

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_STOPPED",
    "EXIT_TERMINATED",
    "EXIT_WORSE",
    "TEACH_REPORT",
    "Terminated",
    "build_parser",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Failures the user can act on print one line and exit 2; Ctrl-C and
    SIGTERM exit 130 and 143. Every output is written atomically, so none of these leaves a
    partial file behind."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_roi_space(parser, args)
    return run_command(args.handler, args)
