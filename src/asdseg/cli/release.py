"""``asdseg release``: a finished run on a data folder -> a model with its validation figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from asdseg.cli.arguments import AS_NEW_VERSION_HELP
from asdseg.errors import InputError
from asdseg.io.output_paths import check_output_dir


def add_parser(commands: argparse._SubParsersAction) -> None:
    release = commands.add_parser(
        "release", help="a finished run on a data folder -> a model with its validation figures per organ"
    )
    release.add_argument("run", help="the run's --output-dir (it holds checkpoint.pt and model/)")
    release.add_argument("--name", required=True, help="the model's name, e.g. pelvis-dan")
    release.add_argument("--version", default="1.0")
    release.add_argument(
        "--output-dir", help="where the model folder goes (default: your model folder, where Slicer finds it)"
    )
    release.add_argument("--as-new-version", action="store_true", help=AS_NEW_VERSION_HELP)
    release.set_defaults(handler=command_release)


def command_release(args: argparse.Namespace) -> int:
    from asdseg.progress import tqdm_progress
    from asdseg.registry import check_shipped_name, user_models_dir
    from asdseg.training.release import release_run

    output = Path(args.output_dir) if args.output_dir else user_models_dir()
    check_output_dir(output, "--output-dir")
    if output.resolve() == user_models_dir().resolve():
        check_shipped_name(args.name, args.version, args.as_new_version)
    elif args.as_new_version:
        raise InputError(
            f"--as-new-version: a model released into {output} shadows no shipped model (only your model "
            "folder's do); leave out --as-new-version, or --output-dir to release into your model folder."
        )
    update, close = tqdm_progress("validating")
    try:
        card = release_run(args.run, args.name, output, args.version, progress=update)
    finally:
        close()
    print(card.summary())
    print(f"released {card.name} into {card.directory}")
    return 0
