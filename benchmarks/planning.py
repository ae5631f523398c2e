"""Experiment planning against what training then takes: for datasets of different shapes, the
plan's expected peak memory and step time (``asdseg plan``) beside those of real ``asdseg
train`` runs on the plan.

Datasets (synthetic unless said; written to a temporary folder):

- tiny: 6 cases of 56 x 56 x 32 voxels of 1 x 1 x 2 mm, three organs, recipe dan (issue 37's
  example), at the free memory and at a 1 GB budget (issue 37's goal);
- pelvic-anisotropic: 6 cases of 256 x 256 x 24 voxels of 0.7 x 0.7 x 4 mm (thick slices);
- ct-large-fov: 4 CT cases of 384 x 384 x 160 voxels of 0.9 x 0.9 x 2 mm;
- la-2018: the 80 LA 2018 cases (../shared) with recipe sassnet, at the free memory and at a
  3 GB budget (a machine that cannot hold the papers' setting); skipped without the data.

Measured: the peak resident memory of a 4-step ``asdseg train`` (``wait4``), which includes
loading the cases and the validation at the last step, and the median of its steps' own times
(``step_seconds`` in log.csv: patches, forward, backward, update) after the first. Writes
``benchmarks/results/planning.json``, each row with the machine that measured it; the rows of
datasets not asked for are kept from the file as they were.

    python benchmarks/planning.py [--datasets tiny pelvic-anisotropic ct-large-fov la-2018]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asdseg.data_paths import find_la2018
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.phantoms import write_synthetic_pelvis_dataset

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "planning.json"
SYNTHETIC = {
    "tiny": {
        "cases": 6,
        "shape": (56, 56, 32),
        "spacing": (1.0, 1.0, 2.0),
        "recipe": "dan",
        "budgets": (None, 1.0),
    },
    "pelvic-anisotropic": {
        "cases": 6,
        "shape": (256, 256, 24),
        "spacing": (0.7, 0.7, 4.0),
        "recipe": "supervised",
    },
    "ct-large-fov": {
        "cases": 4,
        "shape": (384, 384, 160),
        "spacing": (0.9, 0.9, 2.0),
        "recipe": "supervised",
    },
}
LA_BUDGETS = (None, 3.0)
STEPS = 4


def synthetic_dataset(name: str, folder: Path) -> Path:
    setting = SYNTHETIC[name]
    root = write_synthetic_pelvis_dataset(
        folder / name, setting["cases"], setting["shape"], setting["spacing"]
    )
    if name.startswith("ct"):
        description = json.loads((root / "dataset.json").read_text())
        description["channel_names"] = {"0": "CT"}
        (root / "dataset.json").write_text(json.dumps(description, indent=2))
    return root


def asdseg(arguments: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB and output of ``python -m asdseg ARGUMENTS``."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "asdseg", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"asdseg {' '.join(arguments)} failed:\n{output[-3000:]}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, output


def train_arguments(dataset: Path, run: Path, recipe: str, steps: int, memory: list[str]) -> list[str]:
    if (dataset / "dataset.json").is_file():
        return [
            "train",
            "--dataset",
            str(dataset),
            "--recipe",
            recipe,
            "--output-dir",
            str(run),
            "--steps",
            str(steps),
            "--device",
            "cpu",
            *memory,
        ]
    # The LA 2018 layout (train.list) is trained through a config naming it, with the plan's settings.
    plan = json.loads((run.parent / "plan" / "plan.json").read_text())["plan"]  # the plan measured
    config = {
        "recipe": recipe,
        "steps": steps,
        "data": {"root": str(dataset), "labelled": 16, "validation": 8, "spacing": plan["spacing"]},
        "patch_size": plan["patch_size"],
        "batch_size": plan["batch_size"],
        "labelled_per_batch": plan["labelled_per_batch"],
    }
    path = run.parent / "config.json"
    path.write_text(json.dumps(config))
    return ["train", "--config", str(path), "--output-dir", str(run), "--device", "cpu"]


def measure(name: str, dataset: Path, recipe: str, folder: Path, memory_gb: float | None) -> dict:
    memory = ["--memory-gb", str(memory_gb)] if memory_gb else []
    plan_dir = folder / "plan"
    seconds, _, output = asdseg(
        [
            "plan",
            "--dataset",
            str(dataset),
            "--recipe",
            recipe,
            "--output-dir",
            str(plan_dir),
            "--device",
            "cpu",
            *memory,
        ]
    )
    plan = json.loads((plan_dir / "plan.json").read_text())["plan"]
    print(output.strip().splitlines()[-1] if output.strip() else "", flush=True)
    run = folder / "run"
    if (dataset / "dataset.json").is_file():
        run.mkdir(parents=True)
        for kept in ("plan.json", "fingerprint.json"):  # train reuses the plan just measured
            (run / kept).write_bytes((plan_dir / kept).read_bytes())
    _, measured_peak, _ = asdseg(train_arguments(dataset, run, recipe, STEPS, memory))
    with (run / "log.csv").open() as log:
        step_times = [float(row["step_seconds"]) for row in csv.DictReader(log)]
    step_s = statistics.median(step_times[1:])  # the first step pays one-off allocations
    row = {
        "dataset": name,
        "recipe": recipe,
        "memory_gb": memory_gb,
        "spacing": plan["spacing"],
        "median_shape": plan["median_shape"],
        "patch_size": plan["patch_size"],
        "batch_size": plan["batch_size"],
        "normalization": plan["normalization"],
        "planning_s": round(seconds, 1),
        "planned_peak_mb": plan["expected_peak_mb"],
        "measured_peak_mb": round(measured_peak, 1),
        "peak_error": round(plan["expected_peak_mb"] / measured_peak - 1, 3),
        "planned_step_s": plan["expected_step_s"],
        "measured_step_s": round(step_s, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def earlier_rows(path: Path) -> list[dict]:
    """The rows of an earlier run, each with its machine (older files kept one for all)."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    return [{"machine": earlier.get("machine"), **row} for row in earlier["rows"]]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=[*SYNTHETIC, "la-2018"])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    machine = describe_machine()
    print(f"machine: {machine_line(machine)}", flush=True)
    rows = [row for row in earlier_rows(args.output) if row["dataset"] not in args.datasets]
    with tempfile.TemporaryDirectory() as temporary:
        for name in args.datasets:
            if name == "la-2018":
                root = find_la2018()
                if root is None:
                    print("la-2018: skipped, LA 2018 data not found", flush=True)
                    continue
                for budget in LA_BUDGETS:
                    folder = Path(temporary) / f"la-{budget}"
                    rows.append({**measure(name, root, "sassnet", folder, budget), "machine": machine})
                continue
            dataset = synthetic_dataset(name, Path(temporary))
            for budget in SYNTHETIC[name].get("budgets", (None,)):
                folder = Path(temporary) / f"{name}-{budget}"
                row = measure(name, dataset, SYNTHETIC[name]["recipe"], folder, budget)
                rows.append({**row, "machine": machine})
    order = [*SYNTHETIC, "la-2018"]
    rows.sort(key=lambda row: order.index(row["dataset"]))  # stable: budgets keep their order
    result = {"rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
