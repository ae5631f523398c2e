"""ASDSeg's logic driven against the real Slicer core libraries (slicer-core), no Qt."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch
import vtk
import vtk.util.numpy_support
from test_background import long_segmentation, process_running

from asdseg.background import BackgroundJob, JobState, engine_environment
from asdseg.errors import AsdsegError, CancelledError, InputError, ModelError
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.image_io import image_to_array, read_image, same_geometry
from asdseg.io.labels import Label
from asdseg.networks import build_network
from asdseg.registry import load_network, save_model, user_models_dir
from asdseg.registry.model_card import ModelCard
from asdseg.warm_engine import EngineJob, WarmEngine

from ASDSegLib.roi_nodes import roi_region
from ASDSegLib.segmentation_logic import RunOptions, SegmentationLogic
from ASDSegLib.segments import LABEL_VALUE_TAG, apply_label
from ASDSegLib.volume_nodes import image_from_volume_node, update_volume_node_from_image
from conftest import tiny_card, wait_until
from mrml_application import SlicerCore, roi_around_voxels, start_slicer_core

LEFT_ATRIUM_CODES = {
    "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "value": "82471001", "meaning": "Left atrium"},
}


@pytest.fixture
def core() -> SlicerCore:
    return start_slicer_core()


@pytest.fixture
def logic(core: SlicerCore) -> SegmentationLogic:
    return SegmentationLogic(core.scene)


@pytest.fixture
def confidence_installed() -> ModelCard:
    """An untrained VNet with SDM head and confidence network; label 1 carries standard codes."""
    card = tiny_card("tiny-confidence", sdm=True, confidence=True)
    card["labels"] = [dict(entry) for entry in card["labels"]]
    card["labels"][1]["terminology"] = LEFT_ATRIUM_CODES
    torch.manual_seed(1)
    network = build_network(card["architecture"]["name"], card["architecture"]["params"])
    return save_model(network, card, user_models_dir() / card["name"])


@pytest.fixture
def volume_node(core: SlicerCore, phantom_files: tuple[Path, Path]) -> slicer.vtkMRMLScalarVolumeNode:
    node = core.volumes_logic.AddArchetypeVolume(str(phantom_files[0]), "phantom")
    assert node is not None
    return node


def fp32_options(largest_component: bool) -> RunOptions:
    """Runs compared with :func:`engine_result` (fp32) must be fp32 too: the default, ``auto``,
    is bf16 on CPUs with native bf16."""
    return RunOptions(precision="fp32", largest_component=largest_component)


def engine_result(image_path: Path, card: ModelCard, largest_component: bool):
    """What the engine itself gives for the same input, in this process."""
    options = SegmentationOptions(largest_component=largest_component)
    return segment_image(read_image(image_path), card, load_network(card), options)


def terminology_of(segment: slicer.vtkSegment) -> slicer.vtkSlicerTerminologyEntry:
    """The segment's terminology, read from the tag every Slicer version stores it in and
    parsed by Slicer's terminology logic."""
    serialised = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), serialised)
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(str(serialised), entry)
    return entry


class Slicer58Segment(slicer.vtkSegment):
    """A vtkSegment as Slicer 5.8 has it: SetTerminology first ships in 5.10."""

    @property
    def SetTerminology(self):  # noqa: N802 (Slicer's name)
        raise AttributeError("'vtkSegment' object has no attribute 'SetTerminology'")


def test_label_codes_are_stored_the_way_slicer_5_8_reads_them() -> None:
    segment = Slicer58Segment()
    apply_label(segment, Label(3, "left atrium", (200, 80, 60), LEFT_ATRIUM_CODES))
    assert terminology_of(segment).GetTypeObject().GetCodeValue() == "82471001"
    assert segment.GetName() == "left atrium"


def segment_voxel_counts(segmentation_node) -> dict[str, int]:
    """Voxels of each segment, counted in the binary labelmap Slicer stores it in."""
    segmentation = segmentation_node.GetSegmentation()
    counts = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        labelmap = segment.GetRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        )
        voxels = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
        counts[segment.GetName()] = int(np.count_nonzero(voxels == segment.GetLabelValue()))
    return counts


def test_volume_node_keeps_voxels_and_geometry(volume_node, phantom_files: tuple[Path, Path]) -> None:
    original = read_image(phantom_files[0])
    converted = image_from_volume_node(volume_node)
    assert same_geometry(converted, original, tolerance=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(original))


