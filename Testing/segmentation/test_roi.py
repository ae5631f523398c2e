"""Segmenting inside a region of interest: the box in LPS, RAS or voxels, clipping, refusals,
and the warning about a field of view much larger than the model's training volumes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.cli import build_parser, main
from asdseg.errors import InputError
from asdseg.inference.segment import SegmentationOptions, channel_array, segment_image
from asdseg.io.image_io import image_to_array, read_image, same_geometry
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.preprocessing.roi import RegionOfInterest, segmentation_region
from asdseg.preprocessing.transforms import CropBox, normalize_intensity
from asdseg.registry import find_model, install_model, load_network
from asdseg.registry.model_card import ModelCard, validate_card

from conftest import ROTATED, IntensityClassifier

#: The voxels the ROIs below hold: i 5-30, j 4-25, k 3-20 (both ends included).
FIRST, LAST = (5, 4, 3), (30, 25, 20)
INSIDE = tuple(slice(a, b + 1) for a, b in zip(FIRST, LAST, strict=True))
#: 30 degrees about the third axis: no image axis is parallel to a physical one.
OBLIQUE = tuple(sitk.VersorTransform((0.0, 0.0, 1.0), np.deg2rad(30.0)).GetMatrix())


def rotated_phantom(direction: tuple = ROTATED, spacing: tuple = (0.95, 1.05, 1.1)) -> sitk.Image:
    image, _ = phantom_image(
        make_phantom(shape=(40, 36, 30), seed=3),
        spacing=spacing,
        origin=(12.5, -40.0, 3.0),
        direction=direction,
    )
    return image


def physical_box(image: sitk.Image, space: str) -> RegionOfInterest:
    """The box through the centres of the first and last voxels of :data:`INSIDE`, in ``space``,
    computed from the image's own index-to-physical transform."""
    flip = np.array([-1.0, -1.0, 1.0]) if space == "ras" else np.ones(3)
    points = np.array(
        [
            flip * image.TransformIndexToPhysicalPoint(corner)
            for corner in itertools.product(*zip(FIRST, LAST, strict=True))
        ]
    )
    return RegionOfInterest(tuple(points.min(axis=0)), tuple(points.max(axis=0)), space)


def test_lps_ras_and_voxel_boxes_select_the_same_voxels_of_a_rotated_volume() -> None:
    image = rotated_phantom()
    expected = CropBox(FIRST, tuple(b + 1 for b in LAST))
    for roi in (
        physical_box(image, "lps"),
        physical_box(image, "ras"),
        RegionOfInterest(FIRST, LAST, "voxel"),
    ):
        assert roi.index_box(image) == (expected, []), roi.space


def test_roi_equals_segmenting_the_region_cropped_beforehand(tiny_model: ModelCard) -> None:
    """Inside the box, voxel for voxel what the cropped region gives alone; beyond it certain
    background, SDM 'outside' and probability 1 of background."""
    image = rotated_phantom()
    network = load_network(tiny_model)
    options = SegmentationOptions(precision="fp32")
    alone = segment_image(image[INSIDE], tiny_model, network, options)
    with_roi = segment_image(
        image, tiny_model, network, SegmentationOptions(precision="fp32", roi=physical_box(image, "ras"))
    )
    assert same_geometry(with_roi.label_map, image) and same_geometry(with_roi.probabilities, image)
    labels = with_roi.label_array()
    np.testing.assert_array_equal(labels[INSIDE], alone.label_array())
    assert labels[INSIDE].any()  # the untrained network labels something: the test can fail
    outside = np.ones(labels.shape, bool)
    outside[INSIDE] = False
    assert not labels[outside].any()
    probabilities = channel_array(with_roi.probabilities)
    np.testing.assert_array_equal(probabilities[(slice(None), *INSIDE)], channel_array(alone.probabilities))
    assert (probabilities[0][outside] == 1).all() and (probabilities[1:, outside] == 0).all()
    for value, sdm in with_roi.sdm.items():
        np.testing.assert_array_equal(image_to_array(sdm)[INSIDE], image_to_array(alone.sdm[value]))
        assert (image_to_array(sdm)[outside] == 1).all()


def test_roi_normalises_inside_the_box_and_is_certain_beyond_it(tiny_model: ModelCard) -> None:
    """A pointwise network of known output: inside, the formula on the intensities z-scored
    over the box; beyond it, confidence 1. At the model's spacing, so that nothing is resampled."""
    card = ModelCard(
        {
            **tiny_model.data,
            "labels": tiny_model.data["labels"][:2],
            "outputs": {"sdm": True, "confidence": True},
        },
        tiny_model.directory,
    )
    image = rotated_phantom(spacing=card.spacing)
    result = segment_image(
        image, card, IntensityClassifier(), SegmentationOptions(roi=physical_box(image, "lps"))
    )
    normalized = normalize_intensity(image_to_array(image)[INSIDE], "zscore")
    confidence = image_to_array(result.confidence)
    np.testing.assert_array_equal(result.label_array()[INSIDE], (normalized > 0).astype(int))
    np.testing.assert_allclose(confidence[INSIDE], 1 / (1 + np.exp(-np.abs(normalized))), atol=1e-5)
    outside = np.ones(confidence.shape, bool)
    outside[INSIDE] = False
    assert (confidence[outside] == 1).all()


