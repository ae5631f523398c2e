"""Checks on the voxel values and spacing of a volume before it reaches a network.

Each check raises :class:`InputError` with the file name, what is wrong and what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError

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
    if float(array.max()) == float(array.min()):
        raise InputError(
            f"{source}: every voxel has the value {float(array.min()):g}; the image is empty "
            "or constant, so there is nothing to segment. Check that the right series was loaded."
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
