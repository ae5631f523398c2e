"""Segmenting one volume with one model, outputs on exactly the input's voxel grid.

This is the single entry point used by the CLI, which both Slicer modules run in a child process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from asdseg.devices import select_device
from asdseg.errors import InputError, NumericalError
from asdseg.inference.confidence_calibration import ConfidenceCalibration
from asdseg.inference.postprocessing import ComponentReport, keep_largest_component
from asdseg.inference.sliding_window import card_window_settings, predict_volume
from asdseg.io.image_io import array_to_image, check_volume_shape, image_to_array
from asdseg.io.labels import Label, label_pixel_type, sdm_output_paths, sidecar_paths, write_label_map
from asdseg.preprocessing.input_checks import DEFAULT_MAX_ANISOTROPY, check_intensities, check_spacing
from asdseg.preprocessing.roi import RegionOfInterest, segmentation_region
from asdseg.preprocessing.transforms import (
    CropBox,
    foreground_box,
    normalize_intensity,
    resample_like,
    resample_to_spacing,
    uncrop,
)
from asdseg.progress import CancelToken, ProgressCallback
from asdseg.registry.model_card import ModelCard


@dataclass(frozen=True)
class SegmentationOptions:
    """What the user may choose per run; ``None`` means "as the model card says"."""

    device: str = "auto"
    precision: str = "fp32"
    overlap: float | None = None
    #: Axes mirrored at test time; None: as the card says, (): none (faster).
    mirror_axes: tuple[int, ...] | None = None
    batch_size: int = 1
    largest_component: bool = False
    max_anisotropy: float | None = DEFAULT_MAX_ANISOTROPY
    #: Segment only inside this region; None: the whole volume.
    roi: RegionOfInterest | None = None


@dataclass
class SegmentationResult:
    """Outputs of one run, all with the input image's geometry."""

    label_map: sitk.Image
    labels: list[Label]
    #: Class probabilities as a multi-component image, one component per card label, in order.
    probabilities: sitk.Image
    confidence: sitk.Image | None = None
    #: The attention U-Net's prediction from its attention maps, like ``probabilities``.
    attention_probabilities: sitk.Image | None = None
    sdm: dict[int, sitk.Image] = field(default_factory=dict)
    component_reports: list[ComponentReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The index box of the input that was segmented (its ROI); None: the whole volume.
    region: CropBox | None = None
    #: With a calibrated confidence map: the share of voxels near the organ expected wrong.
    expected_error: float | None = None

    def label_array(self) -> np.ndarray:
        return image_to_array(self.label_map, dtype=np.int64)

    def slices_outside_region(self) -> set[int]:
        """The slices ``k`` (third axis) an ROI left out: nothing was segmented there."""
        if self.region is None:
            return set()
        return {*range(self.region.start[2]), *range(self.region.stop[2], self.label_map.GetSize()[2])}


def _model_grid_input(image: sitk.Image, card: ModelCard) -> tuple[sitk.Image, CropBox, np.ndarray]:
    """The image resampled to the model's spacing, the crop box taken from it (the whole grid
    when the card asks for no crop), and the normalised (x, y, z) array inside that box.

    Cropping comes before normalisation so that the statistics describe the region the network
    sees, not the padding around the body.
    """
    resampled = resample_to_spacing(sitk.Cast(image, sitk.sitkFloat32), card.spacing)
    array = image_to_array(resampled)
    margin = card.data["preprocessing"].get("crop_foreground_margin")
    box = foreground_box(array, margin) if margin is not None else CropBox((0, 0, 0), array.shape)
    preprocessing = card.data["preprocessing"]
    normalized = normalize_intensity(
        array[box.slices], preprocessing["normalization"], preprocessing.get("intensity")
    )
    return resampled, box, normalized


def check_finite_outputs(outputs: dict[str, np.ndarray], card: ModelCard, precision: str) -> None:
    """Refuse a prediction with NaN/Inf: its argmax would be an empty label map presented as a
    result. Broken weights (a diverged fine-tuning) or a half-precision overflow cause it."""
    bad = [name for name, array in outputs.items() if not np.isfinite(array).all()]
    if bad:
        # Only half precision overflows where fp32 does not: fp16, which ``auto`` may pick on a GPU.
        hint = " Try --precision fp32." if precision in ("auto", "fp16") else ""
        raise NumericalError(
            f"model {card.name!r} produced NaN or infinite values ({', '.join(bad)}); its weights are "
            f"broken (e.g. a training run that diverged) or the input is far outside what it expects.{hint}"
        )


def _to_input_grid(channels: np.ndarray, model_grid: sitk.Image, original: sitk.Image) -> sitk.Image:
    """Resample (C, x, y, z) maps from the model grid onto the original grid (linear), as a
    C-component image."""
    return resample_like(_vector_image(channels, model_grid), original, sitk.sitkLinear)


def channel_array(image: sitk.Image) -> np.ndarray:
    """(C, x, y, z) array of a multi-component image."""
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 3:  # SimpleITK drops the component axis of single-channel images
        array = array[..., None]
    return np.ascontiguousarray(array.transpose(3, 2, 1, 0))


def _vector_image(channels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """(C, x, y, z) float array as a C-component image with ``reference``'s geometry."""
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(channels.transpose(3, 2, 1, 0), dtype=np.float32), isVector=True
    )
    image.CopyInformation(reference)
    return image


def _uncrop_outputs(outputs: dict[str, np.ndarray], box: CropBox, shape: tuple) -> dict[str, np.ndarray]:
    """Put cropped outputs back into the full model-grid volume: outside the crop the model
    saw nothing, so it is background with certainty and outside every organ."""
    outside = np.ones(shape, dtype=bool)
    outside[box.slices] = False
    full = {}
    for name in ("probabilities", "attention_probabilities"):
        if name in outputs:
            full[name] = uncrop(outputs[name], box, shape, 0.0)
            full[name][0][outside] = 1.0
    if "sdm" in outputs:
        full["sdm"] = uncrop(outputs["sdm"], box, shape, 1.0)
    if "confidence" in outputs:
        full["confidence"] = uncrop(outputs["confidence"], box, shape, 1.0)
    return full


def segment_image(
    image: sitk.Image,
    card: ModelCard,
    network: nn.Module,
    options: SegmentationOptions | None = None,
    source: str | Path = "input image",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SegmentationResult:
    """Segment ``image`` (3D scalar) with ``network`` as described by ``card``.

    With ``options.roi`` only the voxels inside the region of interest are seen (resampled,
    normalised and cut into windows): the result is the one the region cropped out beforehand
    would give, put back on ``image``'s grid as certain background beyond the region.
    """
    options = options or SegmentationOptions()
    check_volume_shape(image, source)
    check_spacing(image, source, options.max_anisotropy)
    box, warnings = segmentation_region(image, options.roi, card)
    region = image if options.roi is None else image[box.slices]
    check_intensities(
        sitk.GetArrayViewFromImage(region), source if options.roi is None else f"{source} inside the ROI"
    )
    try:
        device = select_device(options.device)
    except ValueError as error:
        raise InputError(str(error)) from error

    result = _segment_region(region, card, network, options, device, source, progress, cancel)
    result.warnings[:0] = warnings
    return result if options.roi is None else _on_full_grid(result, box, image)


def _segment_region(
    image: sitk.Image,
    card: ModelCard,
    network: nn.Module,
    options: SegmentationOptions,
    device: torch.device,
    source: str | Path,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> SegmentationResult:
    """The whole of ``image`` (already checked) segmented, outputs on its grid."""
    settings = card_window_settings(
        card,
        overlap=options.overlap,
        batch_size=options.batch_size,
        precision=options.precision,
        mirror_axes=options.mirror_axes,
    )
    try:
        model_grid, box, array = _model_grid_input(image, card)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error
    outputs = predict_volume(network, array, settings, device, progress, cancel)
    check_finite_outputs(outputs, card, options.precision)
    outputs = _uncrop_outputs(outputs, box, model_grid.GetSize())

    probabilities = _to_input_grid(outputs["probabilities"], model_grid, image)
    labels = card.labels
    values = np.asarray([label.value for label in labels])
    label_map = values[np.argmax(channel_array(probabilities), axis=0)].astype(label_pixel_type(labels))
    result = SegmentationResult(array_to_image(label_map, image), labels, probabilities)

    if options.largest_component:
        label_map, result.component_reports = keep_largest_component(
            label_map, [label.value for label in card.foreground_labels]
        )
        result.label_map = array_to_image(label_map, image)
    for label in card.foreground_labels:
        if not np.any(label_map == label.value):
            result.warnings.append(f"no voxel was labelled {label.name!r} (empty prediction)")

    if "attention_probabilities" in outputs:
        result.attention_probabilities = _to_input_grid(outputs["attention_probabilities"], model_grid, image)
    if "confidence" in outputs:
        confidence = channel_array(_to_input_grid(outputs["confidence"][None], model_grid, image))[0]
        confidence = np.clip(confidence, 0.0, 1.0)
        calibration = card.data.get("confidence_calibration")
        if calibration is not None:
            calibration = ConfidenceCalibration.from_card(calibration)
            confidence = _calibrated(result, calibration, confidence, label_map)
        result.confidence = array_to_image(confidence.astype(np.float32), image)
    if "sdm" in outputs:
        sdm = channel_array(_to_input_grid(outputs["sdm"], model_grid, image))
        for channel, label in enumerate(card.foreground_labels):
            result.sdm[label.value] = array_to_image(sdm[channel].astype(np.float32), image)
    return result


def _on_full_grid(result: SegmentationResult, box: CropBox, image: sitk.Image) -> SegmentationResult:
    """A region's result placed on the grid of the ``image`` it was cropped from: beyond the
    region, background with certainty, as for the engine's own crops (:func:`_uncrop_outputs`)."""
    arrays = {"probabilities": channel_array(result.probabilities)}
    if result.attention_probabilities is not None:
        arrays["attention_probabilities"] = channel_array(result.attention_probabilities)
    if result.confidence is not None:
        arrays["confidence"] = image_to_array(result.confidence)
    if result.sdm:
        arrays["sdm"] = np.stack([image_to_array(sdm) for sdm in result.sdm.values()])
    full = _uncrop_outputs(arrays, box, image.GetSize())
    label_map = uncrop(
        image_to_array(result.label_map, label_pixel_type(result.labels)), box, image.GetSize(), 0
    )
    placed = SegmentationResult(
        array_to_image(label_map, image),
        result.labels,
        _vector_image(full["probabilities"], image),
        component_reports=result.component_reports,
        warnings=result.warnings,
        region=box,
        expected_error=result.expected_error,
    )
    if "attention_probabilities" in full:
        placed.attention_probabilities = _vector_image(full["attention_probabilities"], image)
    if "confidence" in full:
        placed.confidence = array_to_image(full["confidence"], image)
    for channel, value in enumerate(result.sdm):
        placed.sdm[value] = array_to_image(full["sdm"][channel], image)
    return placed


def _calibrated(
    result: SegmentationResult,
    calibration: ConfidenceCalibration,
    confidence: np.ndarray,
    label_map: np.ndarray,
) -> np.ndarray:
    """The card's calibrated confidence map; records the volume's expected error near the organ
    and, above the card's threshold, a "check this result" warning."""
    top_probability = channel_array(result.probabilities).max(axis=0)
    calibrated = calibration.apply(confidence, top_probability)
    spacing = result.label_map.GetSpacing()
    result.expected_error = calibration.expected_error(calibrated, label_map, spacing)
    message = calibration.check_message(result.expected_error)
    if message is not None:
        result.warnings.append(message)
    return calibrated


def planned_outputs(
    labels: Sequence[Label],
    label_path: str | Path,
    confidence_path: str | Path | None = None,
    sdm_path: str | Path | None = None,
    probabilities_path: str | Path | None = None,
) -> list[tuple[str, Path]]:
    """Every file :func:`write_result` writes for these paths (sidecars and one SDM per label
    included), each with the CLI option that names it, for checking them before any work."""
    outputs = [("-o", Path(label_path)), *(("-o", path) for path in sidecar_paths(label_path).values())]
    if confidence_path is not None:
        outputs.append(("--confidence", Path(confidence_path)))
    if sdm_path is not None:
        values = [label.value for label in labels if label.value != 0]
        outputs += [("--sdm", path) for path in sdm_output_paths(sdm_path, values).values()]
    if probabilities_path is not None:
        outputs.append(("--probabilities", Path(probabilities_path)))
    return outputs


def write_result(
    result: SegmentationResult,
    label_path: str | Path,
    confidence_path: str | Path | None = None,
    sdm_path: str | Path | None = None,
    probabilities_path: str | Path | None = None,
) -> list[Path]:
    """Write the requested outputs plus the label sidecars, all or nothing (see
    :func:`write_label_map`). Asking for an output the model does not produce is an error
    raised before anything is written."""
    if confidence_path is not None and result.confidence is None:
        raise InputError("this model has no confidence network; drop --confidence or pick a model with one.")
    if sdm_path is not None and not result.sdm:
        raise InputError("this model has no signed-distance-map head; drop --sdm or pick a model with one.")
    images: dict[Path, sitk.Image] = {}
    if confidence_path is not None:
        images[Path(confidence_path)] = result.confidence
    if probabilities_path is not None:
        images[Path(probabilities_path)] = result.probabilities
    if sdm_path is not None:
        paths = sdm_output_paths(sdm_path, list(result.sdm))
        images.update({path: result.sdm[value] for value, path in paths.items()})
    return write_label_map(result.label_map, result.labels, label_path, images)
