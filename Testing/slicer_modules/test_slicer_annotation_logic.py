"""ActiveAnnotate's logic driven against the real Slicer core libraries (slicer-core), no Qt."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from asdseg.active.annotator_effort import SliceEffort
from asdseg.active.sparse_labels import read_slice_effort, read_sparse_labels
from asdseg.active.suggest import suggest_slices
from asdseg.background import JobState, engine_environment
from asdseg.errors import AsdsegError, CancelledError, InputError, ModelError
from asdseg.io.image_io import image_to_array, read_image, same_geometry
from asdseg.registry import load_network
from asdseg.registry.model_card import ModelCard
from asdseg.warm_engine import EngineJob, WarmEngine

from ActiveAnnotateLib.annotation_logic import AnnotationLogic
from ActiveAnnotateLib.label_arrays import PREDICTION_REFERENCE_ROLE
from ActiveAnnotateLib.slice_views import show_slice, slice_centre_ras
from ASDSegLib.segmentation_logic import SegmentationLogic
from ASDSegLib.volume_nodes import (
    array_from_image_data,
    image_from_volume_node,
    oriented_image_from_array,
    slice_under_view,
)
from conftest import wait_until
from mrml_application import SlicerCore, roi_around_voxels, start_slicer_core


@pytest.fixture
def core() -> SlicerCore:
    return start_slicer_core()


@pytest.fixture
def logic(core: SlicerCore, tmp_path: Path, attention_model: ModelCard) -> AnnotationLogic:
    logic = AnnotationLogic(core.scene, tmp_path / "session")
    logic.model = str(attention_model.directory)
    return logic


@pytest.fixture
def volume_node(core: SlicerCore, phantom_files: tuple[Path, Path]) -> slicer.vtkMRMLScalarVolumeNode:
    """The 40x36x30 phantom with a rotated direction and non-unit spacing."""
    return core.volumes_logic.AddArchetypeVolume(str(phantom_files[0]), "phantom")


def paint_reference(segmentation_node, volume_node, label_path: Path) -> np.ndarray:
    """Fill each segment with the phantom's reference voxels of its label value (the annotator's
    work, everywhere); returns the reference as an (x, y, z) array."""
    reference = sitk.GetArrayFromImage(read_image(label_path))
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        mask = (reference == index + 1).astype(np.uint8)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_image_from_array(mask, volume_node),
            segmentation_node,
            segmentation.GetNthSegmentID(index),
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        )
    return reference.transpose(2, 1, 0)


def paint(segmentation_node, volume_node, labels: np.ndarray) -> None:
    """Make each segment exactly the voxels of its label value in ``labels`` ((k, j, i))."""
    for segment_id, label in SegmentationLogic.segment_labels(segmentation_node):
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_image_from_array((labels == label.value).astype(np.uint8), volume_node),
            segmentation_node,
            segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        )


def annotation(segmentation_node, volume_node) -> np.ndarray:
    """The segments with their label values as a (k, j, i) array on the volume's grid."""
    segment_labels = SegmentationLogic.segment_labels(segmentation_node)
    return SegmentationLogic.merged_label_map(segmentation_node, segment_labels, volume_node)


def test_show_slice_puts_the_red_view_on_slice_k_of_a_rotated_volume(core: SlicerCore, volume_node) -> None:
    red = show_slice(core.scene, volume_node, 7)
    assert slice_under_view(volume_node, red) == 7
    slice_to_ras = red.GetSliceToRAS()
    normal = np.array([slice_to_ras.GetElement(row, 2) for row in range(3)])
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(ijk_to_ras)
    k_axis = np.array([ijk_to_ras.GetElement(row, 2) for row in range(3)])
    assert abs(abs(normal @ k_axis) - 1) < 1e-6, "the view is turned to the volume's slice plane"
    origin = np.array([slice_to_ras.GetElement(row, 3) for row in range(3)])
    assert abs((origin - slice_centre_ras(volume_node, 7)) @ normal) < 1e-6
    # Slice 7 of the rotated phantom, computed by SimpleITK in LPS: same plane.
    image = image_from_volume_node(volume_node)
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 7.0)))
    assert abs((np.array([-lps[0], -lps[1], lps[2]]) - origin) @ normal) < 1e-6
    show_slice(core.scene, volume_node, 29)
    assert slice_under_view(volume_node, red) == 29
    with pytest.raises(IndexError):
        show_slice(core.scene, volume_node, 30)


