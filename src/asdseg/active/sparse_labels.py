"""Sparse labels: a volume's label map of which only some slices were drawn by the annotator.

On disk a sparse label map is the label image itself (NIfTI, with the usual label sidecars) and
``<stem>.slices.json`` beside it, naming the labelled slices (indices along the image's third
array axis) and the image size they refer to, so that an annotation session can be resumed and
a training run knows which zeros mean "background" and which mean "nobody looked". Training
sees :data:`asdseg.training.losses.UNLABELLED` on every slice that is not labelled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.active.annotator_effort import SliceEffort
from asdseg.errors import InputError
from asdseg.io.image_io import array_to_image, grid_difference, grid_of, image_to_array, read_image
from asdseg.io.json_files import read_json
from asdseg.io.labels import Label, label_pixel_type, sidecar_stem, write_label_map

SLICES_FORMAT_VERSION = 1


def slices_json_path(label_path: str | Path) -> Path:
    stem = sidecar_stem(label_path)
    return stem.with_name(stem.name + ".slices.json")


@dataclass
class SparseLabels:
    """An (x, y, z) label array and the slices ``k`` (third axis) whose labels count."""

    label: np.ndarray
    labelled_slices: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.labelled_slices = {int(index) for index in self.labelled_slices}
        bad = sorted(index for index in self.labelled_slices if not 0 <= index < self.slice_count)
        if bad:
            raise InputError(
                f"labelled slice(s) {bad} are outside the volume's {self.slice_count} slices (0 to "
                f"{self.slice_count - 1}); the slices file belongs to another image."
            )

    @property
    def slice_count(self) -> int:
        return int(self.label.shape[2])

    def cropped(self, start: Sequence[int], stop: Sequence[int]) -> SparseLabels:
        """The labels of the index box ``[start, stop)`` (x, y, z), its labelled slices counted
        from the box's first slice."""
        box = tuple(slice(first, last) for first, last in zip(start, stop))
        return SparseLabels(
            self.label[box],
            {index - start[2] for index in self.labelled_slices if start[2] <= index < stop[2]},
        )

    def training_target(self) -> np.ndarray:
        """int64 (x, y, z): the label on labelled slices, UNLABELLED everywhere else."""
        # Imported here: the losses need torch, which Slicer's process (reading and writing
        # sparse labels) must not load.
        from asdseg.training.losses import UNLABELLED

        target = np.full(self.label.shape, UNLABELLED, dtype=np.int64)
        indices = sorted(self.labelled_slices)
        target[:, :, indices] = self.label[:, :, indices]
        return target


def write_sparse_labels(
    sparse: SparseLabels,
    reference: sitk.Image,
    labels: Sequence[Label],
    path: str | Path,
    effort: Mapping[int, SliceEffort] | None = None,
) -> list[Path]:
    """Write the label map (geometry of ``reference``), its sidecars and the slices file, all
    or nothing. Voxels of unlabelled slices are written as background. ``effort`` (what the
    annotator changed per slice) goes into the slices file for the labelled slices it has;
    readers that do not know it ignore it, so the format version stays."""
    label = np.zeros_like(sparse.label)
    indices = sorted(sparse.labelled_slices)
    label[:, :, indices] = sparse.label[:, :, indices]
    image = array_to_image(label.astype(label_pixel_type(labels)), reference)
    record = {
        "version": SLICES_FORMAT_VERSION,
        "axis": "k (third array axis)",
        "size": list(sparse.label.shape),
        "labelled_slices": indices,
    }
    if effort:
        record["effort"] = {str(index): effort[index].to_dict() for index in indices if index in effort}
    text = json.dumps(record, indent=2) + "\n"
    return write_label_map(image, labels, path, extra_texts={slices_json_path(path): text})


def _read_record(record_path: Path) -> dict:
    return read_json(record_path, "labelled_slices", "labelled-slices file")


def read_sparse_labels(path: str | Path) -> tuple[sitk.Image, SparseLabels]:
    """The label image and its sparse labels; a label map without a slices file is refused
    rather than taken as fully labelled, since its zeros could mean either."""
    path = Path(path)
    record_path = slices_json_path(path)
    if not record_path.is_file():
        raise InputError(
            f"{path}: no {record_path.name} beside it saying which slices are labelled. Write sparse "
            "labels with ActiveAnnotate or 'asdseg' (or create the file listing every slice if the "
            "whole volume is labelled)."
        )
    record = _read_record(record_path)
    slices, size = record["labelled_slices"], tuple(record["size"])
    image = read_image(path)
    label = image_to_array(image, np.int64)
    if size != label.shape:
        raise InputError(
            f"{record_path} describes a {size} volume but {path.name} is {label.shape}; the two files "
            "do not belong together."
        )
    try:
        return image, SparseLabels(label, set(slices))
    except InputError as error:
        raise InputError(f"{record_path}: {error}") from error


def read_slice_effort(path: str | Path) -> dict[int, SliceEffort]:
    """What the annotator changed on each labelled slice of the sparse labels ``path`` (the
    label map; its slices file is read), by slice; empty when the file records none."""
    record_path = slices_json_path(path)
    record = _read_record(record_path)
    effort = {}
    for key, entry in record.get("effort", {}).items():
        if int(key) not in record["labelled_slices"]:
            raise InputError(f"{record_path}: effort of {key!r}, which is not one of the labelled slices.")
        try:
            effort[int(key)] = SliceEffort.from_dict(entry)
        except InputError as error:  # what the schema lets through (2.0 for 2)
            raise InputError(f"{record_path}: effort of slice {key}: {error}.") from error
    return effort


def check_labels_fit_image(
    labels_image: sitk.Image, image: sitk.Image, labels_path: str | Path, image_path: str | Path
) -> None:
    """Refuse sparse labels that are not on the image's voxel grid (size, spacing, origin or
    direction): their slice numbers would then name other anatomy."""
    labels_grid, image_grid = grid_of(labels_image), grid_of(image)
    key = grid_difference(labels_grid, image_grid)
    if key is not None:
        raise InputError(
            f"--labels {labels_path}: its {key} {_rounded(labels_grid[key])} differs from the image "
            f"{image_path}'s {_rounded(image_grid[key])}; give the sparse labels drawn on this image (or "
            "resample them onto it, nearest neighbour)."
        )


def read_sparse_labels_of(image: sitk.Image, labels_path: str | Path, image_path: str | Path) -> SparseLabels:
    """The sparse labels at ``labels_path``, refused unless they lie on the grid of ``image``
    (read from ``image_path``)."""
    labels_image, sparse = read_sparse_labels(labels_path)
    check_labels_fit_image(labels_image, image, labels_path, image_path)
    return sparse


def _rounded(values: tuple) -> tuple:
    return tuple(round(value, 4) for value in values)
