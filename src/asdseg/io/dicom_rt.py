"""DICOM series with an RT structure set -> one case of an nnU-Net v2 dataset folder.

Pelvic radiotherapy data usually comes as a DICOM image series plus an RTSTRUCT whose closed
planar contours outline the organs, in patient coordinates. SimpleITK reads the series (sorted
by position, with its geometry); pydicom (an optional dependency: ``pip install pydicom``) reads
the structure set. Each contour is mapped onto its slice through the image's own
physical-to-index transform and filled: a voxel belongs to a structure when its centre lies
inside an odd number of the structure's contours on that slice (so inner contours are holes).
The masks are merged into one label map named by the dataset's labels and written as
``imagesTr/<case>_0000<ending>`` and ``labelsTr/<case><ending>``, updating ``numTraining``. In
Slicer, SlicerRT does the same interactively.

The maintained libraries for this were tried and left out: rt-utils 1.2.7 swaps the two pixel
spacings and shapes its masks columns x rows (wrong on any series with non-square pixels or
matrices), and dcmrtstruct2nii 5 calls ``pydicom.read_file``, which pydicom 3 removed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.path import Path as Polygon

from asdseg.errors import InputError
from asdseg.io.atomic_write import atomic_paths
from asdseg.io.datasets import DATASET_FILE, nnunet_description
from asdseg.io.image_io import save_image
from asdseg.io.labels import Label

#: What a case name may hold: it becomes part of file names.
CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
FRAME_OF_REFERENCE = "0020|0052"  #: the DICOM tag, as SimpleITK names it
#: How far (in slices) a contour's plane may lie from a slice centre and still belong to it.
SLICE_TOLERANCE = 0.25


@dataclass
class ImportedCase:
    image: Path
    label: Path
    #: Label name -> the structure it came from, and its voxel count.
    structures: dict[str, str] = field(default_factory=dict)
    voxels: dict[str, int] = field(default_factory=dict)
    #: Voxels inside more than one structure (the label listed later in dataset.json keeps them).
    overlapping_voxels: int = 0
    #: Structure name -> its contour points outside the series' slices in plane (the contour is
    #: clipped to the image there).
    clipped_points: dict[str, int] = field(default_factory=dict)


@dataclass
class StructureSet:
    #: Structure name -> its closed planar contours, each an (n, 3) array of patient mm.
    contours: dict[str, list[np.ndarray]]
    #: The frames of reference its structures were drawn in.
    frames: set[str]


def read_structure_set(path: Path) -> StructureSet:
    """The structures of an RTSTRUCT file and their closed planar contours. Other contour types
    (points, open polylines) outline no area and are skipped."""
    try:
        import pydicom
    except ImportError as error:
        raise InputError(
            "reading DICOM RT structure sets needs pydicom: pip install pydicom (or convert in Slicer with "
            "the SlicerRT extension and export the segmentation as NIfTI)."
        ) from error
    if not path.is_file():
        raise InputError(f"--rtstruct {path}: no such file.")
    try:
        dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as error:
        raise InputError(f"--rtstruct {path}: not a DICOM file ({error}).") from error
    if dataset.get("SOPClassUID") != RT_STRUCTURE_SET or "StructureSetROISequence" not in dataset:
        raise InputError(f"--rtstruct {path}: not an RT structure set (RTSTRUCT).")
    names = {roi.ROINumber: str(roi.ROIName) for roi in dataset.StructureSetROISequence}
    frames = {
        str(roi.ReferencedFrameOfReferenceUID)
        for roi in dataset.StructureSetROISequence
        if "ReferencedFrameOfReferenceUID" in roi
    }
    structures: dict[str, list[np.ndarray]] = {name: [] for name in names.values()}
    for roi in dataset.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue
            if roi.ReferencedROINumber not in names:
                raise InputError(
                    f"--rtstruct {path}: contours of ROI number {roi.ReferencedROINumber}, which its "
                    "structure list does not name; the file is malformed."
                )
            name = names[roi.ReferencedROINumber]
            structures[name].append(contour_points(contour, name, path))
    return StructureSet(structures, frames)


def contour_points(contour, name: str, path: Path) -> np.ndarray:
    """A contour's (n, 3) points in mm; a contour without points, with a coordinate count that is
    not a multiple of 3 or with a coordinate that is not a finite number is refused, naming it."""
    values = contour.get("ContourData")
    try:
        points = np.asarray([] if values is None else values, dtype=float)
    except (TypeError, ValueError):
        points = np.asarray([np.nan])
    if points.size == 0 or points.size % 3 or not np.isfinite(points).all():
        raise InputError(
            f"--rtstruct {path}: a contour of structure {name!r} has no usable ContourData: it needs "
            f"finite x, y, z numbers for each point and holds {points.size} value(s). The file is "
            "malformed; export the structure set again."
        )
    return points.reshape(-1, 3)


def read_series(folder: Path) -> tuple[sitk.Image, str]:
    """The one image series in ``folder``, its slices sorted by position, and its frame of
    reference UID ("" where the files do not say)."""
    if not folder.is_dir():
        raise InputError(f"--series {folder}: not a folder of DICOM image files.")
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        found = "no DICOM image series" if not series else f"{len(series)} image series"
        raise InputError(f"--series {folder}: {found}; give a folder holding exactly one series.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    check_every_slice_read(folder, series[0], files)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    known = reader.HasMetaDataKey(FRAME_OF_REFERENCE)
    frame = reader.GetMetaData(FRAME_OF_REFERENCE).strip(" \x00") if known else ""
    try:
        image = sitk.ReadImage(files)
    except RuntimeError as error:
        raise InputError(
            f"--series {folder}: a slice could not be read ({error}); export the series again."
        ) from error
    check_even_spacing(folder, image, files)
    return image, frame


def check_every_slice_read(folder: Path, series_uid: str, files: Sequence[str]) -> None:
    """Refuse a series folder holding a file that the series reader left out although it is a
    slice of the series, or that is not readable DICOM at all (a truncated copy): the volume would
    silently miss that slice."""
    import pydicom

    used = {Path(name).resolve() for name in files}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.resolve() in used:
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types for a broken file
            raise InputError(
                f"--series {folder}: {path.name} is not readable DICOM (truncated or corrupt? {error}); "
                "copy or export the series again, or move the file out of the folder."
            ) from error
        if str(header.get("SeriesInstanceUID", "")) == series_uid:
            raise InputError(
                f"--series {folder}: {path.name} is a slice of the series that could not be read "
                "(truncated or corrupt?); copy or export the series again."
            )


def check_even_spacing(folder: Path, image: sitk.Image, files: Sequence[str]) -> None:
    """Refuse a series whose slices are not evenly spaced (a slice missing in between): the
    volume's one slice spacing would put every slice after the gap at the wrong place."""
    if len(files) < 3:
        return
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    gaps = np.diff(np.sort(positions))
    if gaps.max() - gaps.min() > max(0.01, 0.01 * float(np.median(gaps))):
        raise InputError(
            f"--series {folder}: the slices are not evenly spaced (gaps from {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm): a slice is missing or the folder mixes series; export the whole "
            "series again."
        )


