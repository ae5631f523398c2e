"""Regions of interest: the part of a volume to segment, and the warning that asks for one.

A region of interest (ROI) is a box given by two opposite corners, in physical coordinates (mm)
or in voxel indices. Physical coordinates are LPS by default, the world frame of ITK, SimpleITK
and every file the engine reads (``TransformIndexToPhysicalPoint`` gives them); RAS, the frame
3D Slicer shows, is accepted too. Either way the region segmented is the index box of the
volume's voxels whose centres lie in the box; on a volume whose axes are oblique to the
physical axes, the smallest index box holding the physical box.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.preprocessing.transforms import CropBox

if TYPE_CHECKING:
    from asdseg.registry.model_card import ModelCard

#: How the corners of an ROI are given: physical LPS or RAS millimetres, or voxel indices.
ROI_SPACES = ("lps", "ras", "voxel")
#: An input (or ROI) larger than this many times the model's training field of view, along
#: any axis, gets a warning. The LA 2018 crops vary by up to 1.27x around their median.
FIELD_OF_VIEW_FACTOR = 2.0
#: Voxel centres this close to a face of the box (in voxels) count as inside.
_EDGE_TOLERANCE = 1e-3
_AXES = "xyz"


@dataclass(frozen=True)
class RegionOfInterest:
    """A box from ``first`` to ``last`` (both included) along each axis, in ``space``.

    Physical corners: ``first`` is the minimum and ``last`` the maximum along each axis of
    ``space``. Voxel corners: the first and the last voxel index (0-based) along each image axis.
    """

    first: tuple[float, float, float]
    last: tuple[float, float, float]
    space: str = "lps"

    def __post_init__(self) -> None:
        if self.space not in ROI_SPACES:
            raise InputError(f"unknown ROI space {self.space!r}; use one of {', '.join(ROI_SPACES)}.")
        corners = (*self.first, *self.last)
        if len(self.first) != 3 or len(self.last) != 3 or not all(map(math.isfinite, corners)):
            raise InputError(f"the ROI needs 6 finite numbers (two corners x y z); got {corners}.")
        inverted = [axis for axis, a, b in zip(_AXES, self.first, self.last) if a > b]
        if inverted:
            raise InputError(
                f"the ROI is inverted along {', '.join(inverted)}: its first corner {self.first} must "
                f"be the minimum and its second {self.last} the maximum along every axis."
            )
        if self.space == "voxel" and not all(float(v).is_integer() for v in corners):
            raise InputError(f"voxel ROI corners are whole voxel indices; got {corners}.")
        if self.space != "voxel":
            flat = [axis for axis, a, b in zip(_AXES, self.first, self.last) if a == b]
            if flat:
                raise InputError(f"the ROI is empty: it has no extent along {', '.join(flat)}.")

    @classmethod
    def from_values(cls, values: Sequence[float], space: str = "lps") -> RegionOfInterest:
        """From the command line's six numbers: x0 y0 z0 x1 y1 z1."""
        if len(values) != 6:
            raise InputError(f"--roi takes 6 numbers (x0 y0 z0 x1 y1 z1); got {len(values)}.")
        return cls(tuple(values[:3]), tuple(values[3:]), space)

    def cli_arguments(self) -> list[str]:
        """The ``--roi`` and ``--roi-space`` options that give the engine this ROI."""
        values = [f"{float(value):.17g}" for value in (*self.first, *self.last)]
        return ["--roi", *values, "--roi-space", self.space]

    def describe(self) -> str:
        unit = "voxels" if self.space == "voxel" else f"mm {self.space.upper()}"
        return f"{_point(self.first)} to {_point(self.last)} ({unit})"

    def index_box(self, image: sitk.Image) -> tuple[CropBox, list[str]]:
        """The voxels of ``image`` inside the ROI, clipped to the volume, and a warning when it
        had to be clipped. Raises :class:`InputError` when nothing (or too thin a region) is left."""
        if self.space == "voxel":
            low = np.asarray(self.first, dtype=float)
            high = np.asarray(self.last, dtype=float)
        else:
            flip = np.array([-1.0, -1.0, 1.0]) if self.space == "ras" else np.ones(3)
            corners = [flip * np.asarray(corner) for corner in product(*zip(self.first, self.last))]
            indices = np.array(
                [image.TransformPhysicalPointToContinuousIndex([float(v) for v in c]) for c in corners]
            )
            low, high = indices.min(axis=0), indices.max(axis=0)
        return index_box_from_bounds(low, high, image.GetSize(), self.describe())


