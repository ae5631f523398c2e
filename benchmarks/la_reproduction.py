"""Reproduction benchmark on LA 2018: supervised-only, ASDNet, SASSNet and DAN side by side.

The papers' setting: the first 16 cases of ``train.list`` labelled, the others unlabelled; here
the last 20 cases are held out for evaluation (the challenge's own test labels are not in
``../shared``). Each recipe is trained with ``asdseg.training`` and its model evaluated on the
held-out cases at their original resolution, with and without keeping the largest component:
Dice, Jaccard, 95HD and ASD in voxels and in mm. Writes ``results.json`` and ``results.md``.

Two settings:
- ``paper``: full resolution, 112x112x80 patches, 4 labelled + 4 unlabelled patches per batch,
  6000 steps (days per recipe on two CPU cores; use a GPU: ``benchmarks/gpu_la.py``).
- ``compact``: volumes downsampled 2x, 64x64x32 patches, 1500 steps: about an hour per recipe on
  two CPU cores. It ranks the methods; its absolute numbers are not the papers'.

Each recipe runs with its paper's settings; ``sassnet-ce-dice`` (not run by default) is SASSNet
with the semi-supervised ablation's best settings.

``--shipped`` trains nothing: it evaluates the shipped LA models (``src/asdseg/models/la-*``)
the same way, each without and with test-time mirroring in the axial plane; ``--shipped la-dan``
re-evaluates one and keeps the other rows. ``--models`` evaluates any models the same way (names
or model folders, such as a run's ``model/``) into ``--results/models``.

``--seeds A B`` trains each recipe twice: at seed A, then again at seed B starting from the first
schedule's final model (a warm restart, the way ``la-dan`` 1.1 and ``la-sassnet`` 1.2 were
trained), and reports both. A schedule whose run folder already holds a finished model is reused
and one with only a checkpoint resumes, so an interrupted run continues where it stopped.

Checkpoints go under ``--runs`` (``benchmark_results/``, not tracked); ``results.json`` (with
the machine each row ran on) and ``results.md`` go to ``--results/<setting>``, tracked in git.

    python benchmarks/la_reproduction.py --setting compact
    python benchmarks/la_reproduction.py --shipped
    python benchmarks/la_reproduction.py --recipes supervised sassnet-ce-dice --seeds 2025
    python benchmarks/la_reproduction.py --recipes supervised sassnet-ce-dice --seeds 2025 1337
    python benchmarks/la_reproduction.py --models benchmark_results/some-run/model
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asdseg.data_paths import require_la2018
from asdseg.evaluation.model_evaluation import evaluate_model, reference_cases
from asdseg.inference.segment import SegmentationOptions
from asdseg.io.atomic_write import atomic_path
from asdseg.io.datasets import case_names
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import available_models, find_model, load_network
from asdseg.registry.model_card import CARD_FILE, ModelCard
from asdseg.training.config import TrainingConfig, config_from_dict
from asdseg.training.trainer import CHECKPOINT_FILE, Trainer

HELD_OUT = 20
#: The segmenters the recipes train (also the semi-supervised ablation's).
VNET = {"name": "vnet", "params": {"num_classes": 2}}
SDM_VNET = {"name": "vnet", "params": {"num_classes": 2, "sdm_head": True}}
SVNET = {"name": "svnet", "params": {"num_classes": 2}}
ENHANCED_UNET = {"name": "enhanced-unet", "params": {"num_classes": 2}}
#: SASSNet's best settings in the semi-supervised ablation: the supervised baseline's CE + Dice in
#: place of the paper's Dice, and the reference README's adversarial weight 0.01.
SASSNET_CE_DICE = {"supervised_loss": "dice-ce", "consistency": 0.01}
#: Each row: its recipe, network and loss settings (empty: the recipe's defaults, the papers').
#: ``sassnet-ce-dice`` differs from ``supervised`` only in the SDM head, the discriminator and the
#: unlabelled patches.
ROWS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "supervised": ("supervised", VNET, {}),
    "asdnet": ("asdnet", SVNET, {}),
    "sassnet": ("sassnet", SDM_VNET, {}),
    "sassnet-ce-dice": ("sassnet", SDM_VNET, SASSNET_CE_DICE),
    "dan": ("dan", ENHANCED_UNET, {}),
}
DEFAULT_ROWS = ("supervised", "asdnet", "sassnet", "dan")
SETTINGS = {
    "paper": {
        "patch_size": [112, 112, 80],
        "steps": 6000,
        "batch_size": 8,
        "labelled_per_batch": 4,
        "data": {"downsample": 1},
    },
    "compact": {
        "patch_size": [64, 64, 32],
        "steps": 1500,
        "lr_decay_every": 1000,
        "validate_every": 250,
        "checkpoint_every": 250,
        "data": {"downsample": 2},
    },
    # A few steps on a few cases: checks that the script runs end to end, nothing more.
    "smoke": {
        "patch_size": [32, 32, 16],
        "steps": 2,
        "validate_every": 2,
        "checkpoint_every": 2,
        "data": {"downsample": 4, "cases": 8, "labelled": 2},
    },
}


def recipe_config(
    row: str, setting: str, root: Path, seed: int | None = None, init_from: Path | None = None
) -> dict[str, Any]:
    """The training config of ``row`` at ``setting``; ``seed`` None keeps the config's default,
    and ``init_from`` (a model folder) makes the run a warm restart from that model."""
    chosen = SETTINGS[setting]
    data = {"root": str(root), "labelled": 16, "validation": HELD_OUT, **chosen["data"]}
    if setting == "smoke":
        data["validation"] = 2
    config = {key: value for key, value in chosen.items() if key != "data"}
    recipe, network, loss = ROWS[row]
    if seed is not None:
        config["seed"] = seed
    if init_from is not None:
        config["init_from"] = str(init_from)
    return {"recipe": recipe, "network": network, "loss": loss, "data": data, **config}


def evaluate(
    model_card, root: Path, names: list[str], options: SegmentationOptions | None = None
) -> dict[str, Any]:
    evaluation = evaluate_model(model_card, load_network(model_card), reference_cases(root, names), options)
    return {kind: by_label[1] for kind, by_label in evaluation.means().items()}


def markdown(results: dict[str, Any], setting: str, held_out: list[str]) -> str:
    columns = ["dice", "jaccard", "hd95_voxels", "asd_voxels", "hd95_mm", "asd_mm"]
    lines = [
        f"LA 2018, setting `{setting}`; evaluated on {len(held_out)} held-out cases of train.list "
        f"({held_out[0]} ... {held_out[-1]}) at their original resolution, final model of each run.",
        "",
        "| row | post-processing | Dice % | Jaccard % | 95HD vox | ASD vox | 95HD mm | ASD mm | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if setting not in ("shipped", "models"):
        default_seed = TrainingConfig().seed
        lines.insert(1, f"A row trained at another seed than the config's default ({default_seed}) names it.")
        if any(" then " in row for row in results):
            lines.insert(
                2,
                "'<row>, seeds A then B' is a second schedule at seed B that starts from the final model "
                "of '<row>' at seed A (a warm restart); its minutes are the second schedule's.",
            )
    for row, entry in results.items():
        minutes = "—" if entry.get("train_minutes") is None else f"{entry['train_minutes']:.0f}"
        for kind, means in entry["metrics"].items():
            values = [100 * means["dice"], 100 * means["jaccard"]] + [means[key] for key in columns[2:]]
            cells = " | ".join(f"{value:.2f}" for value in values)
            label = f"{row}, version {entry['version']}" if entry.get("version") else row
            lines.append(f"| {label} | {kind} | {cells} | {minutes} |")
    if setting != "shipped":
        lines += paired_markdown(paired_with_supervised(results))
    machines = sorted({machine_line(entry["machine"]) for entry in results.values() if "machine" in entry})
    lines += ["", "Machine: " + "; ".join(machines)]
    return "\n".join(lines) + "\n"


#: A row's recipe, its seeds and, for a model evaluated with and without mirroring, the mirroring:
#: 'sassnet-ce-dice', ', seeds 2025 then 1337 ', '(mirrored x, y)'.
ROW_PARTS = re.compile(r"(?P<recipe>[\w-]+)(?P<seeds>[^(]*)(?P<mirroring>.*)")


def run_row(key: str) -> str:
    """The training row a results key names: the key itself, or for a run's model folder evaluated
    by ``--models`` ('<runs>/<row>/model (<mirroring>)') the run folder's name and the mirroring."""
    folder, found, mirroring = key.rpartition("/model (")
    return f"{Path(folder).name} ({mirroring}" if found else key