def test_on_an_oblique_volume_the_box_is_the_smallest_index_box_holding_the_physical_box() -> None:
    image = rotated_phantom(direction=OBLIQUE)
    roi = RegionOfInterest((8.0, -30.0, 6.0), (30.0, -10.0, 20.0))
    box, warnings = roi.index_box(image)
    assert warnings == []
    indices = np.argwhere(np.ones(image.GetSize(), bool))
    points = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in index]) for index in indices])
    in_physical_box = np.all((points >= roi.first) & (points <= roi.last), axis=1)
    held = indices[in_physical_box]
    assert len(held) > 100
    # Every voxel centre inside the physical box is in the index box, and the index box is no
    # larger than the physical box's corners need (its continuous index bounds, rounded inwards).
    assert (held.min(axis=0) >= box.start).all() and (held.max(axis=0) < box.stop).all()
    corners = np.array(
        [
            image.TransformPhysicalPointToContinuousIndex(c)
            for c in itertools.product(*zip(roi.first, roi.last, strict=True))
        ]
    )
    np.testing.assert_array_equal(box.start, np.ceil(corners.min(axis=0)))
    np.testing.assert_array_equal(box.stop, np.floor(corners.max(axis=0)) + 1)


def test_a_box_partly_outside_the_volume_is_clipped_with_a_warning() -> None:
    image = rotated_phantom()
    box, warnings = RegionOfInterest((-10, 4, 3), (30, 25, 99), "voxel").index_box(image)
    assert box == CropBox((0, 4, 3), (31, 26, 30))
    assert len(warnings) == 1 and "past the volume along x, z" in warnings[0]
    assert "x 0-30, y 4-25, z 3-29" in warnings[0]
    # Half a voxel beyond the outermost voxel centres is still the volume: no warning.
    edges = [
        image.TransformContinuousIndexToPhysicalPoint(p)
        for p in ((-0.5,) * 3, np.subtract(image.GetSize(), 0.5))
    ]
    whole = RegionOfInterest(tuple(np.min(edges, axis=0)), tuple(np.max(edges, axis=0)))
    assert whole.index_box(image) == (CropBox((0, 0, 0), image.GetSize()), [])


def test_a_box_reaching_far_past_the_volume_is_clipped_not_overflowed() -> None:
    image = rotated_phantom()
    box, warnings = RegionOfInterest((-1e20, 4, 3), (1e20, 1e20, 1e20), "voxel").index_box(image)
    assert box == CropBox((0, 4, 3), tuple(image.GetSize()))
    assert "past the volume along x, y, z" in warnings[0]


@pytest.mark.parametrize("corner", ["-1.5e-05", "-2E+1", "-.5", "-7"])
def test_every_negative_number_the_engine_prints_is_an_roi_corner(corner: str) -> None:
    """argparse alone takes -1.5e-05 for an option; the corner format of cli_arguments is %.17g."""
    args = build_parser().parse_args(
        ["segment", "--model", "m", "-i", "a.nii", "-o", "b.nii", "--roi", corner, "0", "0", "1", "1", "1"]
    )
    assert args.roi == [float(corner), 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--roi", "-inf", "0", "0", "1", "1", "1"], "-inf is out of range; it must be a finite number"),
        (["--roi", "0", "nan", "0", "1", "1", "1"], "nan is out of range; it must be a finite number"),
        (["--roi", "-nan", "0", "0", "1", "1", "1"], "-nan is out of range; it must be a finite number"),
        (["--roi-space", "voxel"], "--roi-space does nothing without --roi"),
    ],
)
def test_non_finite_corners_and_options_that_do_nothing_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "--model", "m", "-i", "a.nii", "-o", "b.nii", *argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "usage: asdseg [-h]" not in error  # the command's own message, not the top level's


