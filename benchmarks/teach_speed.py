"""How long a teach round takes: ``asdseg finetune`` of a shipped model on 3 LA 2018 volumes with
5 corrected slices each (the last 3 cases of ``train.list``, slices spread over the atrium),
200 steps and one in five slices held out, as ASDSeg's Teach runs it. The command is timed
end to end, and split where its output marks a stage's end: start-up, reading and
pseudo-labelling up to the first step; the steps; the end of the round (averaged weights,
BatchNorm statistics, the model written); the verdict on the held-out slices.
``teach_speed.json`` in ``--output`` keeps one run per model, patch, precision and CPU (its kernel
flags), with the machine: a round's time depends most on whether the CPU has native bf16.

    python benchmarks/teach_speed.py            # the default model (la-sassnet-72)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tracked_runs import cpu_key, write_run

from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.data_paths import require_la2018
from asdseg.io.datasets import case_names
from asdseg.io.image_io import image_to_array, read_image
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import DEFAULT_MODEL, find_model

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
VOLUMES, SLICES, STEPS = 3, 5, 200


def write_corrections(root: Path, folder: Path, model: str) -> list[str]:
    """``--image`` / ``--labels`` arguments for the last VOLUMES cases, SLICES slices each."""
    labels = find_model(model).labels
    images, label_paths = [], []
    for index, name in enumerate(case_names(root)[-VOLUMES:]):
        image = read_image(root / "train" / name / "image.nii.gz")
        label = image_to_array(read_image(root / "train" / name / "label.nii.gz"), np.int64)
        organ = [k for k in range(label.shape[2]) if label[:, :, k].any()]
        chosen = {organ[round(position)] for position in np.linspace(0, len(organ) - 1, SLICES)}
        images.append(folder / f"image-{index}.nrrd")
        label_paths.append(folder / f"labels-{index}.nii.gz")
        sitk.WriteImage(image, str(images[-1]))
        write_sparse_labels(SparseLabels(label, chosen), image, labels, label_paths[-1])
    return ["--image", *map(str, images), "--labels", *map(str, label_paths)]


def timed_stages(command: list[str], errors: Path) -> tuple[dict[str, float], int]:
    """Run ``command`` (``python -u``, ``--progress json``: every line arrives as it is printed)
    and note, in seconds from its start, when the first and the last step were reported, when
    the model was written and when it ended; with its exit code. Its standard error goes to
    ``errors``."""
    marks: dict[str, float] = {}
    started = time.monotonic()
    with (
        errors.open("w") as error_file,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=error_file, text=True) as process,
    ):
        for line in process.stdout:
            now = time.monotonic() - started
            if '"stage": "fine-tuning"' in line:
                marks.setdefault("first_step", now)
                marks["last_step"] = now
            elif line.startswith("wrote model"):
                marks["model_written"] = now
    marks["end"] = time.monotonic() - started
    return marks, process.returncode


def stage_seconds(marks: dict[str, float]) -> dict[str, float]:
    """The time between the marks of :func:`timed_stages`: up to the first step (start-up,
    reading, pseudo-labelling and the first step), the other steps, the round's end, the verdict."""
    edges = [0.0, marks["first_step"], marks["last_step"], marks["model_written"], marks["end"]]
    names = ["until the first step", "the other steps", "end of the round", "verdict"]
    return {name: round(edges[index + 1] - edges[index], 1) for index, name in enumerate(names)}


def run_key(run: dict) -> tuple:
    """What a new run replaces: the run of the same model, patch, precision and CPU."""
    return (
        run["model"],
        tuple(run.get("patch_size", ())),
        run["precision"],
        *cpu_key(run),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    root = require_la2018()
    with tempfile.TemporaryDirectory(prefix="teach-speed-") as folder:
        inputs = write_corrections(root, Path(folder), args.model)
        command = [sys.executable, "-u", "-m", "asdseg", "finetune", "--model", args.model, *inputs]
        command += ["--steps", str(STEPS), "--hold-out-every", "5", "--progress", "json"]
        command += ["--output-dir", str(Path(folder) / "round")]
        errors = Path(folder) / "stderr.txt"
        marks, code = timed_stages(command, errors)
        if code not in (0, 4):
            raise SystemExit(f"finetune failed:\n{errors.read_text()[-2000:]}")
        card = json.loads((Path(folder) / "round" / "model" / "card.json").read_text())
        patch_size = json.loads((Path(folder) / "round" / "config.json").read_text())["patch_size"]
    result = {
        "machine": describe_machine(),
        "model": args.model,
        "volumes": VOLUMES,
        "corrected_slices_per_volume": SLICES,
        "steps": STEPS,
        "patch_size": patch_size,
        "precision": card["training"]["precision"],
        "seconds": round(marks["end"], 1),
        "stage_seconds": stage_seconds(marks),
        "goal_seconds": 180,
    }
    write_run(args.output / "teach_speed.json", result, run_key)
    stages = ", ".join(f"{name} {value:.0f} s" for name, value in result["stage_seconds"].items())
    print(
        f"{machine_line()}: teach round of {STEPS} steps ({result['precision']}) on {VOLUMES} volumes: "
        f"{marks['end']:.0f} s ({stages})"
    )


if __name__ == "__main__":
    main()
