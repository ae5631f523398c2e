"""``asdseg train``: train a model with one of the papers' recipes, on phantoms or a dataset folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asdseg.cli.arguments import RECIPE_CHOICES, non_negative_int, positive_int
from asdseg.cli.console import warn, warn_about_precision
from asdseg.cli.plan import add_memory_argument
from asdseg.errors import InputError
from asdseg.io.output_paths import check_output_dir

if TYPE_CHECKING:
    from asdseg.planning.run_plan import RunPlan
    from asdseg.training.config import TrainingConfig
    from asdseg.training.trainer import Trainer

#: ``asdseg train`` options that only mean something with ``--dataset``; the counts of a split.
SPLIT_COUNTS = ("labelled", "validation", "unlabelled")
DATASET_OPTIONS = (*SPLIT_COUNTS, "splits", "data_licence", "data_source", "memory_gb")


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model with one of the papers' recipes")
    train.add_argument(
        "--recipe",
        choices=RECIPE_CHOICES,
        help="overrides the config's",
    )
    train.add_argument(
        "--config", help="JSON training config (default: every setting's default, on phantoms)"
    )
    train.add_argument(
        "--output-dir", required=True, help="checkpoint, log.csv, curves.png and the model go here"
    )
    train.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    train.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from a released model's weights (a name from 'asdseg models' or a model folder) "
        "instead of random ones: train it for more steps or on your own cases; overrides the config's",
    )
    _add_dataset_arguments(train)
    add_memory_argument(train)
    train.add_argument("--steps", type=positive_int, help="overrides the config's number of steps")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    train.set_defaults(handler=command_train)


def _add_dataset_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "--dataset",
        metavar="DIR",
        help="train on a dataset folder: nnU-Net v2 raw (imagesTr/, labelsTr/, dataset.json) or Medical "
        "Segmentation Decathlon layout; labels and classes come from its dataset.json",
    )
    train.add_argument(
        "--labelled",
        type=positive_int,
        metavar="N",
        help="with --dataset: the first N cases (by name) are labelled",
    )
    train.add_argument(
        "--validation",
        type=non_negative_int,
        metavar="N",
        help="with --dataset: the last N cases are held out",
    )
    train.add_argument(
        "--unlabelled",
        type=non_negative_int,
        metavar="N",
        help="with --dataset: use at most N of the cases between as unlabelled (default: all of them)",
    )
    train.add_argument(
        "--splits",
        metavar="FILE",
        help='with --dataset: a JSON split by case name, {"labelled": [...], "unlabelled": [...], '
        '"validation": [...]}, or nnU-Net\'s splits_final.json (first fold)',
    )
    train.add_argument(
        "--data-licence",
        metavar="TEXT",
        help="with --dataset: the data's licence for the model card (wins over dataset.json's)",
    )
    train.add_argument(
        "--data-source",
        metavar="TEXT",
        help="with --dataset: where the data came from (institution, approval, export), for the model card",
    )


def command_train(args: argparse.Namespace) -> int:
    from asdseg.registry import find_model
    from asdseg.training.config import config_from_dict
    from asdseg.training.data import constant_images
    from asdseg.training.trainer import CHECKPOINT_FILE, Trainer

    check_output_dir(args.output_dir, "--output-dir")
    if args.resume and not (Path(args.output_dir) / CHECKPOINT_FILE).exists():
        raise InputError(
            f"--resume: {args.output_dir} holds no checkpoint ({CHECKPOINT_FILE}) to continue; leave out "
            "--resume to start a new run there, or give the output folder of the run to continue."
        )
    values, planned = _config_values(args)
    config = config_from_dict(values, args.config or "config")
    trainer = Trainer(config, args.output_dir, device=args.device)
    warn_about_precision(trainer.device, trainer.precision)
    for name in constant_images(trainer.split):
        warn(
            f"case {name}: every voxel of its image has the same value; it teaches the model nothing. "
            "Check its export."
        )
    if config.init_from is not None and not args.resume:
        # Before anything is written: a model that is not installed or does not fit the run.
        trainer.start_from(find_model(config.init_from))
    return _run(trainer, config, args, planned)


def _config_values(args: argparse.Namespace) -> tuple[dict[str, Any], RunPlan | None]:
    """The config's settings with the command line's overrides, and with ``--dataset`` the
    dataset's and the plan's (returned too, to be kept in the run folder when it starts)."""
    from asdseg.registry import find_model
    from asdseg.training.config import read_config_values
    from asdseg.training.dataset_training import dataset_run_values

    values = read_config_values(args.config) if args.config else {}
    if args.recipe:
        values["recipe"] = args.recipe
    if args.steps is not None:
        values["steps"] = args.steps
    if args.init_from is not None:
        values["init_from"] = args.init_from
    if values.get("init_from") is not None and not args.resume:
        # A starting model that is not installed is refused in a second, not after the plan's
        # measured trial; whether it fits the run is checked once the run's networks exist.
        find_model(values["init_from"])
    if args.dataset is None:
        given = [f"--{name.replace('_', '-')}" for name in DATASET_OPTIONS if getattr(args, name) is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --dataset DIR.")
        return values, None
    counts = [f"--{part}" for part in SPLIT_COUNTS if getattr(args, part) is not None]
    if args.splits and counts:
        raise InputError(f"--splits names every case's part; leave out {', '.join(counts)}.")
    values = dataset_run_values(
        values,
        args.dataset,
        warn,
        split_file=args.splits,
        labelled=args.labelled,
        validation=args.validation,
        unlabelled=args.unlabelled,
        licence=args.data_licence,
        source=args.data_source,
    )
    given = read_config_values(args.config) if args.config else {}
    return _planned(values, given, args)


def _planned(
    values: dict[str, Any], given: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, Any], RunPlan]:
    """The run's settings with the plan's (``asdseg plan``'s, kept in the output folder, or made
    now) where the config gives none; a config's patch and batch are checked against the
    memory budget."""
    from asdseg.planning.run_plan import apply_plan, plan_run, resolved_device_and_precision
    from asdseg.training.config import config_from_dict

    config_from_dict(values, args.config or "config")  # a bad setting is refused before the trial
    device, precision = resolved_device_and_precision(args.device, values.get("precision", "fp32"))
    planned = plan_run(
        args.dataset,
        args.output_dir,
        values.get("recipe", "supervised"),
        values["network"],
        device,
        precision,
        args.memory_gb,
        report=lambda text: print(f"plan: {text}"),
    )
    values = apply_plan(values, given, planned.plan, planned.line)
    spacing = values["data"]["spacing"]
    print(f"run: patch {values['patch_size']}, batch {values['batch_size']}, spacing {spacing} mm")
    return values, planned


def _run(trainer: Trainer, config: TrainingConfig, args: argparse.Namespace, planned: RunPlan | None) -> int:
    """Train (or resume), writing the plan and the split first on a new run on a dataset folder."""
    from asdseg.training.dataset_training import write_split
    from asdseg.training.distributed import end_distributed
    from asdseg.training.trainer import CHECKPOINT_FILE

    new_run = not (Path(args.output_dir) / CHECKPOINT_FILE).exists()
    try:
        if planned is not None and new_run and trainer.context.is_main:
            print(f"wrote {planned.keep(args.output_dir)}")
        if config.data.split is not None and new_run and trainer.context.is_main:
            print(f"split: {', '.join(f'{len(names)} {part}' for part, names in config.data.split.items())}")
            print(f"wrote {write_split(args.output_dir, config.data.split)}")
        if args.resume:
            trainer.resume()
            print(f"resuming {config.recipe} at step {trainer.step}")
        result = trainer.run()
    finally:
        end_distributed()
    if not trainer.context.is_main:
        return 0
    print(f"wrote {result.output_dir / 'log.csv'} and {result.output_dir / 'curves.png'}")
    if result.model is not None:
        print(f"trained model: {result.model.directory} (install with asdseg models install)")
    return 0
