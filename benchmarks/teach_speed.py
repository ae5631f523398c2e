"""How long a teach round takes: ``asdseg finetune`` of a shipped model on 3 LA 2018 volumes with
5 corrected slices each (the last 3 cases of ``train.list``, slices spread over the atrium),
200 steps and one in five slices held out, as ASDSeg's Teach runs it. The command is timed
end to end (start-up, resampling, training, judging), and ``teach_speed.json`` with the
machine and the precision the round trained in is written to ``--output``.

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

from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.data_paths import require_la2018
from asdseg.io.image_io import image_to_array, read_image
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import DEFAULT_MODEL, find_model
from asdseg.training.data import case_names

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    root = require_la2018()
    with tempfile.TemporaryDirectory(prefix="teach-speed-") as folder:
        inputs = write_corrections(root, Path(folder), args.model)
        command = [sys.executable, "-m", "asdseg", "finetune", "--model", args.model, *inputs]
        command += ["--steps", str(STEPS), "--hold-out-every", "5", "--progress", "json"]
        command += ["--output-dir", str(Path(folder) / "round")]
        started = time.monotonic()
        finished = subprocess.run(command, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if finished.returncode not in (0, 4):
            raise SystemExit(f"finetune failed:\n{finished.stderr[-2000:]}")
        card = json.loads((Path(folder) / "round" / "model" / "card.json").read_text())
    result = {
        "machine": describe_machine(),
        "model": args.model,
        "volumes": VOLUMES,
        "corrected_slices_per_volume": SLICES,
        "steps": STEPS,
        "precision": card["training"]["precision"],
        "seconds": round(seconds, 1),
        "goal_seconds": 180,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "teach_speed.json", result)
    print(
        f"{machine_line()}: teach round of {STEPS} steps ({result['precision']}) on {VOLUMES} volumes: "
        f"{seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