def match_structures(
    labels: list[Label], structure_names: list[str], chosen: Mapping[str, str]
) -> dict[str, str]:
    """Label name -> structure name for every organ label: ``chosen`` (label -> structure) first,
    then a structure of the label's name ignoring case. Anything unmatched is an error that lists
    the structures, so that the user can map it with ``--structure``."""
    organs = [label.name for label in labels if label.value != 0]
    if not structure_names:
        raise InputError("the RT structure set names no structures; nothing to import.")
    unknown = sorted(set(chosen) - set(organs))
    if unknown:
        raise InputError(
            f"--structure names label(s) {', '.join(unknown)}, which dataset.json does not have; its "
            f"labels are {', '.join(organs)}."
        )
    by_lower = {name.lower(): name for name in structure_names}
    matched, missing = {}, []
    for organ in organs:
        structure = chosen.get(organ) or by_lower.get(organ.lower())
        if structure is None or structure not in structure_names:
            missing.append(organ)
        else:
            matched[organ] = structure
    if missing:
        raise InputError(
            f"no structure for {', '.join(missing)}; the structure set has {', '.join(structure_names)}. "
            f"Map each with --structure LABEL=STRUCTURE, e.g. "
            f'--structure {missing[0]}="{structure_names[0]}".'
        )
    return matched