def paired_with_supervised(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each recipe row's Dice minus that of 'supervised' at the same seeds (and mirroring), in
    points, by post-processing: the comparison at matched seeds that the README quotes."""
    rows = {run_row(key): entry for key, entry in results.items()}
    paired = {}
    for row, entry in rows.items():
        parts = ROW_PARTS.fullmatch(row)
        baseline = rows.get("supervised" + row[parts.end("recipe") :])
        if parts["recipe"] == "supervised" or baseline is None:
            continue
        paired[row] = {
            kind: 100 * (means["dice"] - baseline["metrics"][kind]["dice"])
            for kind, means in entry["metrics"].items()
        }
    return paired


def paired_markdown(paired: dict[str, dict[str, float]]) -> list[str]:
    """The paired differences, then their mean per recipe, number of schedules and mirroring."""
    if not paired:
        return []
    kinds = list(next(iter(paired.values())))
    lines = [
        "",
        "Dice points above supervised VNet trained at the same seeds:",
        "",
        "| row | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    groups: dict[tuple[str, int], list[dict[str, float]]] = {}
    for row, diff in paired.items():
        lines.append(f"| {row} | " + " | ".join(f"{diff[kind]:+.2f}" for kind in kinds) + " |")
        parts = ROW_PARTS.fullmatch(row)
        recipe = f"{parts['recipe']} {parts['mirroring']}".strip()
        groups.setdefault((recipe, row.count(" then ") + 1), []).append(diff)
    lines += ["", "| recipe | schedules | pairs | " + " | ".join(f"mean {kind}" for kind in kinds) + " |"]
    lines.append("|---|---|---|" + "---|" * len(kinds))
    for (recipe, schedules), diffs in sorted(groups.items()):
        means = " | ".join(f"{statistics.mean(diff[kind] for diff in diffs):+.2f}" for kind in kinds)
        lines.append(f"| {recipe} | {schedules} | {len(diffs)} | {means} |")
    return lines


def earlier_results(output: Path, setting: str) -> dict[str, Any]:
    """Rows of an earlier run of the same setting in ``output``, so recipes can be run one at a time."""
    path = output / "results.json"
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    return earlier["recipes"] if earlier.get("setting") == setting else {}


def write_results(output: Path, setting: str, results: dict[str, Any], held_out: list[str]) -> None:
    table = markdown(results, setting, held_out)
    write_json(output / "results.json", {"setting": setting, "recipes": results})
    with atomic_path(output / "results.md") as temporary:
        temporary.write_text(table)
    print(table)


#: Test-time mirroring compared for the shipped models: none, and flips in the axial plane (the
#: flips the LA recipes train with).
MIRRORING = {"no mirroring": (), "mirrored x, y": (0, 1)}


def shipped_cards(names: list[str]) -> dict[str, ModelCard]:
    """The shipped LA models ``names`` (all of them if empty), by name."""
    shipped = {name: card for name, card in available_models().items() if name.startswith("la-")}
    unknown = sorted(set(names) - set(shipped))
    if unknown:
        raise SystemExit(
            f"No shipped LA model named {', '.join(unknown)}; there are {', '.join(sorted(shipped))}."
        )
    return {name: shipped[name] for name in names} if names else shipped


def evaluate_mirroring(root: Path, held_out: list[str], cards: dict[str, ModelCard]) -> dict[str, Any]:
    """Each of ``cards`` (row name -> model) on the held-out cases, without and with test-time
    mirroring, with its card's version and training time and the evaluation's seconds."""
    results = {}
    for (name, card), (mirroring, axes) in itertools.product(sorted(cards.items()), MIRRORING.items()):
        started = time.monotonic()
        metrics = evaluate(card, root, held_out, SegmentationOptions(mirror_axes=axes))
        results[f"{name} ({mirroring})"] = {
            "version": card.data.get("version"),
            "train_minutes": card.data["training"].get("training_minutes"),
            "evaluation_seconds": time.monotonic() - started,
            "machine": describe_machine(),
            "metrics": metrics,
        }
    return results


def update_evaluations(
    output: Path, kind: str, root: Path, held_out: list[str], cards: dict[str, ModelCard]
) -> None:
    """Evaluate ``cards`` with and without mirroring into ``output``, keeping its other rows."""
    results = {**earlier_results(output, kind), **evaluate_mirroring(root, held_out, cards)}
    write_results(output, kind, dict(sorted(results.items())), held_out)


def run_name(row: str, seeds: tuple[int, ...]) -> str:
    """``row`` trained at ``seeds``, one per schedule: the row's own name at the config's default
    seed, '<row>, seed N' at another, '<row>, seeds A then B' for a warm restart."""
    if seeds == (TrainingConfig().seed,):
        return row
    if len(seeds) == 1:
        return f"{row}, seed {seeds[0]}"
    return f"{row}, seeds {' then '.join(str(seed) for seed in seeds)}"


def train_schedules(
    row: str, seeds: tuple[int, ...], setting: str, root: Path, runs: Path, device: str
) -> Iterator[tuple[str, ModelCard, bool]]:
    """Train ``row`` once per seed, each schedule after the first from the previous one's final
    model, yielding each schedule's run name, model and whether it trained now, as it ends. A
    finished schedule is reused, an interrupted one resumes from its checkpoint, and one before
    the last finished one is not needed."""
    names = [run_name(row, seeds[:count]) for count in range(1, len(seeds) + 1)]
    folders = [runs / setting / name for name in names]
    finished = [(folder / "model" / CARD_FILE).is_file() for folder in folders]
    last_finished = max((index for index, done in enumerate(finished) if done), default=-1)
    previous = None
    for index, (name, folder, seed) in enumerate(zip(names, folders, seeds, strict=True)):
        if finished[index]:
            yield name, find_model(str(folder / "model")), False
        elif index > last_finished:
            config = config_from_dict(recipe_config(row, setting, root, seed, previous))
            trainer = Trainer(config, folder, device=device)
            if (folder / CHECKPOINT_FILE).exists():
                trainer.resume()
            yield name, trainer.run().model, True
        previous = folder / "model"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="compact")
    parser.add_argument("--recipes", nargs="+", choices=list(ROWS), default=list(DEFAULT_ROWS))
    parser.add_argument(
        "--shipped",
        nargs="*",
        metavar="MODEL",
        help="evaluate the shipped LA models (all, or those named; the other rows are kept); train nothing",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="evaluate these models (names or model folders) like --shipped, into --results/models",
    )
    parser.add_argument("--runs", default="benchmark_results/la_reproduction")
    parser.add_argument("--results", default="benchmarks/results/la_reproduction")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[TrainingConfig().seed],
        help=f"training seed (default: the config's, {TrainingConfig().seed}); rows and runs at another "
        "are named '<row>, seed N'. Several: one schedule per seed, each a warm restart from the "
        "previous one's final model, named '<row>, seeds A then B'",
    )
    args = parser.parse_args()
    root = require_la2018()
    held_out = case_names(root)[-HELD_OUT:] if args.setting != "smoke" else case_names(root)[6:8]
    if args.shipped is not None:
        cards = shipped_cards(args.shipped)
        update_evaluations(Path(args.results) / "shipped", "shipped", root, held_out, cards)
        return
    if args.models:
        cards = {model: find_model(model) for model in args.models}
        update_evaluations(Path(args.results) / "models", "models", root, held_out, cards)
        return
    output = Path(args.results) / args.setting
    results = earlier_results(output, args.setting)
    for row in args.recipes:
        schedules = train_schedules(row, tuple(args.seeds), args.setting, root, Path(args.runs), args.device)
        for name, model, trained_now in schedules:
            if name in results and not trained_now:
                continue
            results[name] = {
                # None for a run trained before runs measured their time (see its log)
                "train_minutes": model.data["training"].get("training_minutes"),
                "machine": describe_machine(),
                "metrics": evaluate(model, root, held_out),
            }
            write_results(output, args.setting, results, held_out)


if __name__ == "__main__":
    main()