def test_marking_and_exporting_gives_the_labelled_slices_as_nifti(
    logic: AnnotationLogic, volume_node, phantom_files: tuple[Path, Path], tmp_path: Path
) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    reference = paint_reference(segmentation_node, volume_node, phantom_files[1])
    with pytest.raises(InputError, match="no slice is marked labelled"):
        logic.export_labels(segmentation_node, tmp_path / "labels.nii.gz")
    assert logic.mark_labelled(segmentation_node, [12, 3, 20]) == {3, 12, 20}
    assert logic.mark_labelled(segmentation_node, [20], labelled=False) == {3, 12}
    with pytest.raises(InputError, match="outside the volume"):
        logic.mark_labelled(segmentation_node, [30])
    written = logic.export_labels(segmentation_node, tmp_path / "labels.nii.gz")
    assert {path.name for path in written} >= {"labels.nii.gz", "labels.slices.json", "labels.labels.json"}
    image, sparse = read_sparse_labels(tmp_path / "labels.nii.gz")
    assert sparse.labelled_slices == {3, 12}
    assert same_geometry(image, read_image(phantom_files[0]), tolerance=1e-4)
    np.testing.assert_array_equal(sparse.label[:, :, [3, 12]], reference[:, :, [3, 12]])
    assert not sparse.label[:, :, 15].any() and reference[:, :, 15].any()


def test_suggestions_match_the_engine_and_are_marked_in_the_views(
    logic: AnnotationLogic, core: SlicerCore, volume_node, phantom_files: tuple[Path, Path]
) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    reference = paint_reference(segmentation_node, volume_node, phantom_files[1])
    logic.mark_labelled(segmentation_node, [10, 11])
    nodes_before = core.node_ids()
    run = logic.start_suggest(segmentation_node, "disagreement", budget=3, device="cpu")
    assert core.node_ids() == nodes_before, "starting changes nothing in the scene"
    rows = logic.finish_suggest(run)
    card = logic.model_card()
    expected = suggest_slices(
        image_from_volume_node(volume_node), card, load_network(card), {10, 11}, "disagreement", 3
    )
    assert [row["slice"] for row in rows] == [query.slice for query in expected.queries]
    assert [row["disagreement_voxels"] for row in rows] == [int(query.score) for query in expected.queries]
    # Suggested slices the reference leaves empty were pre-filled with the prediction.
    for row in rows:
        assert row["status"] == ("to label" if reference[:, :, row["slice"]].any() else "to correct")
    markers = core.scene.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert markers.GetNumberOfControlPoints() == len(rows)
    for index, row in enumerate(rows):
        position = np.array(markers.GetNthControlPointPositionWorld(index))
        np.testing.assert_allclose(position, slice_centre_ras(volume_node, row["slice"]), atol=1e-6)
        assert markers.GetNthControlPointLabel(index) == (
            f"slice {row['slice']} (P-DSC {row['p_dsc']:.2f}, {row['disagreement_voxels']} voxels disagree)"
        )
    logic.mark_labelled(segmentation_node, [rows[0]["slice"]])
    assert logic.suggestions(segmentation_node)[0]["status"] == "labelled"


@pytest.fixture
def trained_logic(logic: AnnotationLogic, demo_model: ModelCard) -> AnnotationLogic:
    """The logic with the trained phantom model in use: its prediction has the phantom's
    structures and background on every slice (an untrained network's is one label everywhere)."""
    logic.model = str(demo_model.directory)
    return logic


