"""The whole pipeline on phantoms: geometry kept, accuracy with a trained model, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from asdseg.demo.phantom_model import TARGET_DICE, validation_summary
from asdseg.errors import InputError
from asdseg.evaluation.metrics import dice
from asdseg.inference.confidence_calibration import ConfidenceCalibration
from asdseg.inference.postprocessing import keep_largest_component
from asdseg.inference.segment import SegmentationOptions, segment_image, write_result
from asdseg.io.image_io import image_to_array, read_image, same_geometry
from asdseg.io.labels import read_labels_json, sidecar_paths
from asdseg.networks import build_network
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.preprocessing.transforms import normalize_intensity
from asdseg.registry import load_network, save_model
from asdseg.registry.model_card import ModelCard, validate_card

from conftest import ROTATED, IntensityClassifier, tiny_card


def test_every_output_has_the_input_geometry(tiny_model: ModelCard, phantom_files, tmp_path: Path) -> None:
    image = read_image(phantom_files[0])
    result = segment_image(image, tiny_model, load_network(tiny_model))
    written = write_result(result, tmp_path / "out" / "seg.nii.gz", sdm_path=tmp_path / "out" / "sdm.nrrd")
    images = [path for path in written if path.name.endswith((".nii.gz", ".nrrd"))]
    assert len(images) == 3  # label map and one SDM per foreground label
    for path in images:
        assert same_geometry(read_image(path), image), path
    assert sitk.ReadImage(str(tmp_path / "out" / "seg.nii.gz")).GetPixelID() == sitk.sitkUInt8


def test_trained_model_segments_a_rotated_resampled_phantom(demo_model: ModelCard) -> None:
    phantom = make_phantom(shape=(52, 48, 40), seed=11)
    image, _ = phantom_image(phantom, spacing=(0.9, 1.1, 1.0), origin=(5, 6, 7), direction=ROTATED)
    result = segment_image(
        image, demo_model, load_network(demo_model), SegmentationOptions(largest_component=True)
    )
    prediction = result.label_array()
    assert dice(prediction == 1, phantom.label == 1) > 0.9
    # The sphere is small (about 700 voxels), and resampling this grid costs it a few points.
    assert dice(prediction == 2, phantom.label == 2) > 0.75
    sdm = image_to_array(result.sdm[1])
    assert sdm[phantom.label == 1].mean() < 0 < sdm[phantom.label == 0].mean()


def test_the_demo_model_trains_until_it_segments_both_structures(demo_model: ModelCard) -> None:
    validation = demo_model.data["metrics"]["phantom_validation"]
    assert min(validation["dice"].values()) >= TARGET_DICE, validation
    assert "below the target" not in validation_summary(demo_model)
    weak = {**validation, "dice": {"ellipsoid": 0.97, "sphere": 0.4}}
    weak_card = ModelCard({**demo_model.data, "metrics": {"phantom_validation": weak}}, demo_model.directory)
    assert "sphere 0.400 after" in validation_summary(weak_card)
    assert "below the target 0.95" in validation_summary(weak_card)


def test_crop_to_foreground_gives_the_same_labels_inside(demo_model: ModelCard) -> None:
    """Cropping to the voxels above the background level (margin 0) must give exactly the labels
    of segmenting the uncropped phantom inside the crop, and background outside it; with a margin
    the crop grows by that many voxels, and nothing beyond it is labelled."""
    phantom = make_phantom(shape=(48, 48, 40), seed=12)
    padded = np.pad(phantom.image, 12, constant_values=float(phantom.image.min()) - 50)
    image, _ = phantom_image(type(phantom)(padded.astype(np.float32), np.pad(phantom.label, 12)))
    network = load_network(demo_model)
    reference = segment_image(phantom_image(phantom)[0], demo_model, network).label_array()
    assert reference.any()

    def with_crop(margin: int) -> ModelCard:
        preprocessing = {**demo_model.data["preprocessing"], "crop_foreground_margin": margin}
        return ModelCard({**demo_model.data, "preprocessing": preprocessing}, demo_model.directory)

    cropped = segment_image(image, with_crop(0), network).label_array()
    np.testing.assert_array_equal(cropped[12:-12, 12:-12, 12:-12], reference)
    assert cropped.sum() == cropped[12:-12, 12:-12, 12:-12].sum()
    with_margin = segment_image(image, with_crop(4), network).label_array()
    assert not with_margin[:8].any() and not with_margin[-8:].any()


def test_largest_component_removes_islands_and_reports_empty_labels() -> None:
    label_map = np.zeros((20, 20, 20), np.uint8)
    label_map[2:8, 2:8, 2:8] = 1
    label_map[15:17, 15:17, 15:17] = 1
    filtered, reports = keep_largest_component(label_map, [1, 2])
    assert filtered.sum() == 216 and not filtered[15:17, 15:17, 15:17].any()
    assert (reports[0].components, reports[0].voxels_before, reports[0].voxels_after) == (2, 224, 216)
    assert reports[1].empty


def test_empty_prediction_is_reported_not_fatal(tiny_model: ModelCard) -> None:
    image, _ = phantom_image(make_phantom(shape=(20, 20, 20), seed=1))
    network = load_network(tiny_model)
    network.segmentation_head.bias.data[:] = torch.tensor([100.0, 0.0, 0.0])  # always background
    result = segment_image(image, tiny_model, network, SegmentationOptions(largest_component=True))
    assert not result.label_array().any()
    assert any("empty prediction" in warning for warning in result.warnings)


def test_anisotropic_volume_is_refused_before_any_work(tiny_model: ModelCard) -> None:
    image, _ = phantom_image(make_phantom(shape=(20, 20, 20), seed=1), spacing=(0.5, 0.5, 4.0))
    with pytest.raises(InputError, match=r"strongly anisotropic"):
        segment_image(image, tiny_model, load_network(tiny_model))
    allowed = segment_image(
        image, tiny_model, load_network(tiny_model), SegmentationOptions(max_anisotropy=None)
    )
    assert allowed.label_map.GetSize() == (20, 20, 20)


def test_sidecars_name_and_colour_the_card_labels(tiny_model: ModelCard, tmp_path: Path) -> None:
    image, _ = phantom_image(make_phantom(shape=(20, 20, 20), seed=1))
    result = segment_image(image, tiny_model, load_network(tiny_model))
    write_result(result, tmp_path / "seg.nii.gz")
    paths = sidecar_paths(tmp_path / "seg.nii.gz")
    assert read_labels_json(paths["json"]) == tiny_model.labels
    assert "2 sphere 86 180 233 255" in paths["slicer"].read_text()
    assert '1 230 159 0 1 1 1 "ellipsoid"' in paths["itksnap"].read_text()


def test_asking_for_a_missing_output_writes_nothing(tiny_model: ModelCard, tmp_path: Path) -> None:
    image, _ = phantom_image(make_phantom(shape=(20, 20, 20), seed=1))
    result = segment_image(image, tiny_model, load_network(tiny_model))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"no confidence network"):
        write_result(result, out / "seg.nii.gz", confidence_path=out / "conf.nii.gz")
    assert list(out.iterdir()) == []


def test_confidence_sdm_and_probabilities_through_the_pipeline(tiny_model: ModelCard, tmp_path: Path) -> None:
    """With a pointwise network of known output, every map must equal its formula voxel for
    voxel on a rotated, shifted volume, and every file must keep the input geometry."""
    data = {
        **tiny_model.data,
        "name": "pointwise",
        "labels": tiny_model.data["labels"][:2],
        "outputs": {"sdm": True, "confidence": True},
    }
    validate_card(data, "pointwise card")
    card = ModelCard(data, tiny_model.directory)
    image, _ = phantom_image(make_phantom(shape=(30, 26, 22), seed=4), origin=(3, -7, 11), direction=ROTATED)
    result = segment_image(image, card, IntensityClassifier())
    normalized = normalize_intensity(image_to_array(image), "zscore")
    np.testing.assert_array_equal(result.label_array(), (normalized > 0).astype(int))
    np.testing.assert_allclose(
        image_to_array(result.confidence), 1 / (1 + np.exp(-np.abs(normalized))), atol=1e-5
    )
    np.testing.assert_allclose(image_to_array(result.sdm[1]), -np.tanh(normalized), atol=1e-5)
    out = tmp_path / "out"
    written = write_result(
        result, out / "seg.nii.gz", out / "conf.nii.gz", out / "sdm.nii.gz", out / "prob.nrrd"
    )
    assert {path.name for path in written} >= {"seg.nii.gz", "conf.nii.gz", "sdm.nii.gz", "prob.nrrd"}
    for name in ("seg.nii.gz", "conf.nii.gz", "sdm.nii.gz"):
        assert same_geometry(read_image(out / name), image), name
    probabilities = sitk.ReadImage(str(out / "prob.nrrd"))
    assert probabilities.GetNumberOfComponentsPerPixel() == 2
    assert same_geometry(probabilities, image)


def test_vnet_with_confidence_network_gives_a_confidence_map(tmp_path: Path, phantom_files) -> None:
    """ASDNet's confidence network rides on the segmenter: its map reaches the output on the
    input grid, within [0, 1], and it does not change the segmentation itself."""
    card_data = tiny_card("tiny-confidence", confidence=True)
    torch.manual_seed(0)
    network = build_network(card_data["architecture"]["name"], card_data["architecture"]["params"])
    card = save_model(network, card_data, tmp_path / "model")
    image = read_image(phantom_files[0])
    result = segment_image(image, card, load_network(card))
    assert result.confidence is not None and same_geometry(result.confidence, image)
    confidence = image_to_array(result.confidence)
    assert confidence.min() >= 0.0 and confidence.max() <= 1.0 and confidence.std() > 0
    segmenter_only = load_network(card).segmenter
    with torch.inference_mode():
        window = torch.randn(1, 1, 16, 16, 16)
        assert torch.equal(load_network(card)(window)["logits"], segmenter_only(window)["logits"])


def test_outputs_cover_the_faces_of_a_volume_the_model_sees_at_a_coarser_spacing(
    tiny_model: ModelCard,
) -> None:
    """At 2 mm, the model grid of a 1 mm volume of even size ends half a model voxel short of the
    volume's last slices; those slices must still get a full probability and a confidence."""
    data = {
        **tiny_model.data,
        "labels": tiny_model.data["labels"][:2],
        "outputs": {"sdm": True, "confidence": True},
        "preprocessing": {**tiny_model.data["preprocessing"], "spacing": [2.0, 2.0, 2.0]},
    }
    image, _ = phantom_image(make_phantom(shape=(32, 28, 24), seed=5))
    result = segment_image(image, ModelCard(data, tiny_model.directory), IntensityClassifier())
    probabilities = sitk.GetArrayFromImage(result.probabilities)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert image_to_array(result.confidence).min() >= 0.5  # sigmoid(|z|) is never below 0.5


