"""Whole-volume inference speed of the LA-style VNet: asdseg's ``predict_volume`` against a
bare MONAI ``sliding_window_inference`` call on the same network and windows, fp32 and bf16.

Each configuration runs in its own subprocess so that its peak memory is its own. Prints a
table and writes the figures as JSON, with the machine they were measured on (CPU model and
kernel flags, GPU, torch: :func:`asdseg.machine.describe_machine`), into
``benchmarks/results/inference_speed.json``, which is kept in git. Not a test: the numbers depend
on the machine.

    python benchmarks/inference_speed.py [--output benchmarks/results/inference_speed.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LA_SHAPE = (192, 144, 88)  # a typical cropped LA 2018 volume at 0.625 mm
PATCH = (112, 112, 80)  # UA-MT / SASSNet patch
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "inference_speed.json"


def window_flops(network, patch) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        network(torch.zeros(1, 1, *patch))
    return float(counter.get_total_flops())


def run_one(implementation: str, precision: str, overlap: float, device_name: str, repeats: int) -> dict:
    """Time one configuration in this process (called in a subprocess)."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from asdseg.devices import autocast, select_device
    from asdseg.inference.sliding_window import WindowSettings, predict_volume, window_count
    from asdseg.networks import build_network

    torch.manual_seed(0)
    device = select_device(device_name)
    network = build_network("vnet", {"num_classes": 2, "base_filters": 16}).to(device).eval()
    volume = np.random.default_rng(0).normal(size=LA_SHAPE).astype(np.float32)
    settings = WindowSettings(PATCH, overlap=overlap, blend="gaussian", precision=precision)

    def bare_monai() -> None:
        def predictor(windows):
            with autocast(device, precision):
                return torch.softmax(network(windows)["logits"].float(), dim=1)

        with torch.inference_mode():
            sliding_window_inference(
                torch.from_numpy(volume)[None, None].to(device),
                PATCH,
                1,
                predictor,
                overlap=overlap,
                mode="gaussian",
            )

    def ours() -> None:
        predict_volume(network, volume, settings, device)

    work = ours if implementation == "asdseg" else bare_monai
    work()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    windows = window_count(LA_SHAPE, settings)
    seconds = min(times)
    flops = window_flops(network.cpu(), PATCH) * windows
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "implementation": implementation,
        "precision": precision,
        "device": str(device),
        "windows": windows,
        "seconds": seconds,
        "gflop_per_s": flops / seconds / 1e9,
        "peak_memory_mb": peak / 2**20,
        "peak_memory_kind": "CUDA allocated" if device.type == "cuda" else "process max RSS",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--one", nargs=2, metavar=("IMPLEMENTATION", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.overlap, args.device, args.repeats)))
        return 0

    from asdseg.io.image_io import atomic_path
    from asdseg.machine import describe_machine, machine_line

    machine = describe_machine()
    print(f"machine: {machine_line(machine)}", flush=True)
    rows = []
    for precision in args.precisions.split(","):
        for implementation in ("monai", "asdseg"):
            command = [
                sys.executable,
                __file__,
                "--one",
                implementation,
                precision,
                "--overlap",
                str(args.overlap),
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
            ]
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(
                f"{implementation:>7} {precision:>5} {row['device']:>5} {row['windows']:>3} windows "
                f"{row['seconds']:8.2f} s {row['gflop_per_s']:8.1f} GFLOP/s {row['peak_memory_mb']:8.0f} MB",
                flush=True,
            )
    by_key = {(row["implementation"], row["precision"]): row for row in rows}
    ratios = {
        precision: {
            "asdseg_over_monai_seconds": by_key["asdseg", precision]["seconds"]
            / by_key["monai", precision]["seconds"],
            "asdseg_over_monai_peak_memory": by_key["asdseg", precision]["peak_memory_mb"]
            / by_key["monai", precision]["peak_memory_mb"],
        }
        for precision in args.precisions.split(",")
    }
    if "fp32" in ratios and "bf16" in ratios:
        ratios["bf16_over_fp32_seconds_asdseg"] = (
            by_key["asdseg", "bf16"]["seconds"] / by_key["asdseg", "fp32"]["seconds"]
        )
    print(json.dumps(ratios, indent=2))
    report = {
        "volume_shape": LA_SHAPE,
        "patch_size": PATCH,
        "overlap": args.overlap,
        "machine": machine,
        "rows": rows,
        "ratios": ratios,
    }
    with atomic_path(args.output) as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
