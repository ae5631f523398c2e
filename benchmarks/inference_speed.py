"""Inference speed of every shipped model on an LA-sized volume: ``asdseg segment`` end to end
(process start to files written) against the network's own time over the same windows, at fp32
and at ``auto`` precision (bf16 where the CPU computes it natively, fp32 elsewhere).

End to end is the wall time of ``python -m asdseg segment`` writing the label map and the
model's extra map (confidence or SDM), with the peak resident memory of that process. The warm
engine's figures are the same segmentation sent 1 + REPEATS times to one
:class:`asdseg.warm_engine.WarmEngine`, with the ASDSeg module's file types (an uncompressed
.nrrd volume in, .nrrd maps out, not NIfTI): the clicks after the first run with torch and the
model already loaded (their median is kept). The cold end-to-end run is a single run, so its
overhead also holds the first forward pass's one-time costs (oneDNN's kernel set-up). The
network's time is measured in a separate process that runs the same pipeline
(:func:`asdseg.inference.segment.segment_image`, REPEATS times, the median kept) with a timer
around each forward pass, so the windows, batches and precision are the same; their ratio is the
overhead of everything else (starting Python and torch, reading, resampling, blending, writing).
The volume is the first held-out LA 2018 case when ``../shared`` is there, else a synthetic
volume of the same size and spacing.

Prints a table and writes the figures, with the machine (CPU model and flags, GPU, torch:
:func:`asdseg.machine.describe_machine`), to ``benchmarks/results/inference_speed.json``, which
is kept in git. Not a test: the numbers depend on the machine.

    python benchmarks/inference_speed.py [--models la-sassnet-72 la-dan la-sassnet la-attention] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "inference_speed.json"
SHIPPED = ("la-sassnet-72", "la-dan", "la-sassnet", "la-attention")  #: the default model first
LA_SIZE = (206, 143, 88)  # the first held-out LA 2018 case, voxels of 0.625 mm
LA_SPACING = (0.625, 0.625, 0.625)
#: In-process segmentations and warm-engine clicks after the first, of which the median is kept:
#: single runs of the same segmentation varied by up to 20 % on the 2-core machines.
REPEATS = 3


def benchmark_volume(folder: Path) -> tuple[Path, str]:
    """The first held-out LA 2018 case, or a synthetic volume of its size and spacing."""
    from asdseg.data_paths import find_la2018
    from asdseg.io.datasets import case_names

    root = find_la2018()
    if root is not None:
        name = case_names(root)[-20]
        return root / "train" / name / "image.nii.gz", f"LA 2018 case {name}"
    import numpy as np
    import SimpleITK as sitk

    array = np.random.default_rng(0).normal(100.0, 20.0, size=LA_SIZE[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(LA_SPACING)
    path = folder / "synthetic.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, "synthetic volume of LA size"


def extra_output_option(model: str) -> str | None:
    """The option that writes the model's extra map, as a user asks for it in Slicer."""
    from asdseg.registry import find_model

    card = find_model(model)
    return "--confidence" if card.has_confidence else "--sdm" if card.has_sdm else None


