"""Several volumes in one ``asdseg segment`` call against one call per volume: the start-up
(Python, torch, MONAI, the model) is paid once instead of once per volume.

Times, side by side in one run, ``python -m asdseg segment`` on the last ``--cases`` LA 2018
cases of ``train.list`` one call each, then all of them in one call (``-i`` with every file,
``-o`` a folder), with the model card's test-time mirroring and with ``--no-mirroring``.
Writes ``benchmarks/results/segment_volumes.json``, one run per model and CPU, with the machine:
with bf16 where it is native the network's share shrinks and the start-up saved weighs more.

    python benchmarks/segment_volumes.py [--model la-sassnet-72] [--cases 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracked_runs import cpu_key, write_run

from asdseg.data_paths import require_la2018
from asdseg.io.datasets import case_names
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import DEFAULT_MODEL

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "segment_volumes.json"


def timed(arguments: list[str]) -> float:
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "asdseg", *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"asdseg {' '.join(arguments)} failed:\n{completed.stderr[-2000:]}")
    return time.monotonic() - started


def compare(model: str, images: list[Path], folder: Path, extra: list[str]) -> dict:
    """Seconds for one call per volume and for one call with every volume."""
    base = ["segment", "--model", model, "--progress", "json", *extra]
    separate = sum(
        timed([*base, "-i", str(image), "-o", str(folder / f"one-{index}.nii.gz")])
        for index, image in enumerate(images)
    )
    together = timed([*base, "-i", *map(str, images), "-o", str(folder / "together")])
    return {
        "separate_calls_s": round(separate, 1),
        "one_call_s": round(together, 1),
        "speed_up": round(separate / together, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    root = require_la2018()
    images = [root / "train" / name / "image.nii.gz" for name in case_names(root)[-args.cases :]]
    result: dict = {
        "machine": describe_machine(),
        "model": args.model,
        "volumes": len(images),
        "goal_speed_up": 2.0,
    }
    with tempfile.TemporaryDirectory(prefix="segment-volumes-") as folder:
        for setting, extra in (("card mirroring", []), ("no mirroring", ["--no-mirroring"])):
            result[setting] = compare(args.model, images, Path(folder), extra)
            print(f"{machine_line()}: {setting}: {result[setting]}", flush=True)
    write_run(args.output, result, lambda run: (run["model"], *cpu_key(run)))


if __name__ == "__main__":
    main()
