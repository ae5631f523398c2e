"""How long an annotator waits: from "Fine-tune" to the next suggestions, for one round.

One LA 2018 volume at its original resolution (0.625 mm) with every 16th axial slice labelled
(the ground truth's own slices), the attention model trained by
``benchmarks/attention_correlation.py`` (the shipped model's scale: 1.25 mm, 16 filters), the
default fine-tuning round of ActiveAnnotate (``asdseg.active.finetune.FineTuneSettings``), then
the re-scoring of every slice that gives the next suggestions. Times each part on this machine's
cores and writes ``benchmarks/results/annotator_wait/results.json`` with the machine.

    python benchmarks/annotator_wait.py --model benchmark_results/attention_correlation/model
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asdseg.active.finetune import FineTuneSettings, fine_tune, model_grid_case
from asdseg.active.sparse_labels import SparseLabels
from asdseg.active.suggest import suggest_slices
from asdseg.data_paths import require_la2018
from asdseg.io.datasets import case_names
from asdseg.io.image_io import image_to_array, read_image
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import load_network
from asdseg.registry.model_card import ModelCard

LABEL_EVERY = 16


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="benchmark_results/attention_correlation/model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=FineTuneSettings().steps, help="fine-tuning steps")
    parser.add_argument("--output", default="benchmarks/results/annotator_wait/results.json")
    args = parser.parse_args()
    root = require_la2018()
    torch.set_num_threads(args.threads)
    card = ModelCard.load(Path(args.model) / "card.json")
    name = case_names(root)[-1]
    image = read_image(root / "train" / name / "image.nii.gz")
    label = image_to_array(read_image(root / "train" / name / "label.nii.gz"), np.int64)
    labelled = set(range(0, label.shape[2], LABEL_EVERY))
    settings = FineTuneSettings(steps=args.steps)

    started = time.perf_counter()
    case = model_grid_case(image, SparseLabels(label, labelled), card, name)
    prepared = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result = fine_tune(card, [case], folder, settings, device="cpu")
        tuned = time.perf_counter()
        suggestion = suggest_slices(image, result.model, load_network(result.model), labelled, "p-dsc", 8)
        suggested = time.perf_counter()
    figures = {
        "case": name,
        "volume": list(image.GetSize()),
        "labelled_slices": len(labelled),
        "fine_tune_steps": settings.steps,
        "prepare_s": prepared - started,
        "fine_tune_s": tuned - prepared,
        "rescore_and_suggest_s": suggested - tuned,
        "total_s": suggested - started,
        "suggested_slices": [query.slice for query in suggestion.queries],
        "torch_threads": args.threads,
        "machine": describe_machine(),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, figures, indent=1)
    print(
        f"one round on {name}: fine-tune {figures['fine_tune_s']:.0f} s ({settings.steps} steps), "
        f"re-score + suggest {figures['rescore_and_suggest_s']:.0f} s, total {figures['total_s']:.0f} s "
        f"on {machine_line(figures['machine'])}"
    )


if __name__ == "__main__":
    main()
