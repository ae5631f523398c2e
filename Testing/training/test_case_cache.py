"""The numpy case cache that carries training data to a machine without SimpleITK: what a run
reads from it equals what it reads from the NIfTI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.phantoms import make_phantom
from asdseg.training.case_cache import load_cached_split, write_case_cache
from asdseg.training.config import DataConfig
from asdseg.training.data import load_split


def la_layout(root: Path, cases: int) -> Path:
    """A folder in the LA 2018 layout holding uint8 phantoms."""
    names = [f"CASE{index:02d}" for index in range(cases)]
    for index, name in enumerate(names):
        phantom = make_phantom(shape=(24, 20, 16), seed=index)
        folder = root / "train" / name
        folder.mkdir(parents=True)
        image = np.clip(phantom.image * 40 + 100, 0, 255).astype(np.uint8)
        for array, file_name in ((image, "image.nii.gz"), (phantom.label.astype(np.uint8), "label.nii.gz")):
            volume = sitk.GetImageFromArray(array.transpose(2, 1, 0))
            volume.SetSpacing((0.625, 0.625, 0.625))
            sitk.WriteImage(volume, str(folder / file_name))
    (root / "train.list").write_text("\n".join(names) + "\n")
    return root


def test_a_run_reads_the_same_cases_from_the_cache_as_from_the_files(tmp_path: Path) -> None:
    data = DataConfig(root=str(la_layout(tmp_path / "la", 6)), labelled=2, validation=2)
    written = write_case_cache(data, tmp_path / "cache", part_bytes=1)  # one case per part
    assert len(written) == 4 + 1  # four training cases, the index
    cached, from_files = load_cached_split(tmp_path / "cache"), load_split(data)
    assert not cached.validation  # held-out cases stay where the data is
    for role in ("labelled", "unlabelled"):
        for mine, theirs in zip(getattr(cached, role), getattr(from_files, role), strict=True):
            assert mine.name == theirs.name and mine.spacing == pytest.approx(theirs.spacing)
            np.testing.assert_array_equal(mine.image, theirs.image)
            if role == "labelled":
                np.testing.assert_array_equal(mine.label, theirs.label)
            else:
                assert mine.label is None


def test_a_missing_part_is_refused_unless_asked_for(tmp_path: Path) -> None:
    data = DataConfig(root=str(la_layout(tmp_path / "la", 5)), labelled=2, validation=1)
    written = write_case_cache(data, tmp_path / "cache", part_bytes=1)
    written[-2].unlink()  # the last part: the last unlabelled case
    with pytest.raises(InputError, match="missing"):
        load_cached_split(tmp_path / "cache")
    partial = load_cached_split(tmp_path / "cache", missing_parts_ok=True)
    assert (len(partial.labelled), len(partial.unlabelled)) == (2, 1)
