"""Geometry: random orthonormal grids survive every image format, and segment's outputs keep a
random input geometry or a sheared direction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from workspace_helpers import SEGMENT, SHEARED, phantom_array, volume

from asdseg.cli import main
from asdseg.io.image_io import read_image, same_geometry, write_image


def random_geometry(seed: int) -> tuple[tuple, tuple, tuple]:
    """Random spacing, origin and orthonormal direction (rotations and reflections)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    direction = q * np.sign(np.diag(r))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, 3))
    origin = tuple(float(o) for o in rng.uniform(-300, 300, 3))
    return spacing, origin, tuple(float(d) for d in direction.ravel())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_geometry_round_trips_for_random_orthonormal_grids(tmp_path: Path, seed: int, suffix: str) -> None:
    spacing, origin, direction = random_geometry(seed)
    image = sitk.GetImageFromArray(np.random.default_rng(seed).random((5, 6, 7), dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    write_image(image, tmp_path / f"v{suffix}")
    assert same_geometry(read_image(tmp_path / f"v{suffix}"), image, tolerance=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_segment_outputs_keep_a_random_input_geometry(workspace: Path, seed: int) -> None:
    spacing, origin, direction = random_geometry(seed)
    image = sitk.ReadImage(str(workspace / "img.nii.gz"))
    image.SetSpacing(tuple(0.8 + 0.4 * s / 3 for s in spacing))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(workspace / "r.nii.gz"))
    out = workspace / "out"
    code = main(
        [
            *SEGMENT,
            "-i",
            str(workspace / "r.nii.gz"),
            "-o",
            str(out / "seg.nii.gz"),
            "--sdm",
            str(out / "sdm.nrrd"),
        ]
    )
    assert code == 0
    source = read_image(workspace / "r.nii.gz")
    for name in ("seg.nii.gz", "sdm-1.nrrd", "sdm-2.nrrd"):
        assert same_geometry(read_image(out / name), source, tolerance=1e-4), name


def test_a_sheared_volume_keeps_its_direction_in_metaimage(workspace: Path) -> None:
    sheared = volume(workspace, "sh.mha", phantom_array(workspace), direction=SHEARED)
    assert main([*SEGMENT, "-i", sheared, "-o", str(workspace / "o.mha")]) == 0
    assert np.allclose(sitk.ReadImage(str(workspace / "o.mha")).GetDirection(), SHEARED)