def thread_environment(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def segment_arguments(model: str, volume: Path, precision: str, folder: Path, name: str) -> list[str]:
    """``asdseg segment``'s arguments as a user gives them on the command line: NIfTI in and out,
    the label map and the model's extra map."""
    extra = extra_output_option(model)
    arguments = ["segment", "-i", str(volume), "-o", str(folder / f"{name}.nii.gz")]
    arguments += ["--model", model, "--device", "cpu", "--precision", precision]
    return arguments + ([extra, str(folder / f"{name}-extra.nii.gz")] if extra else [])


def end_to_end(model: str, volume: Path, precision: str, folder: Path, threads: int) -> dict:
    """Wall time and peak RSS of ``asdseg segment`` in its own process."""
    command = [sys.executable, "-m", "asdseg", *segment_arguments(model, volume, precision, folder, "labels")]
    environment = thread_environment(threads)
    with (folder / "segment.log").open("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{log.read()}")
    return {"end_to_end_s": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def slicer_arguments(model: str, volume: Path, precision: str, folder: Path, name: str) -> list[str]:
    """``asdseg segment``'s arguments with the ASDSeg module's file types
    (ASDSegLib.segmentation_run): the volume as an uncompressed .nrrd, the outputs as .nrrd files.
    Its default largest-component step is left out, as in the command-line rows."""
    extra = extra_output_option(model)
    arguments = ["segment", "--model", model, "--device", "cpu", "--precision", precision]
    arguments += [extra, str(folder / f"{name}-extra.nrrd")] if extra else []
    return [*arguments, "--input", str(volume), "--output", str(folder / f"{name}.nrrd")]


def warm_engine(model: str, volume: Path, precision: str, folder: Path, threads: int) -> dict:
    """Wall time of the first Segment through a warm engine (:mod:`asdseg.warm_engine`) and the
    median of the REPEATS after it, which find the engine and the model loaded, as Slicer's
    clicks after the first do."""
    import SimpleITK as sitk

    from asdseg.background import JobState, engine_environment
    from asdseg.warm_engine import WarmEngine

    slicer_volume = folder / "input.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(volume)), str(slicer_volume), useCompression=False)
    engine = WarmEngine(environment=engine_environment(thread_environment(threads)))
    try:
        seconds = []
        for click in range(1 + REPEATS):
            started = time.perf_counter()
            job = engine.submit(slicer_arguments(model, slicer_volume, precision, folder, f"click-{click}"))
            if job.wait() is not JobState.SUCCEEDED:
                raise SystemExit(f"the warm engine's segment failed: {job.error}")
            seconds.append(time.perf_counter() - started)
    finally:
        engine.shutdown()
    return {"warm_first_s": seconds[0], "warm_second_s": statistics.median(seconds[1:])}


def network_time(model: str, volume: Path, precision: str) -> dict:
    """The network's own time over the windows of one segmentation (run in a subprocess)."""
    import torch
    from torch import nn

    from asdseg.inference.segment import SegmentationOptions, segment_image
    from asdseg.io.image_io import read_image
    from asdseg.registry import find_model, load_network

    class TimedNetwork(nn.Module):
        def __init__(self, network: nn.Module) -> None:
            super().__init__()
            self.network, self.seconds, self.calls = network, 0.0, 0

        def forward(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
            started = time.perf_counter()
            outputs = self.network(windows)
            self.seconds += time.perf_counter() - started
            self.calls += 1
            return outputs

    card = find_model(model)
    timed = TimedNetwork(load_network(card))
    image = read_image(volume)
    network_seconds, in_process_seconds = [], []
    for _ in range(REPEATS):
        timed.seconds, timed.calls, started = 0.0, 0, time.perf_counter()
        segment_image(image, card, timed, SegmentationOptions(device="cpu", precision=precision))
        in_process_seconds.append(time.perf_counter() - started)
        network_seconds.append(timed.seconds)
    return {
        "network_s": statistics.median(network_seconds),
        "segment_in_process_s": statistics.median(in_process_seconds),
        "windows": timed.calls,  # one window per forward pass (batch size 1, the CLI's default)
        "resolved_precision": resolved_precision(precision),
    }


def torch_import_seconds(threads: int, repeats: int = 3) -> float:
    """Median wall time of a Python process that only imports torch: the floor under every
    command's cold start, since segmenting needs torch."""
    command = [sys.executable, "-c", "import torch"]
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, env=thread_environment(threads), check=True)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def resolved_precision(precision: str) -> str:
    import torch

    from asdseg.devices import auto_precision

    return auto_precision(torch.device("cpu")) if precision == "auto" else precision


def measure(model: str, volume: Path, precision: str, folder: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--network-only", model, str(volume), precision]
    completed = subprocess.run(
        command, env=thread_environment(threads), capture_output=True, text=True, check=True
    )
    row = {"model": model, "precision": precision, **json.loads(completed.stdout.strip().splitlines()[-1])}
    row.update(end_to_end(model, volume, precision, folder, threads))
    row.update(warm_engine(model, volume, precision, folder, threads))
    row["end_to_end_over_network"] = row["end_to_end_s"] / row["network_s"]
    row["cold_overhead_s"] = row["end_to_end_s"] - row["network_s"]
    row["warm_second_over_network"] = row["warm_second_s"] / row["network_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(SHIPPED))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--network-only", nargs=3, metavar=("MODEL", "VOLUME", "PRECISION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.network_only:
        model, volume, precision = args.network_only
        print(json.dumps(network_time(model, Path(volume), precision)))
        return 0

    from asdseg.io.json_files import write_json
    from asdseg.machine import describe_machine, machine_line

    machine = describe_machine()
    print(f"machine: {machine_line(machine)}, {args.threads} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        volume, described = benchmark_volume(Path(temporary))
        print(f"volume: {described}", flush=True)
        for model in args.models:
            for precision in args.precisions:
                rows.append(measure(model, volume, precision, Path(temporary), args.threads))
                row = rows[-1]
                print(
                    f"{model:13s} {precision:4s} ({row['resolved_precision']}): end to end "
                    f"{row['end_to_end_s']:6.1f} s, network {row['network_s']:6.1f} s "
                    f"({row['windows']} windows), ratio {row['end_to_end_over_network']:.2f}, "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB; warm engine's second segment "
                    f"{row['warm_second_s']:.1f} s (ratio {row['warm_second_over_network']:.2f})",
                    flush=True,
                )
    torch_import = torch_import_seconds(args.threads)
    print(f"python -c 'import torch': {torch_import:.2f} s", flush=True)
    result = {
        "volume": described,
        "threads": args.threads,
        "torch_import_s": torch_import,
        "rows": rows,
        "machine": machine,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