@pytest.mark.parametrize(
    ("first", "last", "space", "message"),
    [
        ((10, 4, 3), (5, 25, 20), "voxel", "inverted along x"),
        ((0.0, 0.0, 5.0), (10.0, 10.0, 5.0), "lps", "no extent along z"),
        ((100, 4, 3), (120, 25, 20), "voxel", "holds no voxel of the volume .* along x"),
        ((5, 4, 3), (30, 25, 3), "voxel", "only 1 voxel thick along z"),
        ((5, 4, 3.5), (30, 25, 20), "voxel", "whole voxel indices"),
        ((0.0, float("nan"), 0.0), (1.0, 1.0, 1.0), "ras", "finite"),
        ((0, 0, 0), (1, 1, 1), "mni", "unknown ROI space"),
    ],
)
def test_bad_boxes_are_refused_with_what_to_do(first, last, space, message) -> None:
    with pytest.raises(InputError, match=message):
        RegionOfInterest(first, last, space).index_box(rotated_phantom())


def test_a_box_between_two_voxel_centres_is_refused() -> None:
    image = rotated_phantom(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    x = image.TransformIndexToPhysicalPoint((5, 0, 0))[0]
    roi = RegionOfInterest((x + 0.1, -40.0, 3.0), (x + 0.5, 0.0, 30.0))
    with pytest.raises(InputError, match="between two voxel centres"):
        roi.index_box(image)


def test_an_input_much_larger_than_the_training_volumes_gets_a_warning_an_roi_silences() -> None:
    la = find_model("la-dan")
    assert la.data["preprocessing"]["field_of_view_mm"] == [120.0, 89.4, 55.0]
    whole_scan = sitk.Image([320, 320, 44], sitk.sitkFloat32)
    whole_scan.SetSpacing((1.25, 1.25, 1.25))  # 400 x 400 x 55 mm, as a full LGE-MRI
    warnings = segmentation_region(whole_scan, None, la)[1]
    assert len(warnings) == 1 and "400 x 400 x 55 mm" in warnings[0] and "along x, y" in warnings[0]
    assert "region of interest around the left-atrium" in warnings[0]
    around_atrium = RegionOfInterest((100, 110, 0), (200, 190, 43), "voxel")
    assert segmentation_region(whole_scan, around_atrium, la)[1] == []
    crop = sitk.Image([192, 144, 44], sitk.sitkFloat32)
    crop.SetSpacing((0.625, 0.625, 1.25))
    assert segmentation_region(crop, None, la)[1] == []


def test_the_field_of_view_is_optional_and_checked(tiny_model: ModelCard) -> None:
    assert "field_of_view_mm" not in tiny_model.data["preprocessing"]
    assert segmentation_region(rotated_phantom(), None, tiny_model)[1] == []
    data = json.loads(json.dumps(tiny_model.data))
    data["preprocessing"]["field_of_view_mm"] = [10.0, 0.0, 10.0]
    with pytest.raises(Exception, match="field_of_view_mm"):
        validate_card(data, "card")


def test_cli_segments_inside_the_roi_and_refuses_a_bad_one(
    tiny_model: ModelCard, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    install_model(tiny_model.directory / "card.json")
    image_path = tmp_path / "image.nii.gz"
    sitk.WriteImage(rotated_phantom(), str(image_path))
    out = tmp_path / "seg.nii.gz"
    arguments = ["segment", "-i", str(image_path), "-o", str(out), "--model", tiny_model.name]
    arguments += ["--device", "cpu", "--precision", "fp32"]

    assert main([*arguments, "--roi", "5", "4", "3", "30", "25", "20", "--roi-space", "voxel"]) == 0
    labels = image_to_array(read_image(out))
    outside = np.ones(labels.shape, bool)
    outside[INSIDE] = False
    assert labels[INSIDE].any() and not labels[outside].any()

    assert main([*arguments, "--roi", "5", "4", "3", "30", "25", "99", "--roi-space", "voxel"]) == 0
    assert "warning: the ROI (5, 4, 3) to (30, 25, 99) (voxels) reaches past" in capsys.readouterr().err

    before = out.read_bytes()
    assert main([*arguments, "--roi", "30", "4", "3", "5", "25", "20", "--roi-space", "voxel"]) == 2
    error = capsys.readouterr().err
    assert "error: the ROI is inverted along x" in error and "Traceback" not in error
    assert out.read_bytes() == before


def test_suggestions_stay_inside_the_roi(attention_model: ModelCard, tmp_path: Path, capsys) -> None:
    install_model(attention_model.directory / "card.json")
    image_path = tmp_path / "image.nii.gz"
    sitk.WriteImage(rotated_phantom(), str(image_path))
    report = tmp_path / "suggestions.json"
    arguments = ["suggest", "-i", str(image_path), "--model", attention_model.name, "--strategy", "random"]
    arguments += ["-k", "16", "--device", "cpu", "--output", str(report)]
    assert main([*arguments, "--roi", "5", "4", "3", "30", "25", "20", "--roi-space", "voxel"]) == 0
    suggested = [query["slice"] for query in json.loads(report.read_text())["suggested"]]
    assert len(suggested) == 16 and set(suggested) <= set(range(3, 21))