def test_volume_node_written_from_image_reads_back_the_same(core: SlicerCore, phantom_files) -> None:
    original = read_image(phantom_files[0])
    node = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    update_volume_node_from_image(node, original)
    converted = image_from_volume_node(node)
    assert same_geometry(converted, original, tolerance=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(original))


def test_segments_are_named_coloured_and_match_the_engine(
    core: SlicerCore, logic: SegmentationLogic, volume_node, demo_installed: ModelCard, phantom_files
) -> None:
    outputs = logic.segment(volume_node, demo_installed.name, fp32_options(largest_component=True))
    expected = engine_result(phantom_files[0], demo_installed, largest_component=True).label_array()
    segmentation = outputs.segmentation_node.GetSegmentation()
    labels = demo_installed.foreground_labels
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        label.name for label in labels
    ]
    counts = segment_voxel_counts(outputs.segmentation_node)
    for label in labels:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(label.name))
        np.testing.assert_allclose(segment.GetColor(), np.array(label.color) / 255.0, atol=1e-6)
        tag = vtk.reference("")
        assert segment.GetTag(LABEL_VALUE_TAG, tag) and str(tag) == str(label.value)
        assert counts[label.name] == np.count_nonzero(expected == label.value) > 100
    assert logic.source_volume(outputs.segmentation_node) is volume_node
    assert outputs.confidence_node is None  # the phantom model has no confidence network
    assert outputs.sdm_node is not None


def test_confidence_and_sdm_volumes_have_the_input_geometry_and_the_engine_values(
    logic: SegmentationLogic, volume_node, confidence_installed: ModelCard, phantom_files
) -> None:
    outputs = logic.segment(volume_node, confidence_installed.name, fp32_options(largest_component=False))
    expected = engine_result(phantom_files[0], confidence_installed, largest_component=False)
    input_image = image_from_volume_node(volume_node)
    confidence = image_from_volume_node(outputs.confidence_node)
    sdm = image_from_volume_node(outputs.sdm_node)
    for image in (confidence, sdm):
        assert same_geometry(image, input_image, tolerance=1e-5)
    np.testing.assert_allclose(image_to_array(confidence), image_to_array(expected.confidence), atol=1e-4)
    nearest_surface = np.minimum(*(image_to_array(expected.sdm[value]) for value in (1, 2)))
    np.testing.assert_allclose(image_to_array(sdm), nearest_surface, atol=1e-4)
    # Each organ's own SDM too, named after the organ.
    organs = {label.name: label.value for label in confidence_installed.foreground_labels}
    assert set(outputs.organ_sdm_nodes) == set(organs) and len(organs) == 2
    for name, node in outputs.organ_sdm_nodes.items():
        assert node.GetName() == f"{volume_node.GetName()} signed distance {name}"
        organ_sdm = image_from_volume_node(node)
        assert same_geometry(organ_sdm, input_image, tolerance=1e-5)
        np.testing.assert_allclose(
            image_to_array(organ_sdm), image_to_array(expected.sdm[organs[name]]), atol=1e-4
        )
    assert image_to_array(confidence).min() >= 0.0 and image_to_array(confidence).max() <= 1.0

    display = outputs.confidence_node.GetDisplayNode()
    assert display.GetColorNode().GetName() == "ASDSeg confidence"
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    sdm_display = outputs.sdm_node.GetDisplayNode()
    assert sdm_display.GetWindowLevelMin() == pytest.approx(-sdm_display.GetWindowLevelMax())

    segmentation = outputs.segmentation_node.GetSegmentation()
    coded = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("ellipsoid"))
    entry = terminology_of(coded)
    assert entry.GetTerminologyContextName() == "Segmentation category and type - DICOM master list"
    assert entry.GetCategoryObject().GetCodeValue() == "123037004"
    assert (entry.GetTypeObject().GetCodeValue(), entry.GetTypeObject().GetCodeMeaning()) == (
        "82471001",
        "Left atrium",
    )


