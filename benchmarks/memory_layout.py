"""Channels-first against channels-last (NDHWC) memory layout on the CPU, side by side in one run.

Times, for each shipped model, the network's forward pass over one window of the card's patch
(as :func:`asdseg.inference.sliding_window.predict_volume` runs it, once per mirror pass), and
for la-sassnet-72 a full training step of the product setting (the sassnet recipe, 96 x 96 x 64,
batch 2: forward, losses, backward, SGD), in fp32 and, where the CPU computes it natively, in
bf16 autocast. The two layouts alternate, one timed call each, so both see the same machine load;
the figures are medians. ``--avx2`` repeats the fp32 rows in a child process limited to AVX2
kernels (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), as on CPUs without AVX-512.

Inference and training use channels-last on the CPU because of these figures; the outputs are
the same arithmetic (a test compares them). Writes the figures, with the machine, to
``benchmarks/results/memory_layout.json``.

    python benchmarks/memory_layout.py [--repeats 5] [--avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from asdseg.devices import autocast, cpu_has_native_bf16
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import find_model, load_network
from asdseg.training.config import config_from_dict
from asdseg.training.recipes import RECIPE_CLASSES

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "memory_layout.json"
SHIPPED = ("la-sassnet-72", "la-dan", "la-sassnet", "la-attention")
LAYOUTS = {"channels_first": torch.contiguous_format, "channels_last": torch.channels_last_3d}
AVX2_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: The product model's training setting (la-sassnet-72's config).
TRAINING_PATCH, TRAINING_BATCH = (96, 96, 64), 2


def inference_call(model: str, precision: str, layout: torch.memory_format) -> Callable[[], None]:
    """One window's forward pass of ``model`` in ``layout``."""
    card = find_model(model)
    network = load_network(card).eval().to(memory_format=layout)
    window = torch.randn(1, 1, *card.data["inference"]["patch_size"]).contiguous(memory_format=layout)

    def call() -> None:
        with torch.inference_mode(), autocast(torch.device("cpu"), precision):
            network(window)

    return call


def training_call(precision: str, layout: torch.memory_format) -> Callable[[], None]:
    """One sassnet training step of the product setting in ``layout``."""
    config = config_from_dict(
        {
            "recipe": "sassnet",
            "patch_size": list(TRAINING_PATCH),
            "batch_size": TRAINING_BATCH,
            "labelled_per_batch": TRAINING_BATCH,
            "loss": {"supervised_loss": "dice-ce"},  # la-sassnet-72's
        }
    )
    torch.manual_seed(0)
    recipe = RECIPE_CLASSES["sassnet"](config, torch.device("cpu"))
    for network in recipe.networks.values():
        network.to(memory_format=layout)
    images = torch.randn(TRAINING_BATCH, 1, *TRAINING_PATCH).contiguous(memory_format=layout)
    labels = torch.zeros(TRAINING_BATCH, *TRAINING_PATCH, dtype=torch.long)
    labels[:, 24:72, 24:72, 16:48] = 1

    def call() -> None:
        with autocast(torch.device("cpu"), precision):
            recipe.training_step(images, labels, None, 0)

    return call


def compare(make_call: Callable[[torch.memory_format], Callable[[], None]], repeats: int) -> dict[str, Any]:
    """Median seconds per call in each layout, alternating layouts, after one warm-up call each."""
    calls = {name: make_call(layout) for name, layout in LAYOUTS.items()}
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        **{f"{name}_s": round(value, 4) for name, value in medians.items()},
        "channels_last_speedup": round(medians["channels_first"] / medians["channels_last"], 2),
    }


def measure(models: list[str], precisions: list[str], repeats: int, kernels: str) -> list[dict[str, Any]]:
    rows = []
    for precision in precisions:
        jobs = [(name, "inference, one window", partial(inference_call, name, precision)) for name in models]
        jobs.append(("la-sassnet-72", "training step, batch 2", partial(training_call, precision)))
        for model, work, make_call in jobs:
            row = {"kernels": kernels, "precision": precision, "model": model, "work": work}
            row.update(compare(make_call, repeats))
            print(
                f"{kernels:6s} {precision:4s} {model:13s} {work:22s} channels-first "
                f"{row['channels_first_s']:.3f} s, channels-last {row['channels_last_s']:.3f} s "
                f"({row['channels_last_speedup']}x)",
                flush=True,
            )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHIPPED))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per layout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--avx2", action="store_true", help="also time fp32 with AVX2 kernels only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limited = os.environ.get("ATEN_CPU_CAPABILITY") == "avx2"
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() and not limited else [])
    if args.rows_only:
        print(json.dumps(measure(args.models, precisions, args.repeats, "avx2")))
        return
    print(machine_line(), f"{args.threads} threads", flush=True)
    rows = measure(args.models, precisions, args.repeats, "native")
    if args.avx2:
        command = [sys.executable, __file__, "--rows-only", "--repeats", str(args.repeats)]
        command += ["--threads", str(args.threads), "--models", *args.models]
        environment = {**os.environ, **AVX2_ENVIRONMENT}
        completed = subprocess.run(command, env=environment, capture_output=True, text=True)
        if completed.returncode != 0:
            raise SystemExit(f"the AVX2 run failed:\n{completed.stderr}")
        print(completed.stdout.strip().rsplit("\n", 1)[0], flush=True)
        rows += json.loads(completed.stdout.strip().splitlines()[-1])
    result = {"machine": describe_machine(), "threads": args.threads, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
