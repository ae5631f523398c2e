"""Training step time in fp32 and in bf16 autocast, side by side in one process.

Each setting builds the recipe's networks and optimisers once per precision and times full
training steps (forward, losses, backward, SGD) on random patches with a sphere as the label,
alternating fp32 and bf16 so both see the same machine load. bf16 pays off only where the CPU
computes it natively (AVX512-BF16 or AMX; :func:`asdseg.devices.cpu_has_native_bf16`); with
AVX2 kernels it is emulated, about 50x slower, and this script refuses to time it there.

Writes the figures, with the machine, to ``benchmarks/results/training_precision.json``, which
keeps one run per CPU (its kernel flags): AVX512-BF16 and AMX machines differ most in bf16.

    python benchmarks/training_precision.py [--repeats 3] [--settings la-full la-0.94mm]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tracked_runs import write_run

from asdseg.devices import autocast, cpu_has_native_bf16
from asdseg.machine import describe_machine, machine_line
from asdseg.training.config import config_from_dict
from asdseg.training.recipes import RECIPE_CLASSES

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "training_precision.json"
#: Name: (recipe, patch size, batch size). la-full is the papers' setting (0.625 mm); la-0.94mm
#: the product model's (the same field of view at 0.9375 mm); la-compact the 16-label models'.
SETTINGS: dict[str, tuple[str, tuple[int, int, int], int]] = {
    "la-full": ("sassnet", (112, 112, 80), 2),
    "la-0.94mm": ("sassnet", (96, 96, 64), 2),
    "la-compact": ("sassnet", (64, 64, 32), 4),
}


def sphere_labels(batch: int, patch: tuple[int, int, int]) -> torch.Tensor:
    grid = np.stack(np.meshgrid(*[np.arange(size) - size / 2 for size in patch], indexing="ij"))
    inside = (grid**2).sum(axis=0) < (min(patch) / 3) ** 2
    return torch.from_numpy(np.repeat(inside[None], batch, axis=0)).long()


def step_seconds(
    recipe_name: str, patch: tuple[int, int, int], batch: int, precision: str, repeats: int
) -> list[float]:
    """Seconds per training step (after one warm-up step) of a fully supervised batch."""
    config = config_from_dict(
        {"recipe": recipe_name, "patch_size": list(patch), "batch_size": batch, "labelled_per_batch": batch}
    )
    device = torch.device("cpu")
    torch.manual_seed(0)
    recipe = RECIPE_CLASSES[recipe_name](config, device)
    images = torch.randn(batch, 1, *patch)
    labels = sphere_labels(batch, patch)
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        with autocast(device, precision):
            recipe.training_step(images, labels, None, index)
        if index:
            times.append(time.perf_counter() - start)
    return times


def measure(settings: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in settings:
        recipe, patch, batch = SETTINGS[name]
        seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(repeats):  # alternate, one timed step each, so both see the same load
            for precision in seconds:
                seconds[precision] += step_seconds(recipe, patch, batch, precision, 1)
        fp32, bf16 = (statistics.median(seconds[key]) for key in ("fp32", "bf16"))
        row = {
            "setting": name,
            "recipe": recipe,
            "patch_size": list(patch),
            "batch_size": batch,
            "fp32_seconds": [round(value, 3) for value in seconds["fp32"]],
            "bf16_seconds": [round(value, 3) for value in seconds["bf16"]],
            "fp32_median": round(fp32, 3),
            "bf16_median": round(bf16, 3),
            "bf16_speedup": round(fp32 / bf16, 2),
        }
        print(
            f"{name:12s} {patch} x{batch}: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s per step "
            f"({row['bf16_speedup']}x)",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per precision and setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if not cpu_has_native_bf16():
        raise SystemExit(
            f"bf16 is emulated on this CPU ({machine_line()}): about 50x slower than fp32, so "
            "training stays in fp32 here and there is nothing to compare. Run on a CPU with "
            "AVX512-BF16 or AMX."
        )
    torch.set_num_threads(args.threads)
    print(machine_line(), f"{args.threads} threads", flush=True)
    rows = measure(args.settings, args.repeats)
    result = {"machine": describe_machine(), "threads": args.threads, "rows": rows}
    write_run(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
