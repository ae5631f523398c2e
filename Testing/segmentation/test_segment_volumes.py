"""``asdseg segment -i`` with several volumes or a folder: one output per volume in the output
folders, the same maps as one call per volume, and a volume that fails reported, not fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.cli import main
from asdseg.inference.batch import batch_cases
from asdseg.io.image_io import SUPPORTED_SUFFIXES, image_suffix, image_to_array, read_image
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.registry import install_model
from asdseg.registry.model_card import ModelCard


@pytest.fixture
def volumes(tiny_model: ModelCard, tmp_path: Path) -> Path:
    """Three phantoms in a folder, one named as nnU-Net names its images, and the tiny model
    installed."""
    install_model(tiny_model.directory / "card.json")
    folder = tmp_path / "scans"
    folder.mkdir()
    for seed, name in enumerate(["a.nii.gz", "b.nrrd", "c_0000.nii.gz"]):
        sitk.WriteImage(phantom_image(make_phantom((24, 22, 20), seed=seed))[0], str(folder / name))
    (folder / ".hidden.nii.gz").write_text("not an image")
    return folder


def segment(*argv: str) -> int:
    return main(["segment", "--model", "tiny", "--device", "cpu", "--progress", "json", *argv])


def test_a_folder_gives_one_output_per_volume_equal_to_one_call_each(volumes: Path, tmp_path: Path) -> None:
    out, sdm = tmp_path / "out", tmp_path / "sdm"
    assert segment("-i", str(volumes), "-o", str(out), "--sdm", str(sdm)) == 0
    written = sorted(path.name for path in out.iterdir() if image_suffix(path) in SUPPORTED_SUFFIXES)
    assert written == ["a.nii.gz", "b.nrrd", "c.nii.gz"]
    for case in ("a", "b", "c"):
        assert any(path.name.startswith(case) for path in sdm.iterdir()), f"no SDM of {case}"
    for source, written in [("a.nii.gz", "a.nii.gz"), ("b.nrrd", "b.nrrd"), ("c_0000.nii.gz", "c.nii.gz")]:
        single = tmp_path / f"single-{written}"
        assert segment("-i", str(volumes / source), "-o", str(single)) == 0
        together = image_to_array(read_image(out / written))
        assert np.array_equal(together, image_to_array(read_image(single))), source


def test_files_given_one_by_one_and_a_failed_volume_is_reported_not_fatal(
    volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = volumes / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    code = segment("-i", str(volumes / "a.nii.gz"), str(broken), str(volumes / "b.nrrd"), "-o", str(out))
    captured = capsys.readouterr()
    assert code == 2
    assert "segmented 2 of 3 volumes" in captured.out
    assert "broken.nii.gz" in captured.err and "1 volume(s) failed: broken" in captured.err
    assert (
        (out / "a.nii.gz").is_file() and (out / "b.nrrd").is_file() and not (out / "broken.nii.gz").exists()
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "OUT/seg.nii.gz"], "names a folder (one file per volume goes into it)"),
        (["-o", "OUT", "--roi", "0", "0", "0", "5", "5", "5"], "--roi is for one volume"),
    ],
)
def test_batch_only_options_are_checked_before_any_work(
    extra: list[str], message: str, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [value.replace("OUT", str(tmp_path / "out")) for value in extra]
    assert segment("-i", str(volumes), *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_two_volumes_of_one_name_are_refused(
    volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sitk.WriteImage(read_image(volumes / "a.nii.gz"), str(volumes / "a.nrrd"))
    assert segment("-i", str(volumes), "-o", str(tmp_path / "out")) == 2
    assert "several inputs would be written as scans" in capsys.readouterr().err


def test_files_of_one_name_in_case_folders_are_named_after_their_folders(tmp_path: Path) -> None:
    for case in ("case1", "case2"):
        (tmp_path / case).mkdir()
        (tmp_path / case / "image.nii.gz").write_bytes(b"")
    cases = batch_cases([tmp_path / "case1" / "image.nii.gz", tmp_path / "case2" / "image.nii.gz"])
    assert [case.name for case in cases] == ["case1", "case2"]
    assert cases[0].output(tmp_path / "out") == tmp_path / "out" / "case1.nii.gz"