def test_overlay_choice_sets_the_slice_views_foreground(
    core: SlicerCore, logic: SegmentationLogic, volume_node, confidence_installed: ModelCard
) -> None:
    outputs = logic.segment(volume_node, confidence_installed.name)
    composites = [
        core.scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(index)
        for index in range(core.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    assert len(composites) == 3
    for kind, node in (("confidence", outputs.confidence_node), ("sdm", outputs.sdm_node)):
        assert logic.show_overlay(outputs.segmentation_node, kind, 0.3) is node
        for composite in composites:
            assert composite.GetForegroundVolumeID() == node.GetID()
            assert composite.GetBackgroundVolumeID() == volume_node.GetID()
            assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    logic.show_overlay(outputs.segmentation_node, "none")
    assert all(composite.GetForegroundVolumeID() is None for composite in composites)


def test_overlay_the_model_does_not_give_is_refused(logic, volume_node, demo_installed) -> None:
    outputs = logic.segment(volume_node, demo_installed.name)
    with pytest.raises(InputError, match="no confidence map"):
        logic.show_overlay(outputs.segmentation_node, "confidence")


def test_export_equals_the_engine_label_map_whatever_the_segment_order(
    logic: SegmentationLogic, volume_node, demo_installed: ModelCard, phantom_files, tmp_path: Path
) -> None:
    outputs = logic.segment(volume_node, demo_installed.name, fp32_options(largest_component=True))
    expected = engine_result(phantom_files[0], demo_installed, largest_component=True)

    first = logic.export_segmentation(outputs.segmentation_node, tmp_path / "first.nii.gz")
    segmentation = outputs.segmentation_node.GetSegmentation()
    segmentation.SetSegmentIndex(segmentation.GetNthSegmentID(1), 0)  # the user reorders the list
    logic.export_segmentation(outputs.segmentation_node, tmp_path / "reordered.nii.gz")

    for name in ("first", "reordered"):
        exported = read_image(tmp_path / f"{name}.nii.gz")
        assert same_geometry(exported, expected.label_map, tolerance=1e-5)
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(exported), sitk.GetArrayViewFromImage(expected.label_map)
        )
    sidecar = json.loads((tmp_path / "first.labels.json").read_text())
    assert {(entry["value"], entry["name"]) for entry in sidecar["labels"]} == {
        (label.value, label.name) for label in demo_installed.labels
    }
    assert [path.name for path in first] == [
        "first.nii.gz",
        "first.labels.json",
        "first.ctbl",
        "first.itksnap.txt",
    ]


def test_export_gives_added_segments_the_next_free_values(
    logic: SegmentationLogic, volume_node, demo_installed: ModelCard, tmp_path: Path
) -> None:
    outputs = logic.segment(volume_node, demo_installed.name)
    outputs.segmentation_node.GetSegmentation().AddEmptySegment("", "lesion")
    labels = {label.name: label.value for _, label in logic.segment_labels(outputs.segmentation_node)}
    assert labels == {"ellipsoid": 1, "sphere": 2, "lesion": 3}
    logic.export_segmentation(outputs.segmentation_node, tmp_path / "seg.nii.gz")
    assert "lesion" in (tmp_path / "seg.ctbl").read_text()


def test_export_to_a_bad_name_writes_nothing(logic, volume_node, demo_installed, tmp_path: Path) -> None:
    outputs = logic.segment(volume_node, demo_installed.name)
    folder = tmp_path / "export"
    folder.mkdir()
    with pytest.raises(InputError, match="NIfTI"):
        logic.export_segmentation(outputs.segmentation_node, folder / "seg.txt")
    assert list(folder.iterdir()) == []


def test_mirroring_off_runs_one_pass_where_the_card_asks_for_mirroring(
    logic: SegmentationLogic, volume_node, phantom_files
) -> None:
    """An untrained (not flip-equivariant) model whose card mirrors in x and y: the panel's
    default gives the engine's mirrored confidence map, unticking it the single-pass one."""
    card = tiny_card("tiny-mirrored", sdm=True, confidence=True)
    card["inference"] = {**card["inference"], "mirror_axes": [0, 1]}
    torch.manual_seed(1)
    network = build_network(card["architecture"]["name"], card["architecture"]["params"])
    model = save_model(network, card, user_models_dir() / card["name"])
    image = read_image(phantom_files[0])
    for mirroring, axes in ((True, (0, 1)), (False, ())):
        run = RunOptions(precision="fp32", largest_component=False, mirroring=mirroring)
        outputs = logic.segment(volume_node, model.name, run)
        options = SegmentationOptions(mirror_axes=axes)
        expected = segment_image(image, model, load_network(model), options).confidence
        confidence = image_to_array(image_from_volume_node(outputs.confidence_node))
        np.testing.assert_allclose(confidence, image_to_array(expected), atol=1e-5)
    single_pass = segment_image(image, model, load_network(model), SegmentationOptions(mirror_axes=()))
    mirrored = segment_image(image, model, load_network(model), SegmentationOptions())
    # The untrained confidence network is nearly constant, so the two differ by little, but by
    # more than ten times the tolerance above.
    assert np.abs(image_to_array(single_pass.confidence) - image_to_array(mirrored.confidence)).max() > 1e-4


def test_running_again_updates_the_same_nodes_unless_a_new_one_is_asked_for(
    core: SlicerCore, logic: SegmentationLogic, volume_node, confidence_installed: ModelCard
) -> None:
    first = logic.segment(volume_node, confidence_installed.name)
    nodes_after_first = core.node_ids()
    second = logic.segment(volume_node, confidence_installed.name, RunOptions(overlap=0.5))
    assert second.segmentation_node is first.segmentation_node
    assert second.confidence_node is first.confidence_node and second.sdm_node is first.sdm_node
    assert second.organ_sdm_nodes == first.organ_sdm_nodes and len(first.organ_sdm_nodes) == 2
    assert core.node_ids() == nodes_after_first
    assert second.segmentation_node.GetSegmentation().GetNumberOfSegments() == 2

    third = logic.segment(volume_node, confidence_installed.name, new_node=True)
    assert third.segmentation_node is not first.segmentation_node
    assert core.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2


def large_volume_node(core: SlicerCore) -> slicer.vtkMRMLScalarVolumeNode:
    """A volume whose segmentation runs long enough (many windows) to be cancelled midway."""
    large = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(96, 96, 96)).astype(np.float32))
    node = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "large")
    update_volume_node_from_image(node, large)
    return node


