"""Does P-DSC tell which slices the model gets wrong? The correlation benchmark on LA 2018.

An attention U-Net is trained on the 16 labelled LA volumes (the first 16 of ``train.list``);
then, on held-out volumes (the last ones of ``train.list``), every axial slice gets its
uncertainty scores (P-DSC with SR2 from the final stage's attention maps, the paper's design;
P-DSC with SR2 from the coarser stage's attention maps, the alternative; P-accuracy; entropy)
and its real Dice (SR1 against the reference). Reported, for organ slices (the reference or SR1
holds the atrium) and for all slices:

- Spearman's rank correlation between each score and the real Dice, pooled over the volumes and
  per volume (mean and range). Entropy is negated so that for every score, higher = surer.
- The paper's rank regression (its Fig. 4): the slope of the real-Dice rank against the score's
  rank, both as fractions of the slices.

Scores and Dice are computed on the model's grid (the training resolution), where the slices the
active-learning loop suggests live. Writes ``results.json``, ``results.md`` and ``scatter.png``.
Training is resumable (``--runs``); ``--evaluate-only`` skips it.

    python benchmarks/attention_correlation.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import linregress, rankdata, spearmanr

from asdseg.active.slice_scores import score_slices
from asdseg.data_paths import require_la2018
from asdseg.evaluation.metrics import dice
from asdseg.inference.sliding_window import WindowSettings, predict_volume
from asdseg.io.atomic_write import atomic_path
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.training.config import config_from_dict
from asdseg.training.data import Case
from asdseg.training.trainer import CHECKPOINT_FILE, Trainer

SETTING: dict[str, Any] = {
    "recipe": "attention-unet",
    "network": {"name": "attention-unet", "params": {"num_classes": 2, "base_filters": 16, "levels": 3}},
    "patch_size": [64, 64, 32],
    "batch_size": 2,
    "labelled_per_batch": 2,
    "steps": 1500,
    "lr_decay_every": 1000,
    "validate_every": 10**9,
    "checkpoint_every": 100,
    "data": {"labelled": 16, "validation": 20, "downsample": 2},
}
SCORES = ("p_dsc_final_maps", "p_dsc_coarse_maps", "p_accuracy_final_maps", "negative_entropy")


def train(root: Path, runs: Path, steps: int) -> Trainer:
    # the schedule keeps its shape at any length: the decay at two thirds of the run
    values = {**SETTING, "steps": steps, "lr_decay_every": max(1, round(2 * steps / 3))}
    values["data"] = {**SETTING["data"], "root": str(root)}
    trainer = Trainer(config_from_dict(values), runs, device="cpu")
    if (runs / CHECKPOINT_FILE).exists():
        trainer.resume()
    trainer.run(show_progress=True)
    return trainer


def slice_table(network: torch.nn.Module, case: Case, patch: list[int]) -> dict[str, np.ndarray]:
    """Per axial slice of ``case``: each score and the real Dice of SR1, and whether the slice
    holds the organ (in the reference or in SR1)."""
    settings = WindowSettings(tuple(patch), overlap=0.5)
    predictions = {}
    for source in ("final", "coarse"):
        network.sr2_source = source
        predictions[source] = predict_volume(network, case.image, settings, torch.device("cpu"))
    probabilities = predictions["final"]["probabilities"]
    final_scores = score_slices(probabilities, predictions["final"]["attention_probabilities"])
    coarse_scores = score_slices(probabilities, predictions["coarse"]["attention_probabilities"])
    segmentation, reference = probabilities.argmax(axis=0) > 0, case.label > 0
    real = np.array([dice(segmentation[:, :, k], reference[:, :, k]) for k in range(reference.shape[2])])
    return {
        "real_dice": real,
        "organ": reference.any(axis=(0, 1)) | segmentation.any(axis=(0, 1)),
        "p_dsc_final_maps": final_scores.p_dsc,
        "p_dsc_coarse_maps": coarse_scores.p_dsc,
        "p_accuracy_final_maps": final_scores.p_accuracy,
        "negative_entropy": -final_scores.entropy,
        "volume_dice": np.array(dice(segmentation, reference)),
    }


def rank_regression_slope(score: np.ndarray, real: np.ndarray) -> float | None:
    """The paper's Fig. 4: real-Dice rank against score rank (fractions), the fitted slope;
    None when the score is the same on every slice (it ranks nothing)."""
    if np.ptp(score) == 0:
        return None
    return float(linregress(rankdata(score) / len(score), rankdata(real) / len(real)).slope)


def spearman(score: np.ndarray, real: np.ndarray) -> float | None:
    """Spearman's rho; None where either side is constant."""
    if len(score) < 3 or np.ptp(score) == 0 or np.ptp(real) == 0:
        return None
    return float(spearmanr(score, real).statistic)


