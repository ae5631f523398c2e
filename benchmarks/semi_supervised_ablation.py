"""Does each semi-supervised recipe beat supervised training? An ablation on LA 2018.

Every row trains with the same data (the first 16 cases of ``train.list`` labelled, the next 44
unlabelled, the last 20 held out), the same steps and schedule, and is evaluated on the 20
held-out cases at their original 0.625 mm with the largest component kept and raw. Each recipe
is paired with a supervised run of the same segmenter, so that the network and the method are
told apart (ASDNet's SVNet, DAN's enhanced UNet). Several seeds per row give mean and spread.

Runs are resumable: each (row, seed) writes ``runs/<row>-seed<k>.json`` into the results folder
when it is done and is skipped afterwards; an interrupted run continues from its checkpoint.
Several processes (one core each) share the jobs: each takes the next job in order that no other
has claimed (a ``.claim`` file beside the run; delete stale ones after a crash). Jobs go in
``PRIORITY`` order: the semi-supervised recipes and their supervised pairs at two seeds first.
``--report`` writes ``results.json`` and ``results.md`` from the finished runs.

    python benchmarks/semi_supervised_ablation.py &
    python benchmarks/semi_supervised_ablation.py &
    python benchmarks/semi_supervised_ablation.py --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from la_reproduction import ENHANCED_UNET, HELD_OUT, SASSNET_CE_DICE, SDM_VNET, SVNET, VNET, evaluate

from asdseg.data_paths import require_la2018
from asdseg.io.atomic_write import atomic_path
from asdseg.io.datasets import case_names
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.training.config import config_from_dict
from asdseg.training.trainer import CHECKPOINT_FILE, Trainer

#: row -> (recipe, segmenter, loss settings, the supervised row of the same segmenter)
ROWS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "supervised (VNet)": ("supervised", VNET, {}, "supervised (VNet)"),
    "SASSNet (VNet, lambda 0.001)": (
        "sassnet",
        SDM_VNET,
        {},
        "supervised (VNet)",
    ),
    # Diagnostics: the recipe with its unlabelled-data term switched off, which tells whether a
    # loss to supervised training comes from that term or from the rest of the recipe (SASSNet's
    # Dice-only + SDM loss; ASDNet's sample attention and adversarial term).
    "SASSNet without the adversarial term (lambda 0)": (
        "sassnet",
        SDM_VNET,
        {"consistency": 0.0},
        "supervised (VNet)",
    ),
    "ASDNet without the semi-supervised term (lambda2 0)": (
        "asdnet",
        SVNET,
        {"semi_supervised_weight": 0.0},
        "supervised (SVNet)",
    ),
    # SASSNet with the supervised baseline's (CE + Dice) / 2 in place of the paper's Dice: the
    # two rows then differ only in the SDM head, the discriminator and the unlabelled patches.
    "SASSNet (VNet, lambda 0.001, CE + Dice)": (
        "sassnet",
        SDM_VNET,
        {"supervised_loss": "dice-ce"},
        "supervised (VNet)",
    ),
    "SASSNet (VNet, lambda 0.01, CE + Dice)": (
        "sassnet",
        SDM_VNET,
        SASSNET_CE_DICE,
        "supervised (VNet)",
    ),
    "SASSNet (VNet, lambda 0.01)": (
        "sassnet",
        SDM_VNET,
        {"consistency": 0.01},
        "supervised (VNet)",
    ),
    "DAN (enhanced UNet)": (
        "dan",
        ENHANCED_UNET,
        {},
        "supervised (enhanced UNet)",
    ),
    "supervised (enhanced UNet)": (
        "supervised",
        ENHANCED_UNET,
        {},
        "supervised (enhanced UNet)",
    ),
    "ASDNet (SVNet)": ("asdnet", SVNET, {}, "supervised (SVNet)"),
    # ASDNet with the supervised baseline's (CE + Dice) / 2 in place of Eq. 2's sample-attention
    # Dice: the two rows then differ only in the confidence network's adversarial and
    # semi-supervised terms and the unlabelled patches.
    "ASDNet (SVNet, CE + Dice)": (
        "asdnet",
        SVNET,
        {"supervised_loss": "dice-ce"},
        "supervised (SVNet)",
    ),
    "supervised (SVNet)": (
        "supervised",
        SVNET,
        {},
        "supervised (SVNet)",
    ),
}
#: The CPU setting: the compact resolution (2x downsampled, 1.25 mm) and patches, 2 labelled + 2
#: unlabelled patches per batch, a short schedule with the papers' shape (decay x0.1 at 2/3).
SETTING: dict[str, Any] = {
    "patch_size": [64, 64, 32],
    "batch_size": 4,
    "labelled_per_batch": 2,
    "steps": 600,
    "lr_decay_every": 400,
    "validate_every": 10**9,
    "checkpoint_every": 100,
    "data": {"labelled": 16, "validation": HELD_OUT, "downsample": 2},
}
SEEDS = (1, 2)


def slug(row: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in row.lower()).strip("-")


#: The order jobs are taken in: what answers "does semi-supervision help" first.
PRIORITY_ROWS = (
    "supervised (VNet)",
    "SASSNet (VNet, lambda 0.001)",
    "ASDNet (SVNet)",
    "supervised (SVNet)",
)


def jobs(rows: list[str], seeds: tuple[int, ...]) -> list[tuple[str, int]]:
    """The priority rows at every seed, then the other rows seed-major."""
    first = [(row, seed) for seed in seeds for row in PRIORITY_ROWS if row in rows]
    rest = [(row, seed) for seed in seeds for row in rows if row not in PRIORITY_ROWS]
    return first + rest


def claim(runs: Path, row: str, seed: int) -> bool:
    """True if this process may run the job: it created the job's claim file first."""
    runs.mkdir(parents=True, exist_ok=True)
    try:
        (runs / f"{slug(row)}-seed{seed}.claim").open("x").close()
    except FileExistsError:
        return False
    return True