def test_suggested_slices_nobody_drew_start_as_the_prediction(
    trained_logic: AnnotationLogic, core: SlicerCore, volume_node, phantom_files, tmp_path: Path
) -> None:
    logic = trained_logic
    card = logic.model_card()
    segmentation_node = logic.create_annotation_segmentation(volume_node, card)
    image = image_from_volume_node(volume_node)
    expected = suggest_slices(image, card, load_network(card), {10, 11}, "disagreement", 4)
    prediction = sitk.GetArrayFromImage(expected.segmentation.label_map)  # (k, j, i)
    suggested = [query.slice for query in expected.queries]
    drawn = suggested[1]  # the annotator has drawn on it already (not marked labelled)
    labels = np.zeros_like(prediction)
    labels[10:12] = sitk.GetArrayFromImage(read_image(phantom_files[1]))[10:12]
    labels[drawn, 3:7, 4:9] = 2
    paint(segmentation_node, volume_node, labels)
    logic.mark_labelled(segmentation_node, [10, 11])
    nodes_before = core.node_ids()

    cancelled = logic.start_suggest(segmentation_node, "disagreement", budget=4, device="cpu")
    cancelled.cancel()
    with pytest.raises(CancelledError):
        logic.finish_suggest(cancelled)
    assert core.node_ids() == nodes_before, "a cancelled suggestion changes nothing in the scene"
    np.testing.assert_array_equal(annotation(segmentation_node, volume_node), labels)
    assert logic.prediction_node(segmentation_node) is None and not logic.prefilled_slices(segmentation_node)

    run = logic.start_suggest(segmentation_node, "disagreement", budget=4, device="cpu")
    rows = logic.finish_suggest(run)
    assert [row["slice"] for row in rows] == suggested
    prefilled = sorted(set(suggested) - {drawn})
    assert logic.prefilled_slices(segmentation_node) == set(prefilled)
    assert len(np.unique(prediction[prefilled])) > 1, "the prediction there is more than one label"
    after = annotation(segmentation_node, volume_node)
    np.testing.assert_array_equal(after[prefilled], prediction[prefilled])
    untouched = [index for index in range(after.shape[0]) if index not in prefilled]
    np.testing.assert_array_equal(after[untouched], labels[untouched])
    statuses = {row["slice"]: row["status"] for row in rows}
    assert statuses == {index: "to label" if index == drawn else "to correct" for index in suggested}

    prediction_node = logic.prediction_node(segmentation_node)
    assert prediction_node.IsA("vtkMRMLLabelMapVolumeNode")
    assert segmentation_node.GetNodeReference(PREDICTION_REFERENCE_ROLE) is prediction_node
    np.testing.assert_array_equal(array_from_image_data(prediction_node.GetImageData()), prediction)
    assert same_geometry(image_from_volume_node(prediction_node), image, tolerance=1e-6)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    assert prediction_node.GetAttribute(constants.GetSubjectHierarchyExcludeFromTreeAttributeName())

    # The next suggestion replaces the prediction in the same node.
    logic.finish_suggest(logic.start_suggest(segmentation_node, "random", budget=2, device="cpu"))
    assert logic.prediction_node(segmentation_node) is prediction_node
    assert core.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 1

    # Saved with the scene: the reference, the voxels and the pre-filled slices come back.
    assert core.scene.WriteToMRB(str(tmp_path / "session.mrb"))
    reloaded = start_slicer_core().scene
    reloaded.SetURL(slicer.vtkMRMLScene.UnpackSlicerDataBundle(str(tmp_path / "session.mrb"), str(tmp_path)))
    assert reloaded.Connect()
    segmentation_again = reloaded.GetFirstNodeByName(segmentation_node.GetName())
    assert AnnotationLogic.prefilled_slices(segmentation_again) >= set(prefilled)
    stored = AnnotationLogic.prediction_node(segmentation_again)
    np.testing.assert_array_equal(
        array_from_image_data(stored.GetImageData()), array_from_image_data(prediction_node.GetImageData())
    )


def most_frequent_label_voxels(labels: np.ndarray) -> int:
    """The voxels of the foreground label ``labels`` holds most of (0 without foreground)."""
    return int(np.bincount(labels[labels > 0].ravel()).max(initial=0))


