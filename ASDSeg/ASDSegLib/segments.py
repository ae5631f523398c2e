"""Segments and the model's labels: a label put onto a segment (name, colour, label value,
terminology) and, back, each segment's label, the segments merged into one label map on a
volume's grid, and that label map exported as a file with its label sidecars.

ASDSeg's segmentation and ActiveAnnotate's labels both go through these, so that a segment keeps
the value its model gives it in every export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from asdseg.errors import AsdsegError, InputError
from asdseg.io.image_io import SUPPORTED_SUFFIXES, image_suffix
from asdseg.io.labels import Label, label_pixel_type, write_label_map

from .volume_nodes import array_from_image_data, ijk_to_ras_matrix, image_from_volume_node

#: Segment tag holding the label value the segment is exported with.
LABEL_VALUE_TAG = "ASDSeg.LabelValue"
#: Slicer's terminology contexts the codes are looked up in. The DICOM master list holds every
#: organ ASDSeg segments (left atrium, bladder, prostate, rectum); Slicer's "General Anatomy"
#: list lacks the left atrium and the rectum (checked in Slicer 5.8.0 and 5.10.0).
_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


def _segment_tag(segment: slicer.vtkSegment, key: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


def terminology_entry(label: Label) -> str | None:
    """Slicer's serialised terminology string for a label with standard codes, else None."""
    if label.terminology is None:
        return None

    def code(entry: dict | None) -> str:
        return f"{entry['scheme']}^{entry['value']}^{entry['meaning']}" if entry else "^^"

    terminology = label.terminology
    parts = [
        _TERMINOLOGY_CONTEXT,
        code(terminology["category"]),
        code(terminology["type"]),
        "^^",
        _ANATOMY_CONTEXT,
        code(terminology.get("region")),
        "^^",
    ]
    return "~".join(parts)


def apply_label(segment: slicer.vtkSegment, label: Label) -> None:
    """Name, colour, label-value tag and (when the label has codes) terminology of ``label``."""
    segment.SetName(label.name)
    segment.SetColor(*(channel / 255.0 for channel in label.color))
    segment.SetTag(LABEL_VALUE_TAG, str(label.value))
    terminology = terminology_entry(label)
    if terminology is not None:
        # vtkSegment.SetTerminology only exists from Slicer 5.10; the tag it sets works in all.
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)


def source_volume(segmentation_node: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLVolumeNode | None:
    """The volume whose voxel grid the segmentation was made on."""
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    return segmentation_node.GetNodeReference(role)


def segment_labels(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[tuple[str, Label]]:
    """(segment ID, label) for every segment, in segment order.

    Segments ASDSeg made keep the value their model card gives them, wherever they were
    moved in the list; segments the user added (or duplicated) get the next free values.
    """
    segmentation = segmentation_node.GetSegmentation()
    segment_ids = [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]
    values: dict[str, int] = {}
    for segment_id in segment_ids:
        tag = _segment_tag(segmentation.GetSegment(segment_id), LABEL_VALUE_TAG)
        if tag is not None and tag.isdigit() and int(tag) > 0 and int(tag) not in values.values():
            values[segment_id] = int(tag)
    next_value = max(values.values(), default=0) + 1
    for segment_id in segment_ids:
        if segment_id not in values:
            values[segment_id] = next_value
            next_value += 1
    labels = []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        color = tuple(round(channel * 255) for channel in segment.GetColor())
        labels.append((segment_id, Label(values[segment_id], segment.GetName(), color)))
    return labels


def merged_label_map(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    segment_labels: list[tuple[str, Label]],
    reference: slicer.vtkMRMLScalarVolumeNode,
) -> np.ndarray:
    """The segments painted with their label values on ``reference``'s voxel grid, as a
    (k, j, i) array; later segments win where segments overlap. The grid is taken in the
    segmentation's own frame, which ASDSeg gives the same parent transform as its volume."""
    geometry = slicer.vtkOrientedImageData()
    geometry.SetDimensions(reference.GetImageData().GetDimensions())
    geometry.SetImageToWorldMatrix(ijk_to_ras_matrix(reference))
    segment_ids = vtk.vtkStringArray()
    values = vtk.vtkIntArray()
    for segment_id, label in segment_labels:
        segment_ids.InsertNextValue(segment_id)
        values.InsertNextValue(label.value)
    merged = slicer.vtkOrientedImageData()
    extent_mode = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    if not segmentation_node.GenerateMergedLabelmapForAllSegments(
        merged, extent_mode, geometry, segment_ids, values
    ):
        raise AsdsegError(f"Slicer could not merge the segments of {segmentation_node.GetName()!r}.")
    dimensions = reference.GetImageData().GetDimensions()
    if tuple(merged.GetDimensions()) != tuple(dimensions):
        raise AsdsegError("the merged label map does not match the reference volume's grid.")
    return array_from_image_data(merged)


def export_segmentation(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    path: str | Path,
    reference_volume_node: slicer.vtkMRMLScalarVolumeNode | None = None,
) -> list[Path]:
    """Write the segmentation as a label map on the reference volume's grid (default: the
    volume it was made from) with the label sidecars; returns the files written. The
    scene is not changed, and existing files are replaced only once every file is complete.
    """
    if image_suffix(path) not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{path}: use a NIfTI file name (.nii.gz) or another of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    reference = reference_volume_node or source_volume(segmentation_node)
    if reference is None or reference.GetImageData() is None:
        raise InputError("the segmentation has no reference volume; pick the volume to export on.")
    pairs = segment_labels(segmentation_node)
    if not pairs:
        raise InputError(f"{segmentation_node.GetName()!r} has no segments; there is nothing to export.")
    labels = [label for _, label in pairs]
    label_map = merged_label_map(segmentation_node, pairs, reference)
    background = Label(0, "background", (0, 0, 0))
    array = label_map.astype(label_pixel_type(labels))
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(image_from_volume_node(reference))
    return write_label_map(image, [background, *labels], path)