def test_cancel_stops_the_engine_and_leaves_the_scene_unchanged(
    core: SlicerCore, logic: SegmentationLogic, demo_installed: ModelCard, tmp_path: Path
) -> None:
    node = large_volume_node(core)
    before = core.node_ids()
    run = logic.start(node, demo_installed.name, RunOptions(overlap=0.9))
    deadline = time.monotonic() + 120
    while run.progress.done < 1 and run.state() is JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.progress.done >= 1 and run.progress.done < run.progress.total  # cancelled mid-inference
    run.cancel()
    assert run.state() is JobState.CANCELLED  # at once; the child is killed, not waited for
    with pytest.raises(CancelledError):
        logic.finish(run)
    assert core.node_ids() == before


def test_bad_input_is_refused_with_a_clear_error_and_the_scene_unchanged(
    core: SlicerCore, logic: SegmentationLogic, demo_installed: ModelCard, volume_node
) -> None:
    before = core.node_ids()
    with pytest.raises(InputError, match="no input volume"):
        logic.start(None, demo_installed.name)
    with pytest.raises(ModelError, match="no model is selected"):
        logic.start(volume_node, None)
    with pytest.raises(ModelError, match="unknown-model"):
        logic.start(volume_node, "unknown-model")
    with pytest.raises(InputError, match="overlap"):
        logic.start(volume_node, demo_installed.name, RunOptions(overlap=1.5))
    assert core.node_ids() == before

    flat = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "one slice")
    update_volume_node_from_image(flat, sitk.GetImageFromArray(np.ones((1, 20, 20), np.float32)))
    constant = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "constant")
    update_volume_node_from_image(constant, sitk.GetImageFromArray(np.ones((20, 20, 20), np.float32)))
    before = core.node_ids()
    with pytest.raises(InputError, match="single slice"):
        logic.start(flat, demo_installed.name)
    with pytest.raises(AsdsegError, match="constant"):  # refused by the engine in the child process
        logic.segment(constant, demo_installed.name)
    assert core.node_ids() == before


def test_an_empty_scene_says_to_load_a_volume(core: SlicerCore, logic: SegmentationLogic) -> None:
    before = core.node_ids()
    with pytest.raises(InputError, match="no volume; load"):
        logic.start(None, "anything")
    assert core.node_ids() == before


# Region of interest ------------------------------------------------------------------------

#: The voxel box (first, last index along i, j, k) the tests' ROI covers: part of the phantom.
FIRST, LAST = (6, 10, 4), (34, 30, 25)


def label_map_of(logic: SegmentationLogic, segmentation_node, path: Path) -> np.ndarray:
    logic.export_segmentation(segmentation_node, path)
    return sitk.GetArrayFromImage(read_image(path)).transpose(2, 1, 0)


def test_the_roi_node_gives_the_voxel_box_whose_centres_it_holds(core: SlicerCore, volume_node) -> None:
    roi_node = roi_around_voxels(core.scene, volume_node, FIRST, LAST)
    roi, warnings = roi_region(roi_node, volume_node)
    assert (roi.first, roi.last, roi.space) == (FIRST, LAST, "voxel") and warnings == []