def test_marking_a_corrected_slice_records_what_the_annotator_changed(
    trained_logic: AnnotationLogic, volume_node, tmp_path: Path
) -> None:
    logic = trained_logic
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    run = logic.start_suggest(segmentation_node, "disagreement", budget=3, device="cpu")
    rows = logic.finish_suggest(run)
    prediction = logic.prediction_array(segmentation_node)
    corrected = annotation(segmentation_node, volume_node)
    # A pre-filled slice, the suggested one where a label covers most voxels (how much the small
    # model predicts on each slice varies with the CPU's kernels): remove 3 voxels of its most
    # frequent label and add 5 of it elsewhere.
    index = max((row["slice"] for row in rows), key=lambda k: most_frequent_label_voxels(prediction[k]))
    assert logic.suggestions(segmentation_node)[0]["status"] == "to correct"
    values, counts = np.unique(prediction[index][prediction[index] > 0], return_counts=True)
    value, count = int(values[counts.argmax()]), int(counts.max())
    assert count > 3
    for j, i in np.argwhere(prediction[index] == value)[:3]:
        corrected[index, j, i] = 0
    for j, i in np.argwhere(prediction[index] == 0)[:5]:
        corrected[index, j, i] = value
    # A slice nobody suggested, drawn from scratch: a 3 x 4 box of label 1.
    drawn = next(k for k in range(corrected.shape[0]) if k not in {row["slice"] for row in rows})
    corrected[drawn, 2:5, 6:10] = 1
    paint(segmentation_node, volume_node, corrected)
    logic.mark_labelled(segmentation_node, [index, drawn])

    effort = logic.slice_effort(segmentation_node)
    # Dice of the changed label: the prediction's `count` voxels vs. count - 3 + 5, sharing count - 3;
    # every other label the prediction has there is untouched (Dice 1).
    others = len(values) - 1
    expected_dice = (others + 2 * (count - 3) / (2 * count + 2)) / len(values)
    assert effort[index] == SliceEffort(True, 5, 3, pytest.approx(expected_dice))
    box = np.zeros_like(prediction[drawn])
    box[2:5, 6:10] = 1
    present = set(np.unique(prediction[drawn])) - {0, 1}  # labels predicted there, not drawn: Dice 0
    predicted_1 = prediction[drawn] == 1
    dice_1 = 2 * np.count_nonzero(box & predicted_1) / (12 + np.count_nonzero(predicted_1))
    assert effort[drawn] == SliceEffort(False, 12, 0, pytest.approx(dice_1 / (1 + len(present))))
    row = next(row for row in logic.suggestions(segmentation_node) if row["slice"] == index)
    assert (row["status"], row["effort"]) == ("labelled", effort[index])
    logic.mark_labelled(segmentation_node, [index])  # marked again: its effort stays as measured
    assert logic.slice_effort(segmentation_node) == effort

    written = logic.export_labels(segmentation_node, tmp_path / "labels.nii.gz")
    assert read_slice_effort(written[0]) == effort
    assert read_sparse_labels(written[0])[1].labelled_slices == {index, drawn}
    logic.mark_labelled(segmentation_node, [drawn], labelled=False)
    assert set(logic.slice_effort(segmentation_node)) == {index}


def test_with_an_roi_only_its_slices_are_suggested(
    logic: AnnotationLogic, core: SlicerCore, volume_node, phantom_files: tuple[Path, Path]
) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    paint_reference(segmentation_node, volume_node, phantom_files[1])
    size = volume_node.GetImageData().GetDimensions()
    roi_node = roi_around_voxels(core.scene, volume_node, (0, 0, 12), (size[0] - 1, size[1] - 1, 20))
    rows = logic.finish_suggest(
        logic.start_suggest(segmentation_node, "p-dsc", budget=5, device="cpu", roi_node=roi_node)
    )
    assert len(rows) == 5 and all(12 <= row["slice"] <= 20 for row in rows), rows
    far = core.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    far.SetCenterWorld(5000.0, 0.0, 0.0)
    far.SetSizeWorld(10.0, 10.0, 10.0)
    with pytest.raises(InputError, match="holds no voxel"):
        logic.start_suggest(segmentation_node, roi_node=far)


def test_a_finetuning_round_is_picked_up(logic: AnnotationLogic, volume_node, phantom_files) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    paint_reference(segmentation_node, volume_node, phantom_files[1])
    logic.mark_labelled(segmentation_node, [8, 16, 24])
    previous = logic.model
    run = logic.start_finetune([segmentation_node], steps=4, device="cpu")
    card = logic.finish_finetune(run)
    assert logic.model == str(card.directory) != previous
    assert card.name == "annotation-round-001"
    assert card.data["training"]["fine_tuned_from"].startswith("tiny-attention")
    load_network(card)
    second = logic.start_finetune([segmentation_node], steps=2, device="cpu")
    assert logic.finish_finetune(second).name == "annotation-round-002"


@pytest.mark.slow
def test_with_an_roi_a_round_trains_on_the_box_only(
    logic: AnnotationLogic, core: SlicerCore, volume_node, phantom_files
) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    paint_reference(segmentation_node, volume_node, phantom_files[1])
    logic.mark_labelled(segmentation_node, [8, 16, 24])
    size = volume_node.GetImageData().GetDimensions()
    roi_node = roi_around_voxels(core.scene, volume_node, (0, 0, 12), (size[0] - 1, size[1] - 1, 20))
    whole = logic.finish_finetune(logic.start_finetune([segmentation_node], steps=2, device="cpu"))
    boxed = logic.finish_finetune(
        logic.start_finetune([segmentation_node], steps=2, device="cpu", roi_node=roi_node)
    )
    # Of the labelled slices 8, 16 and 24 only 16 lies in the box (slices 12 to 20); the card
    # counts the labelled slices the round trained on.
    assert "with 3 labelled slice(s)" in whole.data["training"]["data"]
    assert "with 1 labelled slice(s)" in boxed.data["training"]["data"]
    roi_node.SetCenterWorld(5000.0, 0.0, 0.0)
    with pytest.raises(InputError, match="holds no voxel"):
        logic.start_finetune([segmentation_node], steps=2, device="cpu", roi_node=roi_node)


