"""Synthetic MRI-like phantoms: an ellipsoid and a sphere in a noisy, bias-shaded background, and
a synthetic male pelvis (bladder, prostate, rectum) written as a training set.

Used by the tests, the demo and training without a data folder, so that all of them run on a
fresh clone without any real data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.io.image_io import array_to_image

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


#: Label values of the synthetic male pelvis, as a dataset.json of a pelvic set would number them.
BLADDER, PROSTATE, RECTUM = 1, 2, 3
PELVIS_LABELS = {"background": 0, "bladder": BLADDER, "prostate": PROSTATE, "rectum": RECTUM}
#: T2-like intensities: urine and fat bright, muscle and the rectal wall dark, gas black, the
#: prostate's central gland darker than its peripheral zone.
_T2 = {
    "air": 5.0,
    "fat": 190.0,
    "muscle": 80.0,
    "urine": 280.0,
    "central gland": 105.0,
    "peripheral zone": 165.0,
    "rectal wall": 65.0,
    "gas": 15.0,
}


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1.0


def make_synthetic_pelvis(shape: Sequence[int] = (64, 64, 48), seed: int = 0, noise: float = 12.0) -> Phantom:
    """A synthetic male pelvis on an axial T2-like volume, axes (x: right to left, y: anterior to
    posterior, z: inferior to superior) as in LPS: the bladder anterior and superior, the
    prostate below the bladder neck, the rectum a tube behind both, curving back as it rises.
    Sizes and positions vary with ``seed``; the same seed gives the same volume. Synthetic: it
    tests the multi-organ path, it teaches a network nothing about real anatomy."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    extent = np.asarray(shape, dtype=np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    unit = grid / extent[:, None, None, None]  # every axis in [0, 1)
    jitter = rng.uniform(-0.03, 0.03, 3)

    body = ((unit[0] - 0.5) / 0.47) ** 2 + ((unit[1] - 0.5) / 0.42) ** 2
    image = np.full(shape, _T2["air"], dtype=np.float32)
    image[body <= 1.0] = _T2["fat"]
    image[body <= 0.7] = _T2["muscle"]

    bladder_centre = np.array([0.5, 0.36, 0.68]) + jitter
    bladder_radii = np.array([0.17, 0.12, 0.15]) * rng.uniform(0.85, 1.15, 3)
    prostate_radii = np.array([0.09, 0.07, 0.08]) * rng.uniform(0.9, 1.1, 3)
    prostate_centre = bladder_centre + np.array([0.0, 0.04, -bladder_radii[2] - 0.8 * prostate_radii[2]])
    rectum_radius = 0.065 * rng.uniform(0.9, 1.1)
    rectum_y = (
        prostate_centre[1]
        + prostate_radii[1]
        + rectum_radius
        + 0.02
        + 0.25 * np.clip(unit[2] - prostate_centre[2], 0.0, None)
    )
    from_rectal_axis = np.hypot(unit[0] - 0.5 - jitter[0], unit[1] - rectum_y)
    rectum = (from_rectal_axis <= rectum_radius) & (unit[2] >= 0.05) & (unit[2] <= 0.85)

    label = np.zeros(shape, dtype=np.uint8)
    bladder = _ellipsoid(unit, bladder_centre, bladder_radii)
    prostate = _ellipsoid(unit, prostate_centre, prostate_radii) & ~bladder
    label[bladder] = BLADDER
    label[prostate] = PROSTATE
    label[rectum & (label == 0)] = RECTUM

    image[bladder] = _T2["urine"]
    image[prostate] = _T2["peripheral zone"]
    central_gland = _ellipsoid(unit, prostate_centre - np.array([0.0, 0.015, 0.0]), 0.65 * prostate_radii)
    image[central_gland & prostate] = _T2["central gland"]
    image[label == RECTUM] = _T2["rectal wall"]
    image[(from_rectal_axis <= 0.45 * rectum_radius) & (label == RECTUM)] = _T2["gas"]

    bias = 1.0 + 0.25 * np.cos(np.pi * (unit[1] - rng.uniform(0.3, 0.7)))  # a surface coil's shading
    real = image * bias + rng.normal(0.0, noise, shape)
    imaginary = rng.normal(0.0, noise, shape)
    return Phantom(np.sqrt(real**2 + imaginary**2).astype(np.float32), label)  # Rician, as magnitude MRI


#: What the synthetic pelvic dataset's dataset.json says about itself.
SYNTHETIC_PELVIS_INFO = {
    "name": "SyntheticPelvis",
    "description": "Synthetic male-pelvis phantoms (bladder, prostate, rectum on a T2-like volume) "
    "made by asdseg.phantoms for tests; not patient data, no anatomy to learn.",
    "reference": "asdseg.phantoms.make_synthetic_pelvis",
    "licence": "CC0-1.0 (synthetic)",
    "release": "1.0",
}


def write_synthetic_pelvis_dataset(
    folder: str | Path,
    cases: int = 6,
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (0.8, 0.8, 1.5),
    layout: str = "nnunet",
) -> Path:
    """Write ``cases`` synthetic pelves as a training set: the nnU-Net v2 raw layout
    (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json`` with
    ``channel_names``, ``labels``, ``numTraining``, ``file_ending``) or, with ``layout="msd"``,
    the Medical Segmentation Decathlon's (``training`` list, ``modality``, labels by value)."""
    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    names = [f"synthpelvis_{index:03d}" for index in range(cases)]
    channel = "_0000" if layout == "nnunet" else ""
    for index, name in enumerate(names):
        image, label = phantom_image(make_synthetic_pelvis(shape, seed=index), spacing)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{name}{channel}.nii.gz"))
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(folder / "labelsTr" / f"{name}.nii.gz"))
    if layout == "nnunet":
        description = {"channel_names": {"0": "T2"}, "labels": PELVIS_LABELS, "file_ending": ".nii.gz"}
    else:
        description = {
            "tensorImageSize": "3D",
            "modality": {"0": "T2"},
            "labels": {str(value): name for name, value in PELVIS_LABELS.items()},
            "training": [
                {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"} for name in names
            ],
        }
    dataset = {**SYNTHETIC_PELVIS_INFO, **description, "numTraining": cases}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return folder