def correlations(tables: list[dict[str, np.ndarray]], organ_only: bool) -> dict[str, Any]:
    chosen = [table["organ"] if organ_only else np.ones_like(table["organ"]) for table in tables]
    real = np.concatenate([table["real_dice"][mask] for table, mask in zip(tables, chosen, strict=True)])
    summary: dict[str, Any] = {"slices": len(real)}
    for name in SCORES:
        pooled = np.concatenate([table[name][mask] for table, mask in zip(tables, chosen, strict=True)])
        per_volume = [
            rho
            for table, mask in zip(tables, chosen, strict=True)
            if (rho := spearman(table[name][mask], table["real_dice"][mask])) is not None
        ]
        summary[name] = {
            "spearman_pooled": spearman(pooled, real),
            "spearman_per_volume_mean": float(np.mean(per_volume)) if per_volume else None,
            "spearman_per_volume_min": float(np.min(per_volume)) if per_volume else None,
            "spearman_per_volume_max": float(np.max(per_volume)) if per_volume else None,
            "rank_regression_slope": rank_regression_slope(pooled, real),
        }
    return summary


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Attention U-Net trained on the 16 labelled LA cases ({results['steps']} steps, 2x downsampled, "
        f"validation Dice {100 * results['mean_volume_dice']:.2f} % on {results['volumes']} held-out volumes "
        "at the model grid). Spearman between each slice score and the slice's real Dice of SR1.",
        "",
        "| slices | score | Spearman pooled | per volume mean [min, max] | rank-regression slope |",
        "|---|---|---|---|---|",
    ]
    for subset in ("organ_slices", "all_slices"):
        entry = results[subset]
        for name in SCORES:
            figures = entry[name]
            per_volume = (
                "—"
                if figures["spearman_per_volume_mean"] is None
                else f"{figures['spearman_per_volume_mean']:.3f} [{figures['spearman_per_volume_min']:.2f}, "
                f"{figures['spearman_per_volume_max']:.2f}]"
            )
            pooled, slope = figures["spearman_pooled"], figures["rank_regression_slope"]
            lines.append(
                f"| {subset.replace('_', ' ')} ({entry['slices']}) | {name} | "
                f"{'—' if pooled is None else f'{pooled:.3f}'} | {per_volume} | "
                f"{'—' if slope is None else f'{slope:.3f}'} |"
            )
    lines += ["", f"Machine: {machine_line(results['machine'])}"]
    return "\n".join(lines) + "\n"


def save_scatter(tables: list[dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 4), constrained_layout=True)
    for axis, name in zip(axes, SCORES, strict=True):
        for table in tables:
            mask = table["organ"]
            axis.scatter(table[name][mask], table["real_dice"][mask], s=4, alpha=0.4)
        axis.set_xlabel(name.replace("_", " "))
        axis.set_ylabel("real slice Dice (SR1)")
    figure.suptitle("LA held-out volumes, organ slices (one colour per volume)")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=SETTING["steps"])
    parser.add_argument("--volumes", type=int, default=20, help="held-out volumes to score")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="benchmark_results/attention_correlation")
    parser.add_argument("--results", default="benchmarks/results/attention_correlation")
    args = parser.parse_args()
    root = require_la2018()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    trainer = train(root, Path(args.runs), args.steps)
    training_minutes = (time.monotonic() - started) / 60
    network = trainer.recipe.networks["segmenter"].eval()
    cases = trainer.split.validation[: args.volumes]
    tables = [slice_table(network, case, SETTING["patch_size"]) for case in cases]
    results = {
        "steps": trainer.step,
        "training_minutes_this_process": training_minutes,
        "volumes": len(cases),
        "cases": [case.name for case in cases],
        "mean_volume_dice": float(np.mean([table["volume_dice"] for table in tables])),
        "organ_slices": correlations(tables, organ_only=True),
        "all_slices": correlations(tables, organ_only=False),
        "machine": describe_machine(),
    }
    output = Path(args.results)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "results.json", results, indent=1)
    with atomic_path(output / "results.md") as temporary:
        temporary.write_text(markdown(results), encoding="utf-8")
    save_scatter(tables, output / "scatter.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