def test_a_cancelled_finetuning_round_keeps_the_model(
    logic: AnnotationLogic, volume_node, phantom_files
) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    paint_reference(segmentation_node, volume_node, phantom_files[1])
    logic.mark_labelled(segmentation_node, [8, 16])
    previous = logic.model
    run = logic.start_finetune([segmentation_node], steps=5000, device="cpu")
    deadline = time.monotonic() + 120
    while run.progress.done < 1 and run.state() is JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.progress.stage == "fine-tuning" and "loss" in run.progress.details
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 1.0
    with pytest.raises(CancelledError):
        logic.finish_finetune(run)
    assert logic.model == previous
    assert wait_until(lambda: not run.output_dir.exists(), 10.0), "the cancelled round's folder is left"
    assert not list(logic.work_dir.glob("round-*"))


def test_a_failed_finetuning_round_keeps_the_model_and_leaves_no_folder(
    logic: AnnotationLogic, attention_model: ModelCard, volume_node, phantom_files, tmp_path: Path
) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    paint_reference(segmentation_node, volume_node, phantom_files[1])
    logic.mark_labelled(segmentation_node, [8, 16])
    no_engine = AnnotationLogic(logic.scene, logic.work_dir, python_executable=str(tmp_path / "no-python"))
    no_engine.model = logic.model
    with pytest.raises(OSError):
        no_engine.start_finetune([segmentation_node], steps=2)
    assert not list(logic.work_dir.glob("round-*")), "a round that could not start left its folder"
    attention_model.weights_path.write_bytes(b"not the model's weights")
    run = logic.start_finetune([segmentation_node], steps=2, device="cpu")
    assert run.output_dir.is_dir()
    with pytest.raises(AsdsegError, match="do not match their model card"):
        logic.finish_finetune(run)
    assert logic.model == str(attention_model.directory)
    assert not list(logic.work_dir.glob("round-*"))


def test_segments_the_model_does_not_know_are_refused(logic: AnnotationLogic, volume_node) -> None:
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    segmentation_node.GetSegmentation().AddEmptySegment("", "liver")
    logic.mark_labelled(segmentation_node, [5])
    with pytest.raises(InputError, match="'liver' is not one of the model's labels"):
        logic.start_finetune([segmentation_node], steps=2)


def test_new_model_for_the_segments(core: SlicerCore, tmp_path: Path, volume_node) -> None:
    logic = AnnotationLogic(core.scene, tmp_path / "session")
    with pytest.raises(ModelError, match="no model is selected"):
        logic.model_card()
    segmentation_node = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.GetSegmentation().AddEmptySegment("", "bladder")
    card = logic.new_model(segmentation_node, volume_node)
    assert logic.model_card().directory == card.directory
    assert [label.name for label in card.labels] == ["background", "bladder"]
    assert card.spacing == pytest.approx(volume_node.GetSpacing())
    assert image_to_array(image_from_volume_node(volume_node)).shape == (40, 36, 30)


def test_suggestions_in_the_warm_engine_equal_those_of_a_process_of_their_own(
    logic: AnnotationLogic, core: SlicerCore, volume_node, tmp_path: Path
) -> None:
    engine = WarmEngine(environment=engine_environment())
    warm = AnnotationLogic(core.scene, tmp_path / "warm-session", engine=engine)
    warm.model = logic.model
    try:
        rows = []
        for annotation_logic in (logic, warm, warm):
            segmentation_node = annotation_logic.create_annotation_segmentation(
                volume_node, annotation_logic.model_card()
            )
            run = annotation_logic.start_suggest(segmentation_node, "disagreement", budget=3, device="cpu")
            assert isinstance(run.job, EngineJob) == (annotation_logic is warm)
            rows.append(annotation_logic.finish_suggest(run))
        assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 3
        assert engine.starts == 1
    finally:
        engine.shutdown()
