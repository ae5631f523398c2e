"""Slices of a volume in the slice views: where slice k is, showing it, marking suggestions.

"Slice k" is the k-th slice along the volume's third voxel axis (the axial slice of the usual
acquisition), the unit the engine ranks and labels. Its position in the world is taken from the
volume's IJK-to-RAS matrix, so volumes with any direction (and under a linear transform) land on
the right plane.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

#: Attribute of the markups node that marks suggested slices, naming the volume they belong to.
MARKERS_ATTRIBUTE = "ActiveAnnotate.SuggestionsFor"


def slice_centre_ras(volume_node: slicer.vtkMRMLScalarVolumeNode, index: int) -> np.ndarray:
    """World (RAS) position of the centre of slice ``index``, the parent transform applied."""
    dimensions = volume_node.GetImageData().GetDimensions()
    if not 0 <= index < dimensions[2]:
        raise IndexError(f"slice {index} is outside the volume's {dimensions[2]} slices")
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    point = ijk_to_ras.MultiplyPoint(((dimensions[0] - 1) / 2, (dimensions[1] - 1) / 2, index, 1.0))
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        to_world = vtk.vtkGeneralTransform()
        transform.GetTransformToWorld(to_world)
        return np.asarray(to_world.TransformPoint(point[:3]))
    return np.asarray(point[:3])


def show_slice(
    scene: slicer.vtkMRMLScene,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    index: int,
    view: str = "Red",
) -> slicer.vtkMRMLSliceNode:
    """Turn ``view`` to the volume's own slice plane and move it onto slice ``index``."""
    slice_node = scene.GetSingletonNode(view, "vtkMRMLSliceNode")
    if slice_node is None:
        raise LookupError(f"the scene has no {view} slice view")
    slice_node.RotateToVolumePlane(volume_node)
    slice_node.JumpSliceByOffsetting(*slice_centre_ras(volume_node, index))
    return slice_node


def mark_suggestions(
    scene: slicer.vtkMRMLScene,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    rows: list[dict],
) -> slicer.vtkMRMLMarkupsFiducialNode:
    """One locked control point at the centre of each suggested slice, labelled with the slice
    and its P-DSC, in a markups node of the volume (created once, then refilled)."""
    node = None
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    for position in range(nodes.GetNumberOfItems()):
        candidate = nodes.GetItemAsObject(position)
        if candidate.GetAttribute(MARKERS_ATTRIBUTE) == volume_node.GetID():
            node = candidate
    if node is None:
        node = scene.AddNewNodeByClass(
            "vtkMRMLMarkupsFiducialNode",
            scene.GenerateUniqueName(f"{volume_node.GetName()} suggested slices"),
        )
        node.SetAttribute(MARKERS_ATTRIBUTE, volume_node.GetID())
        node.CreateDefaultDisplayNodes()
    node.RemoveAllControlPoints()
    for row in rows:
        disagreement = row.get("disagreement_voxels")  # absent from suggestions of earlier versions
        detail = "" if disagreement is None else f", {disagreement} voxels disagree"
        label = f"slice {row['slice']} (P-DSC {row['p_dsc']:.2f}{detail})"
        point = node.AddControlPointWorld(
            vtk.vtkVector3d(*slice_centre_ras(volume_node, row["slice"])), label
        )
        node.SetNthControlPointLocked(point, True)
    return node