def test_a_shared_transform_moves_volume_and_roi_together_and_keeps_the_box(
    core: SlicerCore, volume_node
) -> None:
    roi_node = roi_around_voxels(core.scene, volume_node, FIRST, LAST)
    transform_node = core.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    moved = vtk.vtkTransform()
    moved.Translate(40.0, -25.0, 12.0)
    moved.RotateWXYZ(30.0, 0.3, 0.5, 0.8)
    transform_node.SetMatrixTransformToParent(moved.GetMatrix())
    volume_node.SetAndObserveTransformNodeID(transform_node.GetID())
    roi_node.SetAndObserveTransformNodeID(transform_node.GetID())
    roi = roi_region(roi_node, volume_node)[0]
    assert (roi.first, roi.last) == (FIRST, LAST)

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    three_voxels_along_i = 3 * np.array([ijk_to_ras.GetElement(row, 0) for row in range(3)])
    shifted = vtk.vtkTransform()  # moved, after 3 voxels along i in the volume's own frame
    shifted.Concatenate(moved)
    shifted.Translate(*three_voxels_along_i)
    roi_transform = core.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ROI moved")
    roi_transform.SetMatrixTransformToParent(shifted.GetMatrix())
    roi_node.SetAndObserveTransformNodeID(roi_transform.GetID())
    roi = roi_region(roi_node, volume_node)[0]
    assert (roi.first, roi.last) == ((FIRST[0] + 3, *FIRST[1:]), (LAST[0] + 3, *LAST[1:]))


def test_segmenting_with_an_roi_equals_segmenting_the_roi_cut_out(
    logic: SegmentationLogic,
    core: SlicerCore,
    volume_node,
    demo_installed: ModelCard,
    phantom_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    roi_node = roi_around_voxels(core.scene, volume_node, FIRST, LAST)
    options = RunOptions(precision="fp32", largest_component=False)
    outputs = logic.segment(volume_node, demo_installed.name, options, roi_node=roi_node)
    labels = label_map_of(logic, outputs.segmentation_node, tmp_path / "roi.nii.gz")

    inside = tuple(slice(first, last + 1) for first, last in zip(FIRST, LAST, strict=True))
    cut_out = read_image(phantom_files[0])[inside]
    expected = segment_image(
        cut_out, demo_installed, load_network(demo_installed), SegmentationOptions(precision="fp32")
    ).label_array()
    assert expected.any()
    np.testing.assert_array_equal(labels[inside], expected)
    outside = np.ones(labels.shape, dtype=bool)
    outside[inside] = False
    assert not labels[outside].any()


def test_an_roi_outside_the_volume_is_refused_and_the_scene_is_unchanged(
    logic: SegmentationLogic, core: SlicerCore, volume_node, demo_installed: ModelCard
) -> None:
    far = core.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    far.SetCenterWorld(5000.0, 0.0, 0.0)
    far.SetSizeWorld(20.0, 20.0, 20.0)
    before = core.node_ids()
    with pytest.raises(InputError, match="holds no voxel of the volume"):
        logic.start(volume_node, demo_installed.name, roi_node=far)
    with pytest.raises(InputError, match="pick a markups ROI"):
        logic.start(volume_node, demo_installed.name, roi_node=volume_node)
    assert core.node_ids() == before


def test_a_clipped_roi_runs_and_says_it_was_clipped(core: SlicerCore, volume_node) -> None:
    size = volume_node.GetImageData().GetDimensions()
    roi_node = roi_around_voxels(core.scene, volume_node, (-10, 4, 4), (size[0] + 5, 20, 20))
    roi, warnings = roi_region(roi_node, volume_node)
    assert (roi.first, roi.last) == ((0, 4, 4), (size[0] - 1, 20, 20))
    assert len(warnings) == 1 and "clipped" in warnings[0]


def test_a_new_roi_is_centred_on_the_volume_and_the_models_training_size(
    logic: SegmentationLogic, core: SlicerCore, volume_node, demo_installed: ModelCard
) -> None:
    roi_node = logic.add_roi(volume_node, demo_installed.name)
    bounds = np.zeros(6)
    volume_node.GetRASBounds(bounds)
    centre = np.zeros(3)
    roi_node.GetCenterWorld(centre)
    np.testing.assert_allclose(centre, bounds.reshape(3, 2).mean(axis=1), atol=1e-6)
    radius = np.zeros(3)
    roi_node.GetRadiusXYZ(radius)
    extent = bounds[1::2] - bounds[::2]
    trained = demo_installed.data["preprocessing"].get("field_of_view_mm")
    expected = np.minimum(trained, extent) if trained else 0.5 * extent
    np.testing.assert_allclose(2 * radius, expected, atol=1e-6)
    assert roi_region(roi_node, volume_node)[1] == []  # inside the volume: nothing clipped


def test_the_roi_and_its_reference_survive_saving_and_loading_the_scene(
    core: SlicerCore, volume_node, tmp_path: Path
) -> None:
    roi_node = roi_around_voxels(core.scene, volume_node, FIRST, LAST)
    parameters = core.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "ASDSeg")
    parameters.SetNodeReferenceID("roi", roi_node.GetID())  # how the parameter node keeps it
    storage = core.scene.AddNode(slicer.vtkMRMLMarkupsROIJsonStorageNode())
    storage.SetFileName(str(tmp_path / "roi.mrk.json"))
    roi_node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.WriteData(roi_node)
    core.scene.SetRootDirectory(str(tmp_path))
    core.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert core.scene.Commit()

    reloaded = start_slicer_core().scene
    reloaded.SetRootDirectory(str(tmp_path))
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    reloaded.Connect()
    roi_again = reloaded.GetFirstNodeByName("ASDSeg").GetNodeReference("roi")
    volume_again = reloaded.GetFirstNodeByName("phantom")
    assert roi_again is not None and volume_again is not None
    roi = roi_region(roi_again, volume_again)[0]
    assert (roi.first, roi.last) == (FIRST, LAST)


