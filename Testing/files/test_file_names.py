"""Output file names: the engine refuses one that would fail or land elsewhere on a system the
Slicer modules run on (Slicer's node names often hold ':' or '/'); spaces and non-ASCII are fine.
The Slicer panels suggest node names made file-safe by Slicer's own
qSlicerCoreIOManager::forceFileNameValidCharacters (needs Slicer: docs/slicer-manual-test.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from asdseg.cli import main
from asdseg.errors import InputError
from asdseg.io.image_io import check_file_name, read_image
from asdseg.io.labels import Label, write_label_map
from asdseg.registry import install_model
from asdseg.registry.model_card import ModelCard

from ASDSegLib.segmentation_logic import SegmentationLogic
from mrml_application import start_slicer_core

UNSAFE = [
    "phantom: ASDSeg.nii.gz",
    "a|b.nii.gz",
    "why?.nii.gz",
    'say "hi".nrrd',
    "back\\slash.nii.gz",
    "tab\there.nii.gz",
    "trailing dot.",
    "trailing space.nii.gz ",
    "CON.nii.gz",
    "lpt1.nrrd",
    "...",
]
SAFE = ["Segmentation 1 (edited).nii.gz", "Herzvorhof Größe 日本.nii.gz", "con-atrium.nii.gz", "a.b.c.nrrd"]
LABELS = [Label(0, "background", (0, 0, 0)), Label(1, "atrium", (200, 80, 60))]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file name"):
        check_file_name(tmp_path / name)


@pytest.mark.parametrize("name", SAFE)
def test_names_with_spaces_and_non_ascii_letters_are_written(name: str, tmp_path: Path) -> None:
    image = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    written = write_label_map(image, LABELS, tmp_path / name)
    assert written[0] == tmp_path / name
    assert read_image(tmp_path / name).GetSize() == (4, 5, 6)


def test_a_label_map_with_an_unsafe_name_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="':'"):
        write_label_map(sitk.Image(4, 5, 6, sitk.sitkUInt8), LABELS, tmp_path / "seg: edited.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_segment_refuses_an_unsafe_output_name(
    tiny_model: ModelCard, phantom_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    install_model(tiny_model.directory / "card.json")
    out = tmp_path / "out"
    arguments = ["segment", "-i", str(phantom_files[0]), "--model", tiny_model.name]
    assert main([*arguments, "-o", str(out / "phantom: ASDSeg.nii.gz")]) == 2
    assert "cannot hold ':'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_exporting_a_node_named_as_slicer_names_it(phantom_files: tuple[Path, Path], tmp_path: Path) -> None:
    """A segmentation node called 'phantom: ASDSeg' (Slicer's own naming style) exports under a
    safe name and is refused, with nothing written, under its raw name."""
    core = start_slicer_core()
    volume_node = core.volumes_logic.AddArchetypeVolume(str(phantom_files[0]), "phantom")
    segmentation_node = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "phantom: ASDSeg")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.GetSegmentation().AddEmptySegment("", "atrium")
    logic = SegmentationLogic(core.scene)
    folder = tmp_path / "exports"
    with pytest.raises(InputError, match="':'"):
        logic.export_segmentation(segmentation_node, folder / f"{segmentation_node.GetName()}.nii.gz")
    assert not folder.exists()
    written = logic.export_segmentation(segmentation_node, folder / "phantom ASDSeg.nii.gz")
    assert read_image(written[0]).GetSize() == read_image(phantom_files[0]).GetSize()
