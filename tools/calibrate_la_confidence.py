"""Calibrate a shipped LA model's confidence map and derive its "check this result" flag.

The map is fitted (:mod:`asdseg.inference.confidence_calibration`) on LA cases the model never trained
on and that are not in its validation split: the unlabelled part of its split (the DAN recipe
does not use unlabelled cases, so their labels are unseen). The fit uses the voxels within 5 mm
of the prediction or the reference, where the map is read. The flag's threshold is the
expected error that best separates calibration cases below ``--poor-dice`` from the rest.

Then the calibrated map is measured on the validation split (ECE and error-detection AUROC,
all voxels and within 5 mm of the atrium, beside the raw map and the top softmax probability),
with each validation case's expected error, flag and Dice. Writes the calibration into the
model's card (and ``calibration.json``) only when the calibrated map meets ``--max-ece`` and
``--min-auroc`` near the atrium, and the figures to ``benchmarks/results/confidence_calibration/``.

    python tools/calibrate_la_confidence.py --model src/asdseg/models/la-dan
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from asdseg.data_paths import require_la2018
from asdseg.evaluation.calibration import ErrorDetection, ReliabilityBins
from asdseg.evaluation.metrics import dice
from asdseg.evaluation.model_evaluation import near_organ, reference_cases
from asdseg.inference.confidence_calibration import (
    ConfidenceCalibration,
    best_flag_threshold,
    features,
    fit_logistic,
)
from asdseg.inference.segment import SegmentationOptions, channel_array, segment_image
from asdseg.io.image_io import image_to_array
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine
from asdseg.registry import load_network, sha256_of
from asdseg.registry.model_card import ModelCard

MAPS = ("calibrated", "confidence network", "top softmax probability")


def case_maps(card: ModelCard, network, case) -> dict[str, np.ndarray]:
    """Raw confidence, top probability, prediction and reference of one case (fp32, CPU)."""
    result = segment_image(case.image, card, network, SegmentationOptions(device="cpu", precision="fp32"))
    return {
        "confidence": image_to_array(result.confidence),
        "top_probability": channel_array(result.probabilities).max(axis=0),
        "prediction": result.label_array(),
        "reference": image_to_array(case.reference, np.int64),
        "spacing": np.asarray(case.image.GetSpacing()),
    }


def fit(
    card: ModelCard, network, cases, band_mm: float, poor_dice: float, voxels: int
) -> ConfidenceCalibration:
    rng = np.random.default_rng(0)
    inputs, correct, kept = [], [], []
    for case in tqdm(cases, desc="calibration cases"):
        maps = case_maps(card, network, case)
        band = near_organ([maps["prediction"], maps["reference"]], maps["spacing"], band_mm)
        chosen = rng.choice(int(band.sum()), size=min(voxels, int(band.sum())), replace=False)
        inputs.append(features(maps["confidence"][band], maps["top_probability"][band])[chosen])
        correct.append((maps["prediction"] == maps["reference"])[band][chosen])
        kept.append(maps)
    weights = fit_logistic(np.concatenate(inputs), np.concatenate(correct))
    calibration = ConfidenceCalibration(tuple(float(weight) for weight in weights), band_mm)
    errors, scores = [], []
    for maps in kept:
        calibrated = calibration.apply(maps["confidence"], maps["top_probability"])
        errors.append(calibration.expected_error(calibrated, maps["prediction"], maps["spacing"]))
        scores.append(dice(maps["prediction"] > 0, maps["reference"] > 0))
    threshold = best_flag_threshold(np.asarray(errors), np.asarray(scores), poor_dice)
    return ConfidenceCalibration(calibration.weights, band_mm, threshold)


def validate(card: ModelCard, network, cases, calibration: ConfidenceCalibration) -> dict[str, Any]:
    bins = {name: {region: ReliabilityBins(15) for region in ("all", "near")} for name in MAPS}
    detection = {name: {region: ErrorDetection() for region in ("all", "near")} for name in MAPS}
    rows = []
    for case in tqdm(cases, desc="validation cases"):
        maps = case_maps(card, network, case)
        calibrated = calibration.apply(maps["confidence"], maps["top_probability"])
        correct = maps["prediction"] == maps["reference"]
        near = near_organ([maps["prediction"], maps["reference"]], maps["spacing"], calibration.band_mm)
        for name, values in zip(MAPS, (calibrated, maps["confidence"], maps["top_probability"]), strict=True):
            for region, where in (("all", None), ("near", near)):
                bins[name][region].add(values, correct, where)
                detection[name][region].add(values, correct, where)
        expected = calibration.expected_error(calibrated, maps["prediction"], maps["spacing"])
        rows.append(
            {
                "case": case.name,
                "dice": round(dice(maps["prediction"] > 0, maps["reference"] > 0), 4),
                "expected_error_near_organ": None if expected is None else round(expected, 4),
                "flagged": calibration.check_message(expected) is not None,
            }
        )
    figures = {
        name: {
            region: {
                "ece": bins[name][region].expected_calibration_error(),
                "error_auroc": detection[name][region].auroc(),
                "mean_confidence": bins[name][region].summary()["mean_confidence"],
                "accuracy": bins[name][region].summary()["accuracy"],
            }
            for region in ("all", "near")
        }
        for name in MAPS
    }
    return {"maps": figures, "cases": rows, "reliability_near": bins["calibrated"]["near"].summary()}


def write_card(
    model: Path, calibration: ConfidenceCalibration, results: dict[str, Any], fitted_on: str
) -> None:
    card_path = model / "card.json"
    card = json.loads(card_path.read_text())
    calibrated = results["maps"]["calibrated"]
    flagged = [row for row in results["cases"] if row["flagged"]]
    card["confidence_calibration"] = {**calibration.to_card(), "fitted_on": fitted_on}
    card["metrics"]["calibrated_confidence"] = {
        "ece_near_atrium": round(calibrated["near"]["ece"], 4),
        "error_auroc_near_atrium": round(calibrated["near"]["error_auroc"], 4),
        "ece_all_voxels": round(calibrated["all"]["ece"], 4),
        "error_auroc_all_voxels": round(calibrated["all"]["error_auroc"], 4),
        "flagged_validation_cases": [{"case": row["case"], "dice": row["dice"]} for row in flagged],
    }
    confidence_weight, probability_weight, _ = calibration.weights
    # Everything from the first sentence about the map on is this tool's, replaced on a refit.
    card["description"] = card["description"].split(" Its confidence map is ")[0] + (
        " Its confidence map is calibrated (a probability of being right; on the validation cases "
        f"within 5 mm of the atrium: ECE {100 * calibrated['near']['ece']:.1f} %, error-detection AUROC "
        f"{calibrated['near']['error_auroc']:.2f}), and a volume whose expected error near the atrium is "
        f"high is flagged 'check this result'. The calibration is fitted on {fitted_on} outside the "
        f"training and validation sets: a logistic model of the confidence network's logit (weight "
        f"{confidence_weight:+.2f}) and the top class probability's ({probability_weight:+.2f})."
    )
    if sha256_of(model / card["weights"]["file"]) != card["weights"]["sha256"]:
        raise SystemExit("the weights do not match the card; nothing written.")
    write_json(card_path, card)
    write_json(model / "confidence_calibration.json", results, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="src/asdseg/models/la-dan")
    parser.add_argument("--calibration-cases", type=int, default=16)
    parser.add_argument("--voxels-per-case", type=int, default=50_000)
    parser.add_argument("--poor-dice", type=float, default=0.85)
    parser.add_argument("--max-ece", type=float, default=0.05)
    parser.add_argument("--min-auroc", type=float, default=0.8)
    parser.add_argument("--results", default="benchmarks/results/confidence_calibration")
    args = parser.parse_args()
    root = require_la2018()
    model = Path(args.model)
    card = ModelCard.load(model / "card.json")
    if "confidence_calibration" in card.data:
        del card.data["confidence_calibration"]  # fit on the raw map
    network = load_network(card)
    split = card.data["training"]["split"]
    calibration_names = split["unlabelled"][: args.calibration_cases]
    calibration = fit(
        card, network, reference_cases(root, calibration_names), 5.0, args.poor_dice, args.voxels_per_case
    )
    results = validate(card, network, reference_cases(root, split["validation"]), calibration)
    results.update(
        calibration=calibration.to_card(),
        calibration_cases=calibration_names,
        machine=describe_machine(),
    )
    output = Path(args.results)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / f"{card.name}.json", results, indent=1)
    near = results["maps"]["calibrated"]["near"]
    print(json.dumps(results["maps"], indent=1))
    print(json.dumps(results["cases"], indent=1))
    if near["ece"] <= args.max_ece and near["error_auroc"] >= args.min_auroc:
        write_card(model, calibration, results, f"{len(calibration_names)} unlabelled-split LA cases")
        print(f"wrote the calibration into {model / 'card.json'}")
    else:
        print("the calibrated map misses the target near the atrium; the card is left as it was.")


if __name__ == "__main__":
    main()
