"""ASDSeg's region of interest: a markups ROI node restricts the run (real Slicer core, no Qt)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from asdseg.errors import InputError
from asdseg.image_io import read_image
from asdseg.model_card import ModelCard
from asdseg.registry import load_network, user_models_dir
from asdseg.segment import SegmentationOptions, segment_image

from ASDSegLib.roi_nodes import roi_region
from ASDSegLib.segmentation_logic import RunOptions, SegmentationLogic
from mrml_application import SlicerCore, roi_around_voxels, start_slicer_core

#: The voxel box (first, last index along i, j, k) the tests' ROI covers: part of the phantom.
FIRST, LAST = (6, 10, 4), (34, 30, 25)


@pytest.fixture
def core() -> SlicerCore:
    return start_slicer_core()


@pytest.fixture
def logic(core: SlicerCore) -> SegmentationLogic:
    return SegmentationLogic(core.scene)


@pytest.fixture
def demo_installed(demo_model: ModelCard) -> ModelCard:
    target = user_models_dir() / demo_model.name
    shutil.copytree(demo_model.directory, target)
    return ModelCard.load(target / "card.json")


@pytest.fixture
def volume_node(core: SlicerCore, phantom_files: tuple[Path, Path]) -> slicer.vtkMRMLScalarVolumeNode:
    return core.volumes_logic.AddArchetypeVolume(str(phantom_files[0]), "phantom")


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
