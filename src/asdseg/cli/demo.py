"""``asdseg demo``: the main job, segmenting a default input and evaluating it."""

from __future__ import annotations

import argparse
from pathlib import Path

from asdseg.io.output_paths import check_output_dir, check_output_paths


def add_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the main job: segment a default input and evaluate it")
    demo.add_argument("--output-dir", default="demo_output", help="where to write the results")
    demo.add_argument(
        "--model",
        help="the left-atrium model to run on LA 2018 (default: the default model, if it segments the "
        "left atrium)",
    )
    demo.set_defaults(handler=command_demo)


def command_demo(args: argparse.Namespace) -> int:
    from asdseg.demo.end_to_end import DEMO_OUTPUTS, run_demo

    check_output_dir(args.output_dir, "--output-dir")
    check_output_paths([("--output-dir", Path(args.output_dir) / name) for name in DEMO_OUTPUTS])
    run_demo(Path(args.output_dir), model=args.model)
    return 0
