"""What ASDNet's semi-supervised term learns from: its confidence gate, checked on LA 2018.

ASDNet's Eq. 6 trains the segmenter, on unlabelled voxels whose confidence exceeds gamma, towards
its own argmax. That adds information only if the gate keeps the voxels the segmenter gets right
and drops the ones it gets wrong; a wrong voxel the gate keeps is a mistake the term reinforces.
LA 2018's unlabelled cases have labels (this project withholds them from training), so the gate
can be checked against them. For a trained ASDNet run, on the unlabelled cases of its split, at
the gamma the run ended with (1 - its running labelled Dice) and at stricter ones, this reports:
the share of voxels the gate keeps, their accuracy beside that of all voxels, and the share of
the segmenter's wrong voxels it keeps; and the confidence map's error-detection AUROC beside the
top softmax probability's. All voxels and within 5 mm of the predicted or true atrium, at the
cases' original resolution (the model's maps resampled, as Slicer shows them).

    python benchmarks/asdnet_confidence_gate.py \
        --run benchmark_results/semi_supervised_ablation/asdnet--svnet--ce---dice-seed1

Writes ``results.json`` and ``results.md`` to ``benchmarks/results/asdnet_confidence_gate/``.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from asdseg.data_paths import require_la2018
from asdseg.evaluation.calibration import ErrorDetection
from asdseg.evaluation.model_evaluation import near_organ, reference_cases
from asdseg.inference.segment import SegmentationOptions, channel_array, segment_image
from asdseg.io.atomic_write import atomic_path
from asdseg.io.image_io import image_to_array
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import find_model, load_network
from asdseg.training.config import config_from_dict, read_config_values
from asdseg.training.data import split_names

#: Gates to compare with the run's own (the reference's 1 - Dice): whether any gamma keeps cleaner
#: voxels. 0.5 is the fixed gamma this project used before the reference's.
OTHER_GAMMAS = (0.5, 0.9, 0.99)
REGIONS = ("all voxels", "within 5 mm of the atrium")
NEAR_MM = 5.0


@dataclass
class GateCounts:
    """Voxel counts of one region: all, wrong, and kept by each gamma (all and wrong)."""

    gammas: tuple[float, ...]
    voxels: int = 0
    wrong: int = 0
    kept: dict[float, int] = field(default_factory=dict)
    kept_wrong: dict[float, int] = field(default_factory=dict)

    def add(self, confidence: np.ndarray, wrong: np.ndarray) -> None:
        self.voxels += confidence.size
        self.wrong += int(wrong.sum())
        for gamma in self.gammas:
            gate = confidence > gamma
            self.kept[gamma] = self.kept.get(gamma, 0) + int(gate.sum())
            self.kept_wrong[gamma] = self.kept_wrong.get(gamma, 0) + int((gate & wrong).sum())

    def summary(self) -> dict[str, Any]:
        """Per gamma: share of voxels kept, accuracy of the kept ones, share of the errors kept."""
        rows = {}
        for gamma in self.gammas:
            kept, kept_wrong = self.kept[gamma], self.kept_wrong[gamma]
            rows[f"{gamma:.4g}"] = {
                "kept_share": kept / self.voxels,
                "kept_accuracy": 1 - kept_wrong / kept if kept else None,
                "errors_kept_share": kept_wrong / self.wrong if self.wrong else None,
            }
        return {"voxels": self.voxels, "accuracy": 1 - self.wrong / self.voxels, "gammas": rows}


def final_gamma(run: Path) -> float:
    """The gamma the run's last logged step used (ASDNet logs it every step)."""
    with (run / "log.csv").open(newline="") as handle:
        values = [row["gamma"] for row in csv.DictReader(handle) if row.get("gamma")]
    if not values:
        raise SystemExit(f"{run / 'log.csv'} logs no gamma: is {run} an ASDNet run?")
    return float(values[-1])


def measure(run: Path, root: Path, count: int) -> dict[str, Any]:
    card = find_model(str(run / "model"))
    if not card.has_confidence:
        raise SystemExit(f"{run / 'model'} has no confidence network; give an ASDNet run.")
    network = load_network(card)
    gamma = final_gamma(run)
    gammas = tuple(sorted({gamma, *OTHER_GAMMAS}))
    counts = {region: GateCounts(gammas) for region in REGIONS}
    detection = {
        (name, region): ErrorDetection()
        for name in ("confidence network", "top softmax")
        for region in REGIONS
    }
    data = config_from_dict(read_config_values(run / "config.json")).data
    names = split_names(replace(data, root=str(root)))["unlabelled"][:count]
    options = SegmentationOptions(device="cpu", precision="fp32")
    for case in tqdm(reference_cases(root, names), desc="unlabelled cases"):
        result = segment_image(case.image, card, network, options)
        prediction = result.label_array()
        reference = image_to_array(case.reference, np.int64)
        maps = {
            "confidence network": image_to_array(result.confidence),
            "top softmax": channel_array(result.probabilities).max(axis=0),
        }
        correct = prediction == reference
        near = near_organ([prediction, reference], case.image.GetSpacing(), NEAR_MM)
        for region, where in zip(REGIONS, (np.ones_like(near), near), strict=True):
            counts[region].add(maps["confidence network"][where], ~correct[where])
            for name, values in maps.items():
                detection[name, region].add(values, correct, where)
    return {
        "run": str(run),
        "final_gamma": gamma,
        "cases": names,
        "regions": {
            region: {
                **counts[region].summary(),
                "error_auroc": {name: detection[name, region].auroc() for name in maps},
            }
            for region in REGIONS
        },
        "machine": describe_machine(),
    }


def markdown(results: dict[str, Any]) -> str:
    gamma = results["final_gamma"]
    lines = [
        f"ASDNet run `{results['run']}`: its confidence gate on {len(results['cases'])} unlabelled "
        f"cases of its split, against their withheld labels. The run ended with gamma = {gamma:.3f} "
        "(1 - running labelled Dice); the other gammas are shown for comparison.",
        "",
        "| region | gamma | voxels kept % | accuracy of kept % | accuracy of all % | wrong voxels kept % |",
        "|---|---|---|---|---|---|",
    ]
    for region, entry in results["regions"].items():
        for key, row in entry["gammas"].items():
            accuracy = "—" if row["kept_accuracy"] is None else f"{100 * row['kept_accuracy']:.2f}"
            errors = "—" if row["errors_kept_share"] is None else f"{100 * row['errors_kept_share']:.1f}"
            lines.append(
                f"| {region} | {key} | {100 * row['kept_share']:.1f} | {accuracy} | "
                f"{100 * entry['accuracy']:.2f} | {errors} |"
            )
    lines += ["", "| region | error-detection AUROC, confidence network | top softmax probability |"]
    lines.append("|---|---|---|")
    for region, entry in results["regions"].items():
        auroc = {
            name: "—" if value is None else f"{value:.3f}" for name, value in entry["error_auroc"].items()
        }
        lines.append(f"| {region} | {auroc['confidence network']} | {auroc['top softmax']} |")
    lines += ["", "Machine: " + machine_line(results["machine"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, type=Path, help="an ASDNet training run folder")
    parser.add_argument("--cases", type=int, default=10, help="how many unlabelled cases (in split order)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/asdnet_confidence_gate"))
    args = parser.parse_args()
    root = require_la2018()
    torch.set_num_threads(args.threads)
    results = measure(args.run, root, args.cases)
    table = markdown(results)
    write_json(args.results / "results.json", results, indent=1)
    with atomic_path(args.results / "results.md") as temporary:
        temporary.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