def index_box_from_bounds(
    low: Sequence[float], high: Sequence[float], size: Sequence[int], description: str
) -> tuple[CropBox, list[str]]:
    """The index box of the voxel centres from continuous index ``low`` to ``high`` (both
    included) on a grid of ``size``, clipped to it, and a warning when it was clipped.

    Shared by the command line and the Slicer module, which computes the bounds from a markups
    ROI node. Raises :class:`InputError` when the box misses the volume or is thinner than the 2
    voxels per axis a 3D volume needs.
    """
    size = np.asarray(size, dtype=int)
    # Bounds far past the volume (1e20) would overflow the integer conversion; one voxel past
    # it says the same.
    low, high = (np.clip(np.asarray(bound, dtype=float), -1.0, size) for bound in (low, high))
    start = np.ceil(low - _EDGE_TOLERANCE).astype(int)
    stop = np.floor(high + _EDGE_TOLERANCE).astype(int) + 1
    clipped_start, clipped_stop = np.maximum(start, 0), np.minimum(stop, size)
    if np.any(clipped_stop <= clipped_start):
        missed = [axis for axis, a, b in zip(_AXES, clipped_start, clipped_stop) if b <= a]
        raise InputError(
            f"the ROI {description} holds no voxel of the volume (size {tuple(int(s) for s in size)}) "
            f"along {', '.join(missed)}: it lies outside the volume or between two voxel centres. "
            "Move it over the structure to segment."
        )
    thin = [axis for axis, a, b in zip(_AXES, clipped_start, clipped_stop) if b - a < 2]
    if thin:
        raise InputError(
            f"the ROI {description} is only 1 voxel thick along {', '.join(thin)} inside the volume; "
            "make it at least 2 voxels thick along every axis."
        )
    box = CropBox(tuple(int(v) for v in clipped_start), tuple(int(v) for v in clipped_stop))
    warnings = []
    outside = [axis for axis, a, b, n in zip(_AXES, start, stop, size) if a < 0 or b > n]
    if outside:
        kept = ", ".join(f"{axis} {a}-{b - 1}" for axis, a, b in zip(_AXES, box.start, box.stop))
        warnings.append(
            f"the ROI {description} reaches past the volume along {', '.join(outside)}; it was "
            f"clipped to the voxels {kept}."
        )
    return box, warnings


def segmentation_region(
    image: sitk.Image, roi: RegionOfInterest | None, card: ModelCard
) -> tuple[CropBox, list[str]]:
    """The index box of ``image`` to segment (all of it without ``roi``) and the warnings about
    it: an ROI clipped to the volume, a region much larger than the model's training volumes."""
    if roi is None:
        box, warnings, subject = CropBox((0, 0, 0), tuple(image.GetSize())), [], "the input"
    else:
        (box, warnings), subject = roi.index_box(image), "the ROI"
    extent = np.subtract(box.stop, box.start) * np.asarray(image.GetSpacing())
    too_large = field_of_view_warning(extent, card, subject)
    return box, warnings + ([too_large] if too_large else [])


def checked_region(
    image: sitk.Image, values: Sequence[float] | None, space: str, card: ModelCard
) -> tuple[RegionOfInterest | None, list[str]]:
    """The ROI given by six numbers (x0 y0 z0 x1 y1 z1 in ``space``; None without them), checked
    against ``image`` before any work, and the warnings about the region to segment (an ROI
    clipped to the volume, too large a field of view), for showing at once rather than after a
    long run."""
    roi = RegionOfInterest.from_values(values, space) if values is not None else None
    return roi, segmentation_region(image, roi, card)[1]


def training_regions(
    images: Sequence[sitk.Image],
    paths: Sequence[str | Path],
    boxes: Sequence[Sequence[float]],
    space: str,
    warn: Callable[[str], None],
) -> list[CropBox | None]:
    """The index box of each image (read from ``paths``) inside its ROI: ``boxes`` holds one ROI
    for every image or one per image, in order (six numbers each, in ``space``), or none (None
    for every image). Each clipping warning is passed to ``warn`` as soon as it is found."""
    if len(boxes) not in (0, 1, len(images)):
        raise InputError(
            f"{len(boxes)} --roi boxes for {len(images)} images; give one box for every image, or "
            "one per --image in the same order."
        )
    if not boxes:
        return [None] * len(images)
    regions = []
    for image, path, values in zip(images, paths, list(boxes) * len(images) if len(boxes) == 1 else boxes):
        try:
            region, warnings = RegionOfInterest.from_values(values, space).index_box(image)
        except InputError as error:
            raise InputError(f"{path}: {error}") from error
        for warning in warnings:
            warn(f"{path}: {warning}")
        regions.append(region)
    return regions


def median_field_of_view(paths: Iterable[str | Path]) -> list[float]:
    """The median size (mm, per image axis) of the volumes at ``paths``, read from their
    headers: what a model card records as the field of view its model was trained on."""
    extents = []
    for path in paths:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        extents.append(np.asarray(reader.GetSize()) * np.asarray(reader.GetSpacing()))
    return [round(float(value), 1) for value in np.median(extents, axis=0)]


def field_of_view_warning(
    extent_mm: Sequence[float], card: ModelCard, subject: str = "the input"
) -> str | None:
    """A warning when a region of ``extent_mm`` is much larger than the volumes ``card``'s model
    was trained on (when the card records their size), suggesting an ROI; else None."""
    trained = card.data["preprocessing"].get("field_of_view_mm")
    if trained is None:
        return None
    ratios = np.asarray(extent_mm, dtype=float) / np.asarray(trained, dtype=float)
    larger = [axis for axis, ratio in zip(_AXES, ratios) if ratio > FIELD_OF_VIEW_FACTOR]
    if not larger:
        return None
    return (
        f"{subject} covers {_size(extent_mm)} mm, more than {FIELD_OF_VIEW_FACTOR:g} times the "
        f"{_size(trained)} mm the model {card.name!r} was trained on along {', '.join(larger)}: "
        f"the intensities are normalised over a different region and there is more room for false "
        f"positives. Set a region of interest around the {card.data['task']} (--roi on the "
        "command line, the ROI in the Slicer panel)."
    )


def _point(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _size(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.0f}" for v in values)
