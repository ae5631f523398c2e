"""Reading/writing volumes: geometry kept, and every kind of bad input refused clearly."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.io.image_io import (
    array_to_image,
    atomic_path,
    image_to_array,
    read_image,
    same_geometry,
    write_image,
)
from asdseg.preprocessing.input_checks import check_intensities, check_spacing

from conftest import ROTATED


def geometric_image(size=(7, 6, 5)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(np.prod(size), dtype=np.float32).reshape(size[::-1]))
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetOrigin((-10.0, 5.5, 100.0))
    image.SetDirection(ROTATED)
    return image


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_roundtrip_keeps_geometry_and_values(tmp_path: Path, suffix: str) -> None:
    image = geometric_image()
    path = tmp_path / f"volume{suffix}"
    write_image(image, path)
    loaded = read_image(path)
    assert same_geometry(image, loaded)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(image))
    assert list(tmp_path.iterdir()) == [path], "no temporary file may be left behind"


def test_arrays_are_in_xyz_order() -> None:
    image = geometric_image()
    array = image_to_array(image)
    assert array.shape == image.GetSize()
    assert array[3, 2, 1] == image[3, 2, 1]
    assert same_geometry(array_to_image(array, image), image)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"file not found"):
        read_image(tmp_path / "absent.nii.gz")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image")
    with pytest.raises(InputError, match=r"notes.nii.gz: not a readable image"):
        read_image(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"unsupported file type"):
        read_image(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "whole.nii.gz"
    write_image(geometric_image((40, 40, 40)), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated.nii.gz: not a readable image"):
        read_image(truncated)
    assert gzip.decompress(data)  # the intact file is fine


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_nan_and_inf_voxels_of_a_nifti_file_are_counted_across_its_whole_length(
    tmp_path: Path, name: str
) -> None:
    """float64 voxels over more than one 4 MiB read: the last voxel is checked too (ITK alone
    would read NaN and Inf as 0)."""
    array = np.zeros((40, 128, 128))
    array[0, 0, 0], array[20, 64, 64], array[-1, -1, -1] = np.nan, np.inf, -np.inf
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=rf"{name}: 3 voxels are NaN or infinite"):
        read_image(path)
    array[:] = 1.0
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert read_image(path).GetSize() == (128, 128, 40)


def test_2d_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match=r"2D image.*3D volume is needed"):
        read_image(path)


def test_single_slice_3d_refused(tmp_path: Path) -> None:
    path = tmp_path / "thin.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 1], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match=r"single slice"):
        read_image(path)


def test_4d_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([6, 6, 6, 3], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match=r"4D image.*Extract one time point"):
        read_image(path)


def test_4d_with_one_time_point_is_read_as_3d(tmp_path: Path) -> None:
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.Image([6, 5, 4, 1], sitk.sitkFloat32), str(path))
    assert read_image(path).GetSize() == (6, 5, 4)


def test_nan_and_inf_refused() -> None:
    array = np.ones((4, 4, 4), dtype=np.float32)
    array[1, 1, 1], array[2, 2, 2] = np.nan, np.inf
    with pytest.raises(InputError, match=r"2 voxels are NaN or infinite"):
        check_intensities(array, "scan.nii.gz")


def test_constant_image_refused() -> None:
    with pytest.raises(InputError, match=r"every voxel has the value 7"):
        check_intensities(np.full((4, 4, 4), 7.0), "scan.nii.gz")


def test_strong_anisotropy_refused_unless_allowed() -> None:
    image = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    image.SetSpacing((0.5, 0.5, 6.0))
    with pytest.raises(InputError, match=r"strongly anisotropic.*--allow-anisotropic"):
        check_spacing(image, "thick.nii.gz")
    check_spacing(image, "thick.nii.gz", max_anisotropy=None)


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "result.nii.gz"
    path.write_bytes(b"old contents")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_bytes(b"half written")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old contents"
    assert list(tmp_path.iterdir()) == [path]


def test_a_truncated_metaimage_is_named_without_a_stale_reason(tmp_path: Path) -> None:
    """ITK ends its message with a stale errno ("No such file or directory") for a file that is
    there but cut short; the error keeps ITK's own sentence instead."""
    path = tmp_path / "cut.mha"
    sitk.WriteImage(geometric_image((20, 20, 20)), str(path), False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as error:
        read_image(path)
    assert str(path) in str(error.value) and "truncated" in str(error.value)
    assert "No such file" not in str(error.value)
