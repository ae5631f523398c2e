"""Checks on the voxel values and spacing of a volume before it reaches a network.

Each check raises :class:`InputError` with the file name, what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.io.image_io import image_suffix

#: Largest ratio of the full intensity range to the range of the central 98 % of voxels: real
#: scans stay within a few times; a corrupt voxel at 3e38 would reduce the rest to one value.
MAX_OUTLIER_RANGE = 1e4

#: Largest ratio between the coarsest and finest voxel spacing accepted without being asked.
#: Beyond it, resampling to an isotropic model spacing invents most of the through-plane detail.
DEFAULT_MAX_ANISOTROPY = 5.0


def check_intensities(array: np.ndarray, source: str | Path) -> None:
    """Refuse volumes with NaN/Inf voxels or a single constant value."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(
            f"{source}: {bad} voxels are NaN or infinite. Replace them (e.g. with the minimum "
            "intensity) before segmenting."
        )
    low, high = float(array.min()), float(array.max())
    if high == low:
        raise InputError(
            f"{source}: every voxel has the value {low:g}; the image is empty "
            "or constant, so there is nothing to segment. Check that the right series was loaded."
        )
    bulk_low, bulk_high = (float(value) for value in np.percentile(array, [1.0, 99.0]))
    if bulk_high > bulk_low and (high - low) > MAX_OUTLIER_RANGE * (bulk_high - bulk_low):
        raise InputError(
            f"{source}: a few voxels hold extreme values ({low:g} to {high:g}) while 98 % of them lie "
            f"between {bulk_low:g} and {bulk_high:g}; normalising would flatten the image. Clip or fix "
            "those voxels and try again."
        )


def check_spacing(
    image: sitk.Image, source: str | Path, max_anisotropy: float | None = DEFAULT_MAX_ANISOTROPY
) -> None:
    """Refuse non-positive spacing and, unless ``max_anisotropy`` is None, very thick slices."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{source}: voxel spacing {tuple(spacing)} is not positive; fix the header.")
    ratio = float(spacing.max() / spacing.min())
    if max_anisotropy is not None and ratio > max_anisotropy:
        raise InputError(
            f"{source}: voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm is strongly "
            f"anisotropic (ratio {ratio:.1f} > {max_anisotropy:g}). The model would have to "
            "invent most of the detail between slices. Use a thinner-slice acquisition, or allow "
            "it explicitly (--allow-anisotropic in the CLI) if you accept a coarser result."
        )


#: Output formats whose headers hold only a rotation: ITK's NIfTI writer turns a sheared
#: direction into the nearest rotation, and NRRD moves the columns' lengths into the spacing.
ROTATION_ONLY_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")


def check_output_geometry(image: sitk.Image, source: str | Path, outputs: Sequence[str | Path]) -> None:
    """Refuse writing a volume whose direction is not a rotation (sheared or scaled axes) in a
    format that would silently store another direction, before any work is done."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        return
    bad = [str(path) for path in outputs if image_suffix(path) in ROTATION_ONLY_SUFFIXES]
    if bad:
        raise InputError(
            f"{source}: its direction matrix is not a rotation (sheared axes), which "
            f"{', '.join(bad)} cannot hold; the output would lie elsewhere in space. Write the "
            "outputs as .mha or .mhd, or resample the input onto a rotated grid first."
        )
