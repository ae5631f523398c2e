"""The main job (``asdseg demo``): segment a default input end to end and report how well.

* When a trained left-atrium model is installed (several ship with the package) and the LA 2018
  data is found (``../shared/data/la2018`` beside the repository, or ``$ASDSEG_LA2018``), it
  segments the last case of ``train.list`` (a validation case none of the models trained on)
  with the default model (:data:`asdseg.registry.DEFAULT_MODEL`), or the one ``--model`` names,
  and evaluates it.
* Otherwise (a fresh clone without the data) it trains the small phantom model once, until it
  segments held-out phantoms well (a minute or two on a CPU; :mod:`asdseg.demo.phantom_model`), makes
  a synthetic phantom with non-trivial geometry, segments and evaluates it.

Either way it writes the input, the label map with its sidecars, the SDM / confidence when the
model has them, a metrics CSV and an overlay PNG into the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.data_paths import LA2018_MISSING, find_la2018
from asdseg.demo.phantom_model import ensure_demo_model
from asdseg.errors import InputError
from asdseg.evaluation.evaluate_predictions import evaluate_label_maps, format_table, write_csv
from asdseg.evaluation.figures import save_overlay_png
from asdseg.inference.segment import SegmentationOptions, segment_image, write_result
from asdseg.io.image_io import image_to_array, read_image, write_image
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.progress import tqdm_progress
from asdseg.registry import default_model, find_model, load_network
from asdseg.registry.model_card import ModelCard

LA_TASK = "left-atrium"

#: What the demo writes into its output folder besides the label sidecars and the SDM or
#: confidence map; checked before any work.
DEMO_OUTPUTS = (
    "input.nii.gz",
    "reference.nii.gz",
    "segmentation.nii.gz",
    "segmentation.labels.json",
    "segmentation.ctbl",
    "segmentation.itksnap.txt",
    "confidence.nii.gz",
    "sdm.nii.gz",
    "metrics.csv",
    "overlay.png",
)

#: Where the demo reports what it is doing (print in the terminal).
Say = Callable[[str], None]


@dataclass
class DemoInput:
    image: sitk.Image
    reference: sitk.Image
    description: str


def la_input(data: Path) -> DemoInput:
    case = (data / "train.list").read_text().split()[-1]
    folder = data / "train" / case
    return DemoInput(
        read_image(folder / "image.nii.gz"),
        read_image(folder / "label.nii.gz"),
        f"LA 2018 validation case {case}",
    )


def phantom_input() -> DemoInput:
    image, label = phantom_image(
        make_phantom(shape=(56, 52, 44), seed=2026),
        spacing=(0.9, 1.0, 1.1),
        origin=(-25.0, 40.0, 12.5),
        direction=(0, -1, 0, 1, 0, 0, 0, 0, 1),
    )
    return DemoInput(image, label, "synthetic phantom (seed 2026, rotated, 0.9 x 1.0 x 1.1 mm)")


def choose_la_model(model: str | None) -> ModelCard | None:
    """``model`` (which must segment the left atrium), else the default model where it is a
    left-atrium one, else None."""
    if model is not None:
        card = find_model(model)
        if card.data["task"] != LA_TASK:
            raise InputError(
                f"model {model!r} segments {card.data['task']!r}; the demo runs a {LA_TASK!r} model on "
                "LA 2018. Leave out --model, or try your model with 'asdseg segment'."
            )
        return card
    card = default_model()
    return card if card is not None and card.data["task"] == LA_TASK else None


def choose_model_and_input(say: Say, model: str | None = None) -> tuple[ModelCard, DemoInput]:
    la_model = choose_la_model(model)
    data = find_la2018()
    if la_model is not None and data is not None:
        return la_model, la_input(data)
    if la_model is None:
        say("No trained left-atrium model is installed: running the phantom demo instead.")
    else:
        say(f"{LA2018_MISSING} Running the phantom demo.")
    card = ensure_demo_model(
        progress=lambda step, steps, loss: (
            say(f"  step {step} (at most {steps}) loss {loss:.3f}") if step % 40 == 0 else None
        ),
        say=say,
    )
    return card, phantom_input()


def run_demo(
    output_dir: Path, say: Say = print, options: SegmentationOptions | None = None, model: str | None = None
) -> dict:
    """Run the main job (with the left-atrium ``model`` when given); returns the per-label
    metrics it printed."""
    card, demo_input = choose_model_and_input(say, model)
    say(f"Model: {card.name}. Input: {demo_input.description}.")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_image(demo_input.image, output_dir / "input.nii.gz")
    write_image(demo_input.reference, output_dir / "reference.nii.gz")
    options = options or SegmentationOptions(largest_component=True)
    update, close = tqdm_progress("segmenting")
    try:
        result = segment_image(
            demo_input.image, card, load_network(card), options, demo_input.description, update
        )
    finally:
        close()
    written = write_result(
        result,
        output_dir / "segmentation.nii.gz",
        confidence_path=output_dir / "confidence.nii.gz" if result.confidence is not None else None,
        sdm_path=output_dir / "sdm.nii.gz" if result.sdm else None,
    )
    prediction = result.label_array()
    reference = image_to_array(demo_input.reference, np.int64)
    values = [label.value for label in card.foreground_labels]
    metrics = evaluate_label_maps(prediction, reference, demo_input.image.GetSpacing(), values)
    rows = [{"case": demo_input.description, "label": value, **m.as_dict()} for value, m in metrics.items()]
    write_csv(rows, output_dir / "metrics.csv")
    extra, title, extra_range = None, "", None
    if result.confidence is not None:
        extra, title, extra_range = image_to_array(result.confidence), "confidence", (0.0, 1.0)
    elif result.sdm:
        extra = image_to_array(next(iter(result.sdm.values())))
        title, extra_range = "signed distance map", (-1.0, 1.0)
    save_overlay_png(
        image_to_array(demo_input.image),
        prediction,
        card.labels,
        output_dir / "overlay.png",
        extra,
        title,
        reference,
        extra_range,
    )
    for warning in result.warnings:
        say(f"warning: {warning}")
    say(format_table(rows))
    say(
        "Wrote: "
        + ", ".join(str(path) for path in [*written, output_dir / "metrics.csv", output_dir / "overlay.png"])
    )
    return {value: m.as_dict() for value, m in metrics.items()}
