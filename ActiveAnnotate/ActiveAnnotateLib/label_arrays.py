"""The annotation and the model's prediction as (k, j, i) label arrays on the volume's grid, and
back into the scene: a segment's slices set from the prediction, and the prediction kept as a
label map volume the segmentation references (so that it is saved with the scene).
"""

from __future__ import annotations

import numpy as np
import slicer

from asdseg.errors import AsdsegError
from asdseg.io.labels import Label

from ASDSegLib.segments import merged_label_map, segment_labels
from ASDSegLib.volume_nodes import array_from_image_data, image_data_from_array, oriented_image_from_array

#: Node reference role from the segmentation to the label map of the model's prediction.
PREDICTION_REFERENCE_ROLE = "ActiveAnnotate.Prediction"


def annotation_array(segmentation_node, volume_node) -> np.ndarray:
    """The annotation's segments with their label values, a (k, j, i) array on the volume's grid."""
    pairs = segment_labels(segmentation_node)
    if not pairs:
        return np.zeros(tuple(reversed(volume_node.GetImageData().GetDimensions())), dtype=np.int16)
    return merged_label_map(segmentation_node, pairs, volume_node)


def prediction_node(segmentation_node):
    """The label map of the last suggestion's prediction on the volume's grid, or None."""
    return segmentation_node.GetNodeReference(PREDICTION_REFERENCE_ROLE)


def prediction_array(segmentation_node) -> np.ndarray | None:
    """The stored prediction as a (k, j, i) label array, or None before any suggestion."""
    node = prediction_node(segmentation_node)
    if node is None or node.GetImageData() is None:
        return None
    return array_from_image_data(node.GetImageData())


def store_prediction(scene, segmentation_node, volume_node, prediction: np.ndarray) -> None:
    """Put ``prediction`` into the segmentation's prediction label map (created the first
    time) on the volume's grid. It is left out of the Data module's tree and shown in no
    view, but not hidden from editors: Slicer's Save dialog skips those, and the prediction
    must be saved with the scene for a resumed session to measure effort against it."""
    node = prediction_node(segmentation_node)
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLLabelMapVolumeNode")
        node.UnRegister(None)
        node.SetName(scene.GenerateUniqueName(f"{volume_node.GetName()} prediction"))
        constants = slicer.vtkMRMLSubjectHierarchyConstants
        node.SetAttribute(constants.GetSubjectHierarchyExcludeFromTreeAttributeName(), "1")
        node = scene.AddNode(node)
        segmentation_node.SetNodeReferenceID(PREDICTION_REFERENCE_ROLE, node.GetID())
    node.SetAndObserveImageData(image_data_from_array(prediction))
    node.CopyOrientation(volume_node)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())


def fill_slices(
    segmentation_node, volume_node, segment_id: str, label: Label, prediction: np.ndarray, fill: list[int]
) -> None:
    """Set slices ``fill`` of the segment to the prediction's voxels of its label value and
    keep its other slices. The whole segment is replaced: merging into it
    (``MODE_MERGE_MAX``) put the voxels into another segment of its shared labelmap layer."""
    mask = merged_label_map(segmentation_node, [(segment_id, label)], volume_node) > 0
    mask[fill] = prediction[fill] == label.value
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image_from_array(mask.astype(np.uint8), volume_node),
        segmentation_node,
        segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
    ):
        raise AsdsegError(f"Slicer could not pre-fill segment {label.name!r} with the prediction.")
