"""Markups ROI nodes <-> the engine's regions of interest.

The panel's region of interest is a markups ROI node (the box the Crop Volume module uses),
placed and resized in the views. The engine receives it as the box of the input volume's voxel
indices whose centres lie inside it: voxel indices mean the same in the file the engine reads
and in the scene, whatever transforms the volume or the ROI sit under, and a box rotated
against the volume's axes becomes the smallest index box holding it.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import slicer
import vtk

from asdseg.errors import InputError
from asdseg.preprocessing.roi import RegionOfInterest, index_box_from_bounds
from asdseg.registry.model_card import ModelCard

#: The ROI a new box gets when the model records no training field of view: this share of the
#: volume's extent along each axis.
_DEFAULT_SHARE = 0.5


def _roi_corners_world(roi_node: slicer.vtkMRMLMarkupsROINode) -> np.ndarray:
    """The ROI box's 8 corners in world RAS (mm)."""
    radius = np.zeros(3)
    roi_node.GetRadiusXYZ(radius)
    object_to_world = roi_node.GetObjectToWorldMatrix()
    corners = []
    for signs in product((-1.0, 1.0), repeat=3):
        corner = object_to_world.MultiplyPoint((*(np.asarray(signs) * radius), 1.0))
        corners.append(corner[:3])
    return np.asarray(corners)


def _world_to_ijk(volume_node: slicer.vtkMRMLScalarVolumeNode) -> vtk.vtkGeneralTransform:
    """World RAS -> the volume's continuous voxel indices, through any (linear) parent transform."""
    world_to_ijk = vtk.vtkGeneralTransform()
    world_to_ijk.PostMultiply()
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        world_to_local = vtk.vtkGeneralTransform()
        parent.GetTransformFromWorld(world_to_local)
        world_to_ijk.Concatenate(world_to_local)
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    world_to_ijk.Concatenate(ras_to_ijk)
    return world_to_ijk


def roi_region(
    roi_node: slicer.vtkMRMLMarkupsROINode, volume_node: slicer.vtkMRMLScalarVolumeNode
) -> tuple[RegionOfInterest, list[str]]:
    """The voxels of ``volume_node`` inside ``roi_node``, clipped to the volume, as the engine's
    voxel ROI, and a warning when it had to be clipped. (The engine itself warns when the region
    is much larger than the model's training volumes.)

    Raises :class:`InputError` when the ROI holds no voxel of the volume (or only a 1-voxel slab).
    """
    world_to_ijk = _world_to_ijk(volume_node)
    indices = np.asarray([world_to_ijk.TransformPoint(*corner) for corner in _roi_corners_world(roi_node)])
    description = f"{roi_node.GetName()!r}"
    box, warnings = index_box_from_bounds(
        indices.min(axis=0), indices.max(axis=0), volume_node.GetImageData().GetDimensions(), description
    )
    last = tuple(int(stop) - 1 for stop in box.stop)
    return RegionOfInterest(tuple(int(start) for start in box.start), last, "voxel"), warnings


def _volume_bounds_world(volume_node: slicer.vtkMRMLScalarVolumeNode) -> np.ndarray:
    bounds = np.zeros(6)
    volume_node.GetRASBounds(bounds)
    return bounds.reshape(3, 2)


def add_roi_for_volume(
    scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLScalarVolumeNode, card: ModelCard | None = None
) -> slicer.vtkMRMLMarkupsROINode:
    """A new ROI node centred on the volume, as large as the volumes ``card``'s model was trained
    on (when the card says; else half the volume), at most the volume: a start to move over the
    organ and resize."""
    bounds = _volume_bounds_world(volume_node)
    extent = bounds[:, 1] - bounds[:, 0]
    trained = card.data["preprocessing"].get("field_of_view_mm") if card is not None else None
    if trained is not None:
        # The card's sizes follow the image axes; on an oblique volume take the largest.
        size = np.minimum(np.full(3, max(trained)) if _is_oblique(volume_node) else trained, extent)
    else:
        size = _DEFAULT_SHARE * extent
    roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName("ASDSeg ROI"))
    roi_node.CreateDefaultDisplayNodes()
    roi_node.SetCenterWorld(*bounds.mean(axis=1))
    roi_node.SetSizeWorld(*size)
    return roi_node


def _is_oblique(volume_node: slicer.vtkMRMLScalarVolumeNode) -> bool:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    direction = np.abs([[matrix.GetElement(row, column) for column in range(3)] for row in range(3)])
    return not np.allclose(direction, np.eye(3), atol=1e-6)


def check_roi_node(roi_node: slicer.vtkMRMLNode | None) -> None:
    """Raise :class:`InputError` when the chosen node cannot serve as a region of interest."""
    if roi_node is not None and not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise InputError(f"{roi_node.GetName()!r} is a {roi_node.GetClassName()}; pick a markups ROI.")
    transform = roi_node.GetParentTransformNode() if roi_node is not None else None
    if transform is not None and not transform.IsTransformToWorldLinear():
        raise InputError(f"the ROI {roi_node.GetName()!r} is under a non-linear transform; harden it first.")
