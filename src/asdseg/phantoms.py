"""Synthetic MRI-like phantoms: an ellipsoid and a sphere in a noisy, bias-shaded background.

Used by the tests and the demo so that both run on a fresh clone without any real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from asdseg.image_io import array_to_image

#: Label values of the phantom and their intensities relative to the background.
ELLIPSOID, SPHERE = 1, 2
_INTENSITY = {0: 100.0, ELLIPSOID: 180.0, SPHERE: 40.0}


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # (x, y, z) float32 intensities
    label: np.ndarray  # (x, y, z) uint8 in {0, ELLIPSOID, SPHERE}


def make_phantom(
    shape: Sequence[int] = (48, 48, 40), seed: int = 0, noise: float = 20.0, with_sphere: bool = True
) -> Phantom:
    """A random phantom; the same ``seed`` gives the same volume."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    extent = np.asarray(shape, dtype=np.float32)[:, None, None, None]
    label = np.zeros(shape, dtype=np.uint8)

    centre = rng.uniform(0.35, 0.65, 3)[:, None, None, None] * extent
    radii = rng.uniform(0.15, 0.25, 3)[:, None, None, None] * extent
    label[(((grid - centre) / radii) ** 2).sum(axis=0) <= 1.0] = ELLIPSOID
    if with_sphere:
        corner = rng.integers(0, 2, 3)[:, None, None, None]
        sphere_centre = (0.22 + 0.56 * corner) * extent
        sphere_radius = 0.14 * float(min(shape))
        label[(((grid - sphere_centre) ** 2).sum(axis=0) <= sphere_radius**2) & (label == 0)] = SPHERE

    image = np.vectorize(_INTENSITY.get, otypes=[np.float32])(label)
    bias = 1.0 + 0.2 * np.sin(grid[0] / shape[0] * np.pi * rng.uniform(0.5, 1.5))
    image = image * bias + rng.normal(0.0, noise, shape).astype(np.float32)
    return Phantom(image.astype(np.float32), label)


def phantom_image(
    phantom: Phantom,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> tuple[sitk.Image, sitk.Image]:
    """The phantom's image and label as SimpleITK images with the given geometry."""
    reference = sitk.Image([int(s) for s in phantom.image.shape], sitk.sitkFloat32)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetOrigin([float(o) for o in origin])
    reference.SetDirection([float(d) for d in direction])
    return array_to_image(phantom.image, reference), array_to_image(phantom.label, reference)