def structure_mask(image: sitk.Image, contours: list[np.ndarray], name: str) -> tuple[np.ndarray, int]:
    """(z, y, x) mask of the voxels whose centres lie inside an odd number of ``contours``, and
    the number of contour points outside the image in plane (the mask ends at its edge)."""
    size_x, size_y, size_z = image.GetSize()
    mask = np.zeros((size_z, size_y, size_x), dtype=bool)
    column, row = np.meshgrid(np.arange(size_x), np.arange(size_y))
    centres = np.column_stack([column.ravel(), row.ravel()])
    clipped = 0
    for points in contours:
        index = np.array([image.TransformPhysicalPointToContinuousIndex(point.tolist()) for point in points])
        slice_index = round(float(np.mean(index[:, 2])))
        if np.abs(index[:, 2] - slice_index).max() > SLICE_TOLERANCE:
            raise InputError(
                f"structure {name!r}: a contour does not lie on one slice of the series (slice index "
                f"{index[0, 2]:.2f}); the RTSTRUCT was drawn on another series or grid."
            )
        if not 0 <= slice_index < size_z:
            raise InputError(f"structure {name!r}: a contour lies outside the series (slice {slice_index}).")
        outside = ((index[:, :2] < -0.5) | (index[:, :2] > np.array([size_x, size_y]) - 0.5)).any(axis=1)
        low, high = index[:, :2].min(axis=0), index[:, :2].max(axis=0)
        if (high < -0.5).any() or (low > np.array([size_x, size_y]) - 0.5).any():
            raise InputError(
                f"structure {name!r}: a contour on slice {slice_index} lies wholly outside the series' "
                f"{size_x} x {size_y} voxels in plane; the RTSTRUCT was drawn on another series or grid."
            )
        clipped += int(outside.sum())
        inside = Polygon(index[:, :2]).contains_points(centres).reshape(size_y, size_x)
        mask[slice_index] ^= inside
    return mask, clipped


def _label_map(image: sitk.Image, structures: dict, labels: list[Label], matched: dict[str, str]) -> tuple:
    size = image.GetSize()
    label_map = np.zeros(size[::-1], dtype=np.uint8)
    voxels, overlapping, clipped = {}, 0, {}
    for label in labels:
        if label.value == 0:
            continue
        structure = matched[label.name]
        mask, clipped_points = structure_mask(image, structures[structure], structure)
        if clipped_points:
            clipped[structure] = clipped_points
        if not mask.any():
            raise InputError(
                f"structure {structure!r} (label {label.name}) covers no voxel of this series; check that "
                "the RTSTRUCT belongs to it."
            )
        overlapping += int(np.count_nonzero(mask & (label_map > 0)))
        label_map[mask] = label.value
        voxels[label.name] = int(np.count_nonzero(mask))
    return label_map, voxels, overlapping, clipped


def import_rtstruct(
    series_dir: str | Path,
    rtstruct_path: str | Path,
    dataset_root: str | Path,
    case: str,
    structures: Mapping[str, str] | None = None,
) -> ImportedCase:
    """Add one case to the nnU-Net v2 dataset in ``dataset_root`` from a DICOM series and its
    RT structure set, mapping structures to the dataset's labels (see :func:`match_structures`).
    Nothing is written unless every check passes; the files and dataset.json are replaced
    atomically together."""
    root = Path(dataset_root)
    description, labels = nnunet_description(root)
    if not CASE_NAME.fullmatch(case):
        raise InputError(
            f"--case {case!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit."
        )
    ending = str(description["file_ending"])
    image_path = root / "imagesTr" / f"{case}_0000{ending}"
    label_path = root / "labelsTr" / f"{case}{ending}"
    if image_path.exists() or label_path.exists():
        raise InputError(f"{root}: case {case!r} exists already; choose another --case or remove its files.")
    structure_set = read_structure_set(Path(rtstruct_path))
    matched = match_structures(labels, sorted(structure_set.contours), structures or {})
    image, frame = read_series(Path(series_dir))
    other_frames = structure_set.frames - {frame}
    if frame and other_frames:
        raise InputError(
            f"--rtstruct {rtstruct_path} was drawn in frame of reference {sorted(other_frames)[0]}, the "
            f"series in {series_dir} is in {frame}: they do not belong together. Give the series the "
            "contours were drawn on."
        )
    label_map, voxels, overlapping, clipped = _label_map(image, structure_set.contours, labels, matched)
    label_image = sitk.GetImageFromArray(label_map)
    label_image.CopyInformation(image)
    if "numTraining" in description:
        description = {**description, "numTraining": int(description["numTraining"]) + 1}
    targets = [image_path, label_path, root / DATASET_FILE]
    with atomic_paths(targets) as temporaries:
        save_image(image, temporaries[0], image_path)
        save_image(label_image, temporaries[1], label_path)
        temporaries[2].write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return ImportedCase(image_path, label_path, matched, voxels, overlapping, clipped)