@pytest.fixture
def warm_logic(core: SlicerCore) -> SegmentationLogic:
    """The logic as the module builds it: its segmentations run in a warm engine."""
    logic = SegmentationLogic(core.scene, engine=WarmEngine(environment=engine_environment()))
    yield logic
    logic.engine.shutdown()


def test_segmentations_in_the_warm_engine_share_one_process_and_match_the_engine(
    warm_logic: SegmentationLogic, volume_node, demo_installed: ModelCard, phantom_files
) -> None:
    expected = engine_result(phantom_files[0], demo_installed, largest_component=True).label_array()
    processes = set()
    for _ in range(2):
        run = warm_logic.start(volume_node, demo_installed.name, fp32_options(largest_component=True))
        assert isinstance(run.job, EngineJob)
        processes.add(warm_logic.engine.pid)
        outputs = warm_logic.finish(run)
        assert not outputs.warnings
        counts = segment_voxel_counts(outputs.segmentation_node)
        for label in demo_installed.foreground_labels:
            assert counts[label.name] == np.count_nonzero(expected == label.value) > 100
    assert warm_logic.engine.starts == 1 and len(processes) == 1 and warm_logic.engine.running


def test_a_busy_warm_engine_sends_the_segmentation_to_a_process_of_its_own(
    warm_logic: SegmentationLogic, volume_node, demo_installed: ModelCard, tmp_path: Path
) -> None:
    """The other module's long job holds the engine: Segment neither waits for it nor fails."""
    other = warm_logic.engine.submit(long_segmentation(tmp_path, demo_installed))
    run = warm_logic.start(volume_node, demo_installed.name, fp32_options(largest_component=False))
    assert isinstance(run.job, BackgroundJob)
    outputs = warm_logic.finish(run)
    assert outputs.segmentation_node.GetSegmentation().GetNumberOfSegments() == 2
    assert other.state() is JobState.RUNNING  # untouched by the run beside it
    other.cancel()


def test_cancelling_in_the_warm_engine_ends_it_and_the_next_segmentation_starts_a_fresh_one(
    core: SlicerCore, warm_logic: SegmentationLogic, volume_node, demo_installed: ModelCard
) -> None:
    node = large_volume_node(core)
    before = core.node_ids()
    run = warm_logic.start(node, demo_installed.name, RunOptions(overlap=0.9))
    assert wait_until(lambda: run.progress.done >= 1 or run.state() is not JobState.RUNNING, 120)
    first_engine = warm_logic.engine.pid
    run.cancel()
    assert run.state() is JobState.CANCELLED and not warm_logic.engine.running
    with pytest.raises(CancelledError):
        warm_logic.finish(run)
    assert core.node_ids() == before
    assert wait_until(lambda: not process_running(first_engine), 5.0), "the cancelled engine lives on"
    warm_logic.segment(volume_node, demo_installed.name, fp32_options(largest_component=False))
    assert warm_logic.engine.starts == 2
