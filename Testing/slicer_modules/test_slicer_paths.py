"""Folders and file names with spaces and non-ASCII characters, end to end, as on Windows.

On Windows the system's temporary folder sits in the user's profile, whose name often has
non-ASCII characters, and a child Python decodes paths with the locale's code page. The modules
put their files in Slicer's temporary folder (``temp_dir``) and start the engine in UTF-8 mode
(``engine_environment``). Linux shows the same failure under an ASCII locale with UTF-8 mode off,
which is how the children here are started: segment, export, suggest and fine-tune each run on
such paths through the modules' logic and the engine's child processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_slicer_annotation_logic import paint_reference

from asdseg.background import engine_environment
from asdseg.io.image_io import read_image, same_geometry
from asdseg.registry import install_model
from asdseg.registry.model_card import ModelCard

from ActiveAnnotateLib.annotation_logic import AnnotationLogic
from ASDSegLib.segmentation_logic import SegmentationLogic
from mrml_application import SlicerCore, start_slicer_core

#: A folder name as a Windows profile or a user's own folders may have them.
AWKWARD = "Données été 日本 ü"


def code_page_environment() -> dict[str, str]:
    """This process's environment with an ASCII locale and Python's UTF-8 mode off, the way a
    Windows code page treats characters outside it."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


@pytest.fixture
def core() -> SlicerCore:
    return start_slicer_core()


@pytest.fixture
def awkward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with spaces and non-ASCII characters, holding the user's model folder too."""
    folder = tmp_path / AWKWARD
    folder.mkdir()
    monkeypatch.setenv("ASDSEG_HOME", str(folder / "asdseg home"))
    return folder


@pytest.fixture
def volume_node(core: SlicerCore, phantom_files: tuple[Path, Path], awkward: Path):
    image = shutil.copy(phantom_files[0], awkward / "IRM oreillette.nii.gz")
    return core.volumes_logic.AddArchetypeVolume(str(image), "phantom")


def test_the_engines_children_run_in_utf8_mode_whatever_the_locale() -> None:
    code = "import sys; print(sys.flags.utf8_mode, sys.getfilesystemencoding())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=engine_environment(code_page_environment()),
        check=True,
    )
    assert result.stdout.split() == ["1", "utf-8"]


def test_segment_and_export_on_awkward_paths(
    core: SlicerCore, volume_node, awkward: Path, tiny_model: ModelCard, phantom_files: tuple[Path, Path]
) -> None:
    install_model(tiny_model.directory / "card.json")
    temp_dir = awkward / "Slicer temp"
    temp_dir.mkdir()
    logic = SegmentationLogic(
        core.scene, environment=engine_environment(code_page_environment()), temp_dir=temp_dir
    )
    run = logic.start(volume_node, tiny_model.name)
    assert Path(run.folder.name).parent == temp_dir
    outputs = logic.finish(run)
    assert not any(temp_dir.iterdir()), "the run's files are deleted once it is read"
    exported = logic.export_segmentation(
        outputs.segmentation_node, awkward / "Export ü" / "Segmentation 日本.nii.gz"
    )
    assert exported[0].is_file()
    assert same_geometry(read_image(exported[0]), read_image(phantom_files[0]), tolerance=1e-4)


def test_suggest_and_finetune_on_awkward_paths(
    core: SlicerCore, volume_node, awkward: Path, attention_model: ModelCard, phantom_files: tuple[Path, Path]
) -> None:
    temp_dir = awkward / "Slicer temp"
    temp_dir.mkdir()
    model = shutil.copytree(attention_model.directory, awkward / "modèle attention")
    logic = AnnotationLogic(
        core.scene,
        awkward / "séance",
        environment=engine_environment(code_page_environment()),
        temp_dir=temp_dir,
    )
    logic.model = str(model)
    segmentation_node = logic.create_annotation_segmentation(volume_node, logic.model_card())
    paint_reference(segmentation_node, volume_node, phantom_files[1])
    logic.mark_labelled(segmentation_node, [8, 16])
    run = logic.start_suggest(segmentation_node, "p-dsc", budget=2, device="cpu")
    assert Path(run.folder.name).parent == temp_dir
    rows = logic.finish_suggest(run)
    assert len(rows) == 2 and not {8, 16} & {row["slice"] for row in rows}
    card = logic.finish_finetune(logic.start_finetune([segmentation_node], steps=2, device="cpu"))
    assert card.directory.parent.parent == awkward / "séance"
    assert logic.model == str(card.directory)
    assert not any(temp_dir.iterdir())
