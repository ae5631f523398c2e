"""Preprocessing named by a model card: resampling to the model's spacing, intensity
normalisation and cropping, each with its inverse for the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.io.image_io import same_geometry

Normalization = Literal["zscore", "zscore-foreground", "none", "ct"]

#: Largest model grid a volume may be resampled to (2^29 voxels: 2 GiB as float32, before the
#: network's per-class outputs). Beyond it the spacing in the header is almost surely wrong.
MAX_GRID_VOXELS = 2**29


def resample_to_spacing(
    image: sitk.Image, spacing: Sequence[float], interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample ``image`` onto a grid of ``spacing`` covering the same physical extent.

    Origin and direction are kept; the size is rounded so that the physical field of view is
    preserved to within one new voxel. The new grid's last voxel centres may lie up to half a
    voxel past the old ones; they take the nearest old value rather than zero.
    """
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    new_spacing = np.asarray(spacing, dtype=float)
    if np.allclose(old_spacing, new_spacing, rtol=1e-4):
        return image
    old_size = np.asarray(image.GetSize(), dtype=float)
    new_size = np.maximum(np.round(old_size * old_spacing / new_spacing), 1).astype(int)
    voxels = float(np.prod(new_size.astype(float)))
    if voxels > MAX_GRID_VOXELS:
        raise InputError(
            f"the volume ({' x '.join(str(s) for s in image.GetSize())} voxels of "
            f"{' x '.join(f'{s:g}' for s in old_spacing)} mm) would need a "
            f"{' x '.join(str(s) for s in new_size)} grid ({voxels:.3g} voxels) at the model's "
            f"{' x '.join(f'{s:g}' for s in new_spacing)} mm spacing, more than the "
            f"{MAX_GRID_VOXELS:.3g} allowed. Check the spacing in the header (mm, not cm?)."
        )
    return sitk.Resample(
        image,
        [int(s) for s in new_size],
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        [float(s) for s in new_spacing],
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
        useNearestNeighborExtrapolator=True,
    )


def resample_like(
    image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample ``image`` onto exactly the grid of ``reference`` (used to return outputs).

    Voxels of ``reference`` past the last voxel centres of ``image`` (the model grid of a
    resampled volume ends up to half a model voxel short of the input's edge) take the nearest
    value: zero there would mean a probability of no class and a confidence of 0 on the faces
    of the volume.
    """
    if same_geometry(image, reference):
        return image
    return sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        interpolator,
        0.0,
        image.GetPixelID(),
        useNearestNeighborExtrapolator=True,
    )


def normalize_intensity(
    array: np.ndarray, mode: Normalization, intensity: dict[str, Any] | None = None
) -> np.ndarray:
    """Z-score ``array`` over the whole volume, over its foreground (voxels above the
    minimum, as nnU-Net does for MRI with a zero background), or leave it unchanged; for
    ``ct``, clip to ``intensity["clip"]`` and z-score with the dataset's foreground ``mean`` and
    ``std`` (nnU-Net's CTNormalization: Hounsfield units mean the same in every scan).
    """
    array = array.astype(np.float32, copy=False)
    if mode == "none":
        return array
    if mode == "ct":
        if intensity is None:
            raise ValueError("normalisation ct needs the dataset's clip, mean and std")
        low, high = intensity["clip"]
        return ((np.clip(array, low, high) - intensity["mean"]) / intensity["std"]).astype(np.float32)
    if mode == "zscore":
        region = array
    elif mode == "zscore-foreground":
        region = array[array > array.min()]
        if region.size == 0:
            region = array
    else:
        raise ValueError(f"unknown normalisation {mode!r}")
    # float64 statistics: the sum of squares of float32 intensities overflows from about 1e17 on.
    std = float(region.std(dtype=np.float64))
    normalized = (array - float(region.mean(dtype=np.float64))) / (std if std > 0 else 1.0)
    if not np.isfinite(normalized).all():
        raise InputError(
            f"intensities up to {float(np.abs(array).max()):g} are too large to normalise in 32-bit "
            "floating point; rescale the image (e.g. to 0-4095) and try again."
        )
    return normalized


@dataclass(frozen=True)
class CropBox:
    """Index box ``[start, stop)`` per axis of a crop taken from a larger volume."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))


def foreground_box(array: np.ndarray, margin: int) -> CropBox:
    """Bounding box of voxels above the minimum, grown by ``margin`` voxels and clipped."""
    foreground = np.argwhere(array > array.min())
    if foreground.size == 0:
        return CropBox((0, 0, 0), tuple(array.shape))
    start = np.maximum(foreground.min(axis=0) - margin, 0)
    stop = np.minimum(foreground.max(axis=0) + 1 + margin, array.shape)
    return CropBox(tuple(int(v) for v in start), tuple(int(v) for v in stop))


def uncrop(array: np.ndarray, box: CropBox, full_shape: Sequence[int], fill: float) -> np.ndarray:
    """Place a cropped (channels-first or plain) array back into a volume of ``full_shape``."""
    leading = array.shape[: array.ndim - 3]
    full = np.full((*leading, *full_shape), fill, dtype=array.dtype)
    full[(..., *box.slices)] = array
    return full
