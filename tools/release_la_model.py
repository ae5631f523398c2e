"""Release a finished LA 2018 training run as a shipped left-atrium model.

Rebuilds the run's exported network from its last checkpoint and evaluates the float16 weights
that will ship. The evaluation covers the run's held-out cases (the last ``validation`` cases of
``train.list``) at their original 0.625 mm resolution, raw and with the largest component kept.
It also measures the calibration of the confidence map, and of the top softmax probability for
comparison. The run's own float32 weights are evaluated as well, so the card can show what
float16 storage changed. Then it writes into ``OUTPUT/NAME/``:

- ``model.pt`` (float16) and ``card.json`` (the full model card);
- ``validation.csv`` (per-case metrics);
- ``calibration.json`` (reliability bins) and ``calibration.png`` (reliability diagram).

Nothing is written until the evaluation has finished.

    python tools/release_la_model.py benchmark_results/la_compact/dan --name la-dan \\
        --output src/asdseg/models
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from asdseg.data_paths import require_la2018
from asdseg.evaluation.model_evaluation import (
    ModelEvaluation,
    ReferenceCase,
    evaluate_model,
    reference_cases,
)
from asdseg.machine import machine_line
from asdseg.networks import architecture_outputs
from asdseg.preprocessing.roi import median_field_of_view
from asdseg.progress import tqdm_progress
from asdseg.registry import DEFAULT_MODEL
from asdseg.registry.model_card import ModelCard
from asdseg.training.data import split_names
from asdseg.training.release import (
    FinishedRun,
    as_shipped,
    calibration_metrics,
    confidence_caveat,
    load_finished_run,
    validation_metrics,
    write_release,
)

DATA = (
    "LA 2018: the 2018 Atrial Segmentation Challenge's LGE-MRI (University of Utah; Xiong et al., "
    "Medical Image Analysis 2020), 80 cases as cropped by UA-MT / SASSNet, 0.625 mm isotropic"
)
LICENCE = (
    "Research use only, not for clinical use. The weights are derived from the 2018 Atrial "
    "Segmentation Challenge data, released for research use; cite Xiong et al., Medical Image "
    "Analysis 2020 when you report results. The code (this repository) is under Apache-2.0."
)
MODALITY = (
    "3D late gadolinium-enhanced cardiac MRI, cropped in x/y around the left atrium (as in the "
    "challenge crops of UA-MT / SASSNet), axial slices along the third image axis; any spacing "
    "(resampled to the card's spacing)"
)
LEFT_ATRIUM = {
    "value": 1,
    "name": "left atrium",
    "color": [220, 60, 60],
    "terminology": {
        "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "value": "82471001", "meaning": "Left atrium"},
    },
}
DESCRIPTIONS = {
    "sassnet": "SASSNet: VNet with a segmentation head and a signed-distance-map head, trained "
    "semi-supervised with an SDM discriminator. Gives the left atrium and its signed distance map.",
    "dan": "Difficulty-aware attention with confidence learning: enhanced UNet trained with organ-level "
    "focal Dice and confidence-weighted voxel CE, shipped with its confidence network. Gives the left "
    "atrium and a voxel-wise confidence map.",
    "asdnet": "ASDNet: SVNet segmenter with a fully convolutional confidence network, trained with "
    "sample-attention Dice, adversarial and confident-region semi-supervised losses. Gives the left "
    "atrium and a voxel-wise confidence map.",
    "attention-unet": "Attention-guided active learning's 3D U-Net with channel and spatial attention "
    "(one attention map per class), trained on the 16 labelled cases: the starting model of "
    "ActiveAnnotate on left-atrium scans. Gives the left atrium and, from its attention maps, the "
    "second prediction whose per-slice agreement (P-DSC) ranks the slices to label.",
}


def training_spacing(run: FinishedRun) -> list[float]:
    """The isotropic spacing the run trained at: its config's, else the data's 0.625 mm times its
    downsampling factor."""
    spacing = run.config.data.spacing
    return list(spacing) if spacing is not None else [0.625 * run.config.data.downsample] * 3


def preprocessing_notes(run: FinishedRun) -> str:
    spacing = training_spacing(run)
    resolution = "at 0.625 mm" if spacing == [0.625] * 3 else f"resampled to {spacing[0]:g} mm"
    return (
        f"Trained {resolution} with linear interpolation; at inference the input is resampled to "
        "the card's spacing and the result back to the input grid. Intensities: the volume as given "
        "(the challenge crop) is z-scored by its own mean and standard deviation; intensity.json is "
        "not used."
    )


#: Models trained on every labelled case have no unlabelled case, so the papers' semi-supervised
#: descriptions do not fit them.
ALL_LABELLED_DESCRIPTIONS = {
    "sassnet": "VNet with a segmentation head and a signed-distance-map head (SASSNet's network), "
    "trained with SASSNet's supervised terms. Gives the left atrium and its signed distance map.",
}


def description(recipe: str, names: dict[str, list[str]]) -> str:
    """What the model is and what it is for: the papers' 16-label reproduction, or a model
    trained on every labelled case we have (the product's default when it is :data:`DEFAULT_MODEL`)."""
    labelled, held_out = len(names["labelled"]), len(names["validation"])
    if labelled <= 16:
        return DESCRIPTIONS[recipe] + (
            f" The reproduction of the paper's setting ({labelled} labelled LA 2018 cases); "
            f"the default left-atrium model is {DEFAULT_MODEL}, trained on every labelled case."
        )
    return ALL_LABELLED_DESCRIPTIONS[recipe] + (
        f" Trained on all {labelled} labelled LA 2018 cases but the {held_out} validation cases "
        "(training.notes says which terms that leaves): the model to use on left-atrium scans."
    )


def weights_storage(network: nn.Module) -> str:
    """What the weights file holds, and why when it is over the 20 MB a git repository
    comfortably keeps."""
    parameters = sum(parameter.numel() for parameter in network.parameters())
    megabytes = 2 * parameters / 1e6
    text = f"float16, {parameters / 1e6:.2f} M parameters (about {megabytes:.1f} MB; twice that in float32)"
    if megabytes > 20:
        text += (
            ". Over 20 MB because the paper's architecture is kept as published (base width 16, full "
            "depth); a narrower network would be a different model."
        )
    return text


def training_minutes(run: FinishedRun, given: float | None) -> float:
    """The run's training minutes: ``--training-minutes`` if given, else what its checkpoint
    measured."""
    minutes = given if given is not None else run.training_minutes
    if minutes is None:
        raise SystemExit(
            "This run's checkpoint predates measured training time; give it with --training-minutes."
        )
    return minutes


def training_entry(run: FinishedRun, names: dict[str, list[str]], args: argparse.Namespace) -> dict[str, Any]:
    config = run.config.to_dict()
    config["data"]["root"] = "la2018"
    used = "used" if run.config.recipe in ("sassnet", "asdnet") else "not used by this recipe"
    entry = {
        "data": DATA,
        "protocol": (
            f"the first {len(names['labelled'])} cases of train.list labelled, the next "
            f"{len(names['unlabelled'])} unlabelled ({used}), the last {len(names['validation'])} "
            "held out for validation (the challenge's own test labels are not available)"
        ),
        "recipe": run.config.recipe,
        "steps": run.steps,
        "hardware": args.hardware,
        "training_minutes": training_minutes(run, args.training_minutes),
        **({"precision": run.precision} if run.precision else {}),
        **({"machine": machine_line(run.machine)} if run.machine else {}),
        "config": config,
        "split": names,
        "weights_storage": weights_storage(run.network),
        "notes": run.notes,
    }
    if run.started_from is not None:
        entry["started_from"] = run.started_from
    return entry


def card_data(
    run: FinishedRun, root: Path, names: dict[str, list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    architecture = run.architecture
    return {
        "name": args.name,
        "version": args.version,
        "description": description(run.config.recipe, names),
        "task": "left-atrium",
        "modality": MODALITY,
        "architecture": architecture,
        "outputs": architecture_outputs(architecture),
        "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]}, LEFT_ATRIUM],
        "preprocessing": {
            "spacing": training_spacing(run),
            "normalization": run.config.data.normalization,
            "field_of_view_mm": median_field_of_view(
                root / "train" / name / "image.nii.gz" for name in names["labelled"] + names["unlabelled"]
            ),
            "notes": preprocessing_notes(run),
        },
        "inference": {
            "patch_size": list(run.config.patch_size),
            "overlap": 0.5,
            "blend": "gaussian",
            "mirror_axes": args.mirror_axes,
        },
        "training": training_entry(run, names, args),
        "metrics": {},
        "license": LICENCE,
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }


def validate(what: str, card: ModelCard, network: nn.Module, cases: list[ReferenceCase]) -> ModelEvaluation:
    update, close = tqdm_progress(f"validating {what}")
    try:
        return evaluate_model(card, network, cases, progress=update)
    finally:
        close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished training run folder (holds checkpoint.pt)")
    parser.add_argument("--name", required=True, help="the model's name, e.g. la-dan")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--output", type=Path, default=Path("src/asdseg/models"))
    parser.add_argument("--hardware", default="2 CPU cores (x86-64), no GPU")
    parser.add_argument(
        "--training-minutes",
        type=float,
        help="this run's minutes (default: those its checkpoint measured; a run started from a "
        "model: that model's are in started_from)",
    )
    parser.add_argument(
        "--mirror-axes",
        type=int,
        nargs="*",
        choices=[0, 1, 2],
        default=[],
        help="test-time mirroring in the card (la-dan and la-sassnet ship with 0 1, the axial "
        "flips they train with; la-attention with none, so that P-DSC compares unaveraged heads)",
    )
    args = parser.parse_args()

    run = load_finished_run(args.run)
    root = Path(run.config.data.root) if Path(run.config.data.root).is_dir() else require_la2018()
    names = split_names(replace(run.config.data, root=str(root)))
    data = card_data(run, root, names, args)
    folder = args.output / args.name
    card, cases = ModelCard(data, folder), reference_cases(root, names["validation"])
    shipped = validate("the shipped model", card, as_shipped(run.network), cases)
    trained = validate("the trained run", card, run.network, cases)
    label = LEFT_ATRIUM["value"]
    data["metrics"] = {
        "validation": validation_metrics(shipped, label),
        "calibration": calibration_metrics(shipped),
        # What storing the weights as float16 changed (shipped minus the run's float32 weights).
        "float16_change": {
            "dice_raw": shipped.means()["raw"][label]["dice"] - trained.means()["raw"][label]["dice"]
        },
    }
    data["description"] += confidence_caveat(shipped)
    card = write_release(run, data, shipped, folder)
    print(json.dumps(card.data["metrics"], indent=2))
    print(f"Released {card.name} into {folder}")


if __name__ == "__main__":
    main()
