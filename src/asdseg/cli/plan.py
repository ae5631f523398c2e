"""``asdseg plan``: plan a training run on a dataset folder from its fingerprint and a measured
trial on this machine (spacing, patch, batch, pooling, normalisation, memory, step time)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from asdseg.cli.arguments import RECIPE_CHOICES, memory_gigabytes
from asdseg.io.output_paths import check_output_dir

if TYPE_CHECKING:
    from asdseg.planning.experiment_plan import TrainingPlan


def add_memory_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--memory-gb",
        type=memory_gigabytes,
        metavar="N",
        help="memory the run may use (default: 80 %% of the free RAM on a CPU, of the free memory on a GPU)",
    )


def add_parser(commands: argparse._SubParsersAction) -> None:
    plan = commands.add_parser(
        "plan", help="plan training on a dataset folder: spacing, patch, batch, memory and step time"
    )
    plan.add_argument(
        "--dataset", metavar="DIR", required=True, help="a dataset folder, as train --dataset takes"
    )
    plan.add_argument(
        "--output-dir",
        required=True,
        help="the run folder: plan.json and fingerprint.json go here, and train --output-dir uses them",
    )
    plan.add_argument("--recipe", choices=RECIPE_CHOICES, help="overrides the config's (default: supervised)")
    plan.add_argument(
        "--config",
        help="the JSON training config train will take: its network and precision are planned for, and "
        "train --output-dir then reuses the plan",
    )
    add_memory_argument(plan)
    plan.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    plan.set_defaults(handler=command_plan)


def command_plan(args: argparse.Namespace) -> int:
    from asdseg.planning.run_plan import plan_run, resolved_device_and_precision
    from asdseg.progress import tqdm_progress

    check_output_dir(args.output_dir, "--output-dir")
    recipe, network, precision = planned_setup(args)
    device, precision = resolved_device_and_precision(args.device, precision)
    update, close = tqdm_progress("fingerprint", unit="case")

    def progress(done: int, total: int, stage: str) -> None:
        update(done, total, stage)
        if done == total:
            close()  # before the trials report

    try:
        planned = plan_run(
            args.dataset,
            args.output_dir,
            recipe,
            network,
            device,
            precision,
            args.memory_gb,
            progress=progress,
        )
    finally:
        close()
    print("\n".join(describe_plan(planned.plan)))
    print(f"wrote {planned.keep(args.output_dir)}")
    return 0


def planned_setup(args: argparse.Namespace) -> tuple[str, dict[str, Any], str]:
    """Recipe, network (one class per label of the dataset unless the config says) and
    precision, as train takes them from ``--config`` and ``--recipe``."""
    from asdseg.planning.run_plan import recipe_network
    from asdseg.training.config import config_from_dict, read_config_values

    values = read_config_values(args.config) if args.config else {}
    recipe = args.recipe or values.get("recipe", "supervised")
    default_network = recipe_network(args.dataset, recipe)
    classes = default_network["params"]["num_classes"]
    network = values.get("network") or default_network
    if isinstance(network, dict) and isinstance(network.get("params", {}), dict):
        network.setdefault("params", {}).setdefault("num_classes", classes)
    labels = [{"value": value, "name": f"class {value}", "color": [0, 0, 0]} for value in range(classes)]
    config = config_from_dict(
        {**values, "recipe": recipe, "network": network, "labels": labels}, args.config or "config"
    )
    return recipe, config.network, config.precision


def describe_plan(plan: TrainingPlan) -> list[str]:
    """The plan as a person reads it."""
    rows: list[tuple[str, Any]] = [
        ("recipe", f"{plan.recipe} on {plan.device} at {plan.precision}"),
        ("spacing", f"{' x '.join(f'{value:g}' for value in plan.spacing)} mm"),
        ("median shape", " x ".join(map(str, plan.median_shape))),
        ("patch", f"{' x '.join(map(str, plan.patch_size))} ({_pooling(plan.pooling_per_axis)})"),
        ("batch", f"{plan.batch_size} patches ({plan.labelled_per_batch} labelled)"),
        ("normalisation", _normalisation(plan)),
        ("foreground", f"{plan.foreground_probability:.0%} of patches centred on an organ"),
        (
            "memory",
            f"{plan.expected_peak_mb / 1024:.2f} GB at peak (cases {plan.data_mb / 1024:.2f} GB) "
            f"of a {plan.memory_budget_mb / 1024:.1f} GB budget",
        ),
        ("step", f"{plan.expected_step_s:.2f} s"),
    ]
    return [f"{name:>14}: {value}" for name, value in rows] + [f"{'note':>14}: {note}" for note in plan.notes]


def _pooling(halvings: tuple[int, int, int]) -> str:
    if len(set(halvings)) == 1:
        return f"halved {halvings[0]} times per axis"
    return "halved {} times in x, y, z".format(" / ".join(map(str, halvings)))


def _normalisation(plan: TrainingPlan) -> str:
    if plan.intensity is None:
        return "z-score per case"
    low, high = plan.intensity["clip"]
    return (
        f"CT: clipped to [{low:g}, {high:g}], z-score with the foreground's mean {plan.intensity['mean']:g} "
        f"and std {plan.intensity['std']:g}"
    )
