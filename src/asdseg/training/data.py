"""Training cases and the patches drawn from them.

Cases are held in memory as normalised (x, y, z) arrays. The LA setting (UA-MT, SASSNet) draws
random 112x112x80 crops with random 90-degree rotations and flips in the axial plane; crops are
centred on a foreground voxel with probability ``foreground_probability`` (nnU-Net's
oversampling), which matters most for small organs and small patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from asdseg.errors import InputError
from asdseg.io.datasets import case_names, case_paths
from asdseg.io.image_io import grid_difference, grid_of, image_to_array, read_image
from asdseg.phantoms import make_phantom
from asdseg.preprocessing.transforms import normalize_intensity, resample_like, resample_to_spacing
from asdseg.training.config import DataConfig
from asdseg.training.losses import UNLABELLED

#: A training label's voxels: class indices and UNLABELLED (-1) in 2 bytes rather than int64's
#: 8, since every case stays in memory for the whole run (batches are cast to int64).
LABEL_DTYPE = np.int16


@dataclass
class Case:
    name: str
    image: np.ndarray  #: (x, y, z) float32, normalised
    label: np.ndarray | None  #: (x, y, z) :data:`LABEL_DTYPE`, or None for an unlabelled case
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def without_label(self) -> Case:
        return Case(self.name, self.image, None, self.spacing)


@dataclass
class CaseSplit:
    labelled: list[Case]
    unlabelled: list[Case]
    validation: list[Case]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """The voxel spacing the networks are trained at (mm)."""
        return self.labelled[0].spacing


def resample_pair(
    image: sitk.Image, label: sitk.Image | None, spacing: Sequence[float]
) -> tuple[sitk.Image, sitk.Image | None]:
    """Image (linear) and label (nearest neighbour; None stays None) on a grid of ``spacing``."""
    image = resample_to_spacing(sitk.Cast(image, sitk.sitkFloat32), spacing)
    return image, None if label is None else resample_like(label, image, sitk.sitkNearestNeighbor)


def load_case(root: Path, name: str, data: DataConfig, labelled: bool) -> Case:
    """A case on the training grid; an unlabelled one is loaded without its label, which it
    may not have."""
    image_path, label_path = case_paths(root, name)
    if labelled and label_path is None:
        raise InputError(f"{image_path}: an image without a label can only be an unlabelled case.")
    image = read_image(image_path)
    label = read_image(label_path) if labelled else None
    differs = None if label is None else grid_difference(grid_of(image), grid_of(label))
    if differs is not None:
        raise InputError(
            f"{label_path}: its {differs} differs from its image's ({image_path}); a label map must lie "
            "on its image's voxel grid. Export the label from the image it was drawn on."
        )
    if data.spacing is not None:
        image, label = resample_pair(image, label, data.spacing)
    if data.downsample > 1:
        image, label = resample_pair(image, label, [value * data.downsample for value in image.GetSpacing()])
    array = normalize_intensity(image_to_array(image), data.normalization, data.intensity)
    label_array = None if label is None else image_to_array(label, LABEL_DTYPE)
    return Case(name, array, label_array, image.GetSpacing())


def phantom_case(index: int, data: DataConfig, labelled: bool, num_classes: int | None = None) -> Case:
    """A synthetic case holding the ellipsoid (label 1) and, unless the network has only two
    classes (background and one structure, as the default config's), the sphere (label 2)."""
    with_sphere = num_classes is None or num_classes > 2
    phantom = make_phantom(shape=data.phantom_shape, seed=10_000 + index, with_sphere=with_sphere)
    label = phantom.label.astype(LABEL_DTYPE) if labelled else None
    image = normalize_intensity(phantom.image, data.normalization, data.intensity)
    return Case(f"phantom-{index:03d}", image, label)


def split_names(data: DataConfig) -> dict[str, list]:
    """The case names (indices for phantoms) of each part of the split: the first ``labelled``
    cases are labelled (the papers' LA setting: the first 16 of ``train.list``), the last
    ``validation`` ones are held out, the rest are unlabelled; or the config's own ``split``."""
    if data.split is not None:
        if data.root is None:
            raise InputError("data.split names cases of a data folder; set data.root (or use --dataset).")
        return {part: list(data.split.get(part, [])) for part in ("labelled", "unlabelled", "validation")}
    if data.root is None:
        names: list = list(range(data.cases or data.labelled + data.validation + 4))
    else:
        names = case_names(Path(data.root))[: data.cases]
    if data.labelled + data.validation > len(names):
        raise InputError(
            f"{len(names)} cases cannot give {data.labelled} labelled and {data.validation} validation cases."
        )
    validation_start = len(names) - data.validation
    return {
        "labelled": names[: data.labelled],
        "unlabelled": names[data.labelled : validation_start],
        "validation": names[validation_start:],
    }


def load_split(data: DataConfig, num_classes: int | None = None) -> CaseSplit:
    """The cases of :func:`split_names`, loaded and normalised (unlabelled ones without labels).
    With ``num_classes``, a label value the network has no class for is refused here rather
    than failing inside the loss."""

    def load(name, labelled: bool) -> Case:
        if data.root is None:
            return phantom_case(name, data, labelled, num_classes)
        case = load_case(Path(data.root), name, data, labelled)
        if labelled and num_classes is not None and int(case.label.max()) >= num_classes:
            raise InputError(
                f"{case_paths(Path(data.root), name)[1]}: label value {int(case.label.max())} but the "
                f"network has {num_classes} classes (0 to {num_classes - 1}); set network.params.num_classes "
                "and labels in the config to match the data."
            )
        return case

    names = split_names(data)
    return CaseSplit(
        labelled=[load(name, True) for name in names["labelled"]],
        unlabelled=[load(name, False) for name in names["unlabelled"]],
        validation=[load(name, True) for name in names["validation"]],
    )


def constant_images(split: CaseSplit) -> list[str]:
    """The cases whose image holds one value everywhere (an all-zero export, say): a run would
    train on them without a word, learning nothing from them."""
    cases = [*split.labelled, *split.unlabelled, *split.validation]
    return [case.name for case in cases if np.ptp(case.image) == 0]


class PatchSampler:
    """Random patches of ``patch_size`` with foreground oversampling and axial augmentation."""

    def __init__(
        self,
        patch_size: tuple[int, int, int],
        foreground_probability: float,
        augment: bool,
        rng: np.random.Generator,
    ) -> None:
        self.patch_size = tuple(patch_size)
        self.foreground_probability = foreground_probability
        self.augment = augment
        self.rng = rng

    def _padded(self, array: np.ndarray, value: float) -> np.ndarray:
        padding = [(0, max(patch - size, 0)) for size, patch in zip(array.shape, self.patch_size)]
        return np.pad(array, padding, constant_values=value) if any(after for _, after in padding) else array

    def _start(self, shape: tuple[int, ...], label: np.ndarray | None) -> list[int]:
        """Where the crop starts: centred on a foreground voxel with ``foreground_probability``;
        otherwise anywhere, except that a sparsely labelled volume is cropped around one of its
        labelled voxels so that no patch is without a label."""
        limits = [size - patch for size, patch in zip(shape, self.patch_size)]
        centres = None
        if label is not None and self.rng.random() < self.foreground_probability:
            centres = np.argwhere(label > 0)
        if label is not None and (centres is None or not len(centres)) and label.min() == UNLABELLED:
            centres = np.argwhere(label != UNLABELLED)
        if centres is not None and len(centres):
            centre = centres[self.rng.integers(len(centres))]
            return [
                int(np.clip(c - patch // 2, 0, limit))
                for c, patch, limit in zip(centre, self.patch_size, limits)
            ]
        return [int(self.rng.integers(0, limit + 1)) for limit in limits]

    def sample(self, case: Case) -> tuple[np.ndarray, np.ndarray | None]:
        image = self._padded(case.image, float(case.image.min()))
        label = None if case.label is None else self._padded(case.label, 0)
        start = self._start(image.shape, label)
        crop = tuple(slice(s, s + patch) for s, patch in zip(start, self.patch_size))
        image, label = image[crop], None if label is None else label[crop]
        if self.augment:
            image, label = self._rotate_flip(image, label)
        return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)

    def _rotate_flip(
        self, image: np.ndarray, label: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """UA-MT's RandomRotFlip: a random multiple of 90 degrees in the axial plane (only 0 or
        180 when the patch is not square there) and a flip along a random axial axis."""
        square = self.patch_size[0] == self.patch_size[1]
        turns = int(self.rng.integers(0, 4)) if square else 2 * int(self.rng.integers(0, 2))
        axis = int(self.rng.integers(0, 2))
        arrays = [image] if label is None else [image, label]
        arrays = [np.flip(np.rot90(array, turns, axes=(0, 1)), axis=axis) for array in arrays]
        return arrays[0], None if label is None else arrays[1]

    def batch(self, cases: list[Case], count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``count`` patches from randomly chosen ``cases``: images (N, 1, x, y, z) and labels
        (N, x, y, z), or None for unlabelled cases."""
        picks = [cases[int(self.rng.integers(len(cases)))] for _ in range(count)]
        patches = [self.sample(case) for case in picks]
        images = torch.from_numpy(np.stack([image for image, _ in patches]))[:, None].float()
        if picks[0].label is None:
            return images, None
        return images, torch.from_numpy(np.stack([label for _, label in patches])).long()
