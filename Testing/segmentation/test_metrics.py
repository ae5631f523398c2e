"""Metrics against hand-computed values and against medpy / MONAI as independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import compute_average_surface_distance

from asdseg.evaluation.metrics import (
    average_surface_distance,
    dice,
    evaluate_masks,
    hausdorff95,
    jaccard,
    surface,
)
from asdseg.io.image_io import image_to_array, read_image

from conftest import LA2018, ellipsoid_mask, needs_la2018


def cube(shape=(12, 12, 12), start=2, stop=6) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[start:stop, start:stop, start:stop] = True
    return mask


def test_dice_and_jaccard_hand_computed() -> None:
    a = cube(start=2, stop=6)  # 64 voxels
    b = np.zeros_like(a)
    b[2:6, 2:6, 2:4] = True  # 32 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 32 / 96)
    assert jaccard(a, b) == pytest.approx(32 / 64)


def test_distances_of_a_shifted_cube_hand_computed() -> None:
    a = cube(start=2, stop=6)  # 4x4x4 cube: 56 surface voxels around a 2x2x2 interior
    b = np.roll(a, 1, axis=0)  # the same cube one voxel further along x
    assert surface(a).sum() == 56
    # a's x=2 face (16 voxels) is 1 voxel from b's x=3 face; the 4 middle voxels of a's x=5
    # face lie inside b, 1 voxel from its side walls; the other 36 lie on b's surface.
    assert average_surface_distance(a, b, symmetric=False) == pytest.approx(20 / 56)
    assert average_surface_distance(a, b, symmetric=True) == pytest.approx(40 / 112)
    assert hausdorff95(a, b) == pytest.approx(1.0)
    # With 2 mm along x the face distances double, the side-wall distances do not.
    assert average_surface_distance(a, b, (2.0, 1.0, 1.0), symmetric=False) == pytest.approx(36 / 56)
    assert hausdorff95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_empty_mask_conventions() -> None:
    empty, full = np.zeros((5, 5, 5), bool), cube((5, 5, 5), 1, 4)
    both_empty = evaluate_masks(empty, empty, (1, 1, 1))
    assert (both_empty.dice, both_empty.jaccard, both_empty.hd95_mm, both_empty.assd_mm) == (1, 1, 0, 0)
    one_empty = evaluate_masks(empty, full, (1, 1, 1))
    assert one_empty.dice == 0 and one_empty.jaccard == 0
    assert math.isinf(one_empty.hd95_mm) and math.isinf(one_empty.asd_voxels)


def _compare_with_references(prediction: np.ndarray, reference: np.ndarray, spacing) -> None:
    ours = evaluate_masks(prediction, reference, spacing)
    assert ours.dice == pytest.approx(medpy_binary.dc(prediction, reference))
    assert ours.jaccard == pytest.approx(medpy_binary.jc(prediction, reference))
    assert ours.hd95_mm == pytest.approx(medpy_binary.hd95(prediction, reference, spacing), rel=1e-5)
    assert ours.asd_mm == pytest.approx(medpy_binary.asd(prediction, reference, spacing), rel=1e-5)
    assert ours.hd95_voxels == pytest.approx(medpy_binary.hd95(prediction, reference), rel=1e-5)
    monai_assd = compute_average_surface_distance(
        torch.from_numpy(prediction[None, None]),
        torch.from_numpy(reference[None, None]),
        symmetric=True,
        spacing=list(spacing),
    )
    assert ours.assd_mm == pytest.approx(float(monai_assd), rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_medpy_and_monai_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (24, 20, 16)
    prediction = ellipsoid_mask(shape, rng.uniform(8, 12, 3), rng.uniform(3, 7, 3))
    reference = ellipsoid_mask(shape, rng.uniform(8, 12, 3), rng.uniform(3, 7, 3))
    prediction |= rng.random(shape) > 0.97  # speckle makes many small surface pieces
    _compare_with_references(prediction, reference, (0.7, 1.1, 2.5))


@needs_la2018
def test_against_medpy_and_monai_on_real_left_atrium_masks() -> None:
    case = (LA2018 / "train.list").read_text().split()[0]
    label_image = read_image(LA2018 / "train" / case / "label.nii.gz")
    reference = image_to_array(label_image) > 0
    prediction = np.roll(reference, (2, -1, 1), axis=(0, 1, 2))  # a plausible mis-registration
    prediction[::7] = False
    _compare_with_references(prediction, reference, label_image.GetSpacing())
