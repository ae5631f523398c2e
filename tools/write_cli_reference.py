"""Write docs/cli-reference.md from the ``asdseg`` command line's own parsers: every command, its
options, what each does and its default. Built from the parsers' actions rather than argparse's
formatted help, whose layout changes between Python versions; Testing/command_line/test_cli_reference.py fails
when the page is stale.

    python tools/write_cli_reference.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asdseg.cli import build_parser
from asdseg.io.atomic_write import atomic_path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli-reference.md"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def option_row(action: argparse.Action) -> str:
    name = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.dest}`"
    if action.metavar and action.option_strings:
        metavar = " ".join(action.metavar) if isinstance(action.metavar, tuple) else action.metavar
        name += f" {metavar}"
    what = (action.help or "").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        what += f" (one of: {', '.join(map(str, action.choices))})"
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or action.required else f"`{default}`"
    return f"| {name} | {what} | {shown} |"


def command_section(name: str, parser: argparse.ArgumentParser, help_text: str) -> list[str]:
    rows = [
        option_row(action)
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
    ]
    table = ["| option | what it does | default |", "|---|---|---|", *rows] if rows else ["No options."]
    lines = [f"## asdseg {name}", "", help_text, "", *table, ""]
    helps = command_helps(parser)
    for child, child_parser in subcommands(parser).items():
        lines += command_section(f"{name} {child}", child_parser, helps.get(child, ""))
    return lines


def command_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's one-line help, as ``asdseg --help`` lists it."""
    return {
        choice.dest: choice.help or ""
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions
    }


def cli_reference() -> str:
    parser = build_parser()
    helps = command_helps(parser)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the parsers by `python tools/write_cli_reference.py`; do not edit by hand.",
        "Every command also has `--help`. [The command line](command-line.md) explains the common uses.",
        "",
    ]
    for name, command in subcommands(parser).items():
        lines += command_section(name, command, helps.get(name, ""))
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    with atomic_path(PAGE) as temporary:
        temporary.write_text(cli_reference(), encoding="utf-8")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