def run_job(row: str, seed: int, root: Path, runs: Path, results: Path) -> None:
    recipe, network, loss, _ = ROWS[row]
    values = {**SETTING, "recipe": recipe, "network": network, "loss": loss, "seed": seed}
    values["data"] = {**SETTING["data"], "root": str(root)}
    config = config_from_dict(values)
    folder = runs / f"{slug(row)}-seed{seed}"
    trainer = Trainer(config, folder, device="cpu")
    if (folder / CHECKPOINT_FILE).exists():
        trainer.resume()
    started, first_step = time.monotonic(), trainer.step
    model = trainer.run(show_progress=False).model
    seconds = time.monotonic() - started
    held_out = case_names(root)[-HELD_OUT:]
    entry = {
        "row": row,
        "recipe": recipe,
        "seed": seed,
        "steps": config.steps,
        "seconds_per_step": seconds / max(trainer.step - first_step, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": describe_machine(),
        "metrics": evaluate(model, root, held_out),
    }
    write_json(results / "runs" / f"{slug(row)}-seed{seed}.json", entry, indent=1)
    dice = entry["metrics"]["largest_component"]["dice"]
    print(f"{row} seed {seed}: Dice {100 * dice:.2f} ({entry['seconds_per_step']:.2f} s/step)", flush=True)


def summarise(results: Path) -> dict[str, Any]:
    """Mean and spread of each row over its finished seeds, and its difference to the supervised
    run of the same segmenter (mean of the per-seed differences where both have the seed)."""
    finished = [json.loads(path.read_text()) for path in sorted((results / "runs").glob("*.json"))]
    by_row: dict[str, dict[int, dict[str, Any]]] = {}
    for entry in finished:
        by_row.setdefault(entry["row"], {})[entry["seed"]] = entry
    summary: dict[str, Any] = {"setting": SETTING, "rows": {}}
    for row, seeds in by_row.items():
        baseline = by_row.get(ROWS[row][3], {})
        rows = {}
        for kind in ("raw", "largest_component"):
            dice = [100 * entry["metrics"][kind]["dice"] for entry in seeds.values()]
            paired = {
                seed: 100 * (entry["metrics"][kind]["dice"] - baseline[seed]["metrics"][kind]["dice"])
                for seed, entry in sorted(seeds.items())
                if seed in baseline
            }
            rows[kind] = {
                "dice_mean": statistics.mean(dice),
                "dice_spread": max(dice) - min(dice),
                "seeds": sorted(seeds),
                "dice_by_seed": dice,
                "versus_supervised_same_network": statistics.mean(paired.values()) if paired else None,
                "versus_supervised_by_seed": paired,
                "hd95_mm_mean": statistics.mean(
                    entry["metrics"][kind]["hd95_mm"] for entry in seeds.values()
                ),
            }
        rows["seconds_per_step"] = statistics.mean(entry["seconds_per_step"] for entry in seeds.values())
        rows["machine"] = machine_line(next(iter(seeds.values()))["machine"])
        summary["rows"][row] = rows
    return summary


def markdown(summary: dict[str, Any]) -> str:
    setting = summary["setting"]
    lines = [
        f"LA 2018, 16 labelled / 44 unlabelled / {HELD_OUT} held-out cases of train.list; "
        f"{setting['steps']} steps, patches {setting['patch_size']} at 2x downsampling (1.25 mm), "
        f"batch {setting['labelled_per_batch']} labelled + "
        f"{setting['batch_size'] - setting['labelled_per_batch']} unlabelled; "
        "evaluated at 0.625 mm on the held-out cases. Dice % (mean over seeds; spread = max - min); "
        "'vs sup.' = mean per-seed difference to supervised training of the same network; "
        "'per seed' lists those differences (LCC) in seed order.",
        "",
        "| row | seeds | Dice LCC | spread | vs sup. LCC | per seed | Dice raw | vs sup. raw | 95HD mm LCC "
        "| s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, entry in summary["rows"].items():
        largest, raw = entry["largest_component"], entry["raw"]
        supervised = ROWS[row][0] == "supervised"

        def versus(value: float | None, supervised: bool = supervised) -> str:
            return "—" if value is None or supervised else f"{value:+.2f}"

        paired = [] if supervised else largest["versus_supervised_by_seed"].values()
        per_seed = " / ".join(versus(value) for value in paired)
        lines.append(
            f"| {row} | {len(largest['seeds'])} | {largest['dice_mean']:.2f} | "
            f"{largest['dice_spread']:.2f} | "
            f"{versus(largest['versus_supervised_same_network'])} | {per_seed or '—'} | "
            f"{raw['dice_mean']:.2f} | "
            f"{versus(raw['versus_supervised_same_network'])} | {largest['hd95_mm_mean']:.2f} | "
            f"{entry['seconds_per_step']:.2f} |"
        )
    machines = sorted({entry["machine"] for entry in summary["rows"].values()})
    lines += ["", "Machine: " + "; ".join(machines)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="benchmark_results/semi_supervised_ablation")
    parser.add_argument("--results", default="benchmarks/results/semi_supervised_ablation")
    parser.add_argument("--report", action="store_true", help="only write results.json and results.md")
    args = parser.parse_args()
    results = Path(args.results)
    if not args.report:
        root = require_la2018()
        torch.set_num_threads(args.threads)
        for row, seed in jobs(args.rows, tuple(args.seeds)):
            done = (results / "runs" / f"{slug(row)}-seed{seed}.json").exists()
            if not done and claim(Path(args.runs), row, seed):
                run_job(row, seed, root, Path(args.runs), results)
    summary = summarise(results)
    if summary["rows"]:
        write_json(results / "results.json", summary, indent=1)
        with atomic_path(results / "results.md") as temporary:
            temporary.write_text(markdown(summary), encoding="utf-8")
        print(markdown(summary))


if __name__ == "__main__":
    main()