def test_a_card_with_a_confidence_calibration_calibrates_the_map_and_flags_the_volume(
    tiny_model: ModelCard,
) -> None:
    """The pointwise network's confidence sigmoid(|x|) and top probability sigmoid(20|x|) go
    through the card's logistic map; a threshold below the volume's expected error flags it."""
    data = {
        **tiny_model.data,
        "name": "pointwise-calibrated",
        "labels": tiny_model.data["labels"][:2],
        "outputs": {"sdm": True, "confidence": True},
        "confidence_calibration": {"weights": [1.0, 0.5, -1.0], "band_mm": 3.0, "flag_threshold": 0.01},
    }
    validate_card(data, "calibrated card")
    image, _ = phantom_image(make_phantom(shape=(30, 26, 22), seed=4), direction=ROTATED)
    result = segment_image(image, ModelCard(data, tiny_model.directory), IntensityClassifier())
    normalized = np.abs(normalize_intensity(image_to_array(image), "zscore"))
    confidence, top = 1 / (1 + np.exp(-normalized)), 1 / (1 + np.exp(-20 * normalized))
    expected = ConfidenceCalibration((1.0, 0.5, -1.0)).apply(confidence, top)
    np.testing.assert_allclose(image_to_array(result.confidence), expected, atol=1e-3)
    assert result.expected_error is not None and result.expected_error > 0.01
    assert any(warning.startswith("check this result") for warning in result.warnings)
