"""What the Slicer modules check and install in Slicer's Python, and what they keep out of it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from asdseg.background import engine_environment
from asdseg.registry.model_card import ModelCard

from ASDSegLib.dependencies import PROTECTED_PACKAGES, missing_requirements, protected_constraints

ROOT = Path(__file__).resolve().parents[2]
#: Everything 3D Slicer runs: the engine (in PythonSlicer children) and both modules.
SLICER_RUNS = sorted(
    path for folder in ("src", "ASDSeg", "ActiveAnnotate") for path in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("path", SLICER_RUNS, ids=lambda path: str(path.relative_to(ROOT)))
def test_parses_as_python_3_9(path: Path) -> None:
    """Slicer 5.8 runs Python 3.9 (vermin in ``make test`` checks the library calls)."""
    ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))


def test_requirements_that_are_met_are_not_missing(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    numpy = metadata.version("numpy")
    requirements.write_text(f"# comment\nnumpy>={numpy}  # Slicer's\n\nnumpy>{numpy}\nno-such-package>=1\n")
    assert missing_requirements(requirements) == [f"numpy>{numpy}", "no-such-package>=1"]


def test_the_shipped_requirements_are_met_by_the_test_environment() -> None:
    assert missing_requirements(ROOT / "ASDSeg" / "Resources" / "requirements.txt") == []


def test_torch_numpy_and_simpleitk_are_pinned_to_what_is_installed() -> None:
    pins = dict(line.split("==") for line in protected_constraints())
    assert set(pins) == set(PROTECTED_PACKAGES)
    assert pins == {name: metadata.version(name) for name in PROTECTED_PACKAGES}


def test_listing_models_and_reading_their_cards_does_not_import_torch() -> None:
    """Opening the modules lists the models in Slicer's own process: it must not load torch."""
    code = (
        "import sys; from asdseg.registry import available_models, find_model; "
        "assert available_models() and find_model('la-dan').summary(); "
        "print(sorted(name for name in ('torch', 'monai') if name in sys.modules))"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, env=engine_environment())
    assert result.stdout.strip() == "[]", result.stderr


PANEL = """
import sys
from ActiveAnnotateLib.annotation_logic import AnnotationLogic
from ASDSegLib.segmentation_logic import SegmentationLogic
from mrml_application import start_slicer_core

model, image, work = sys.argv[1:]
core = start_slicer_core()
volume = core.volumes_logic.AddArchetypeVolume(image, "phantom")
segmentation_logic = SegmentationLogic(core.scene)
assert segmentation_logic.available_models()
segmentation_logic.check_input_volume(volume)
logic = AnnotationLogic(core.scene, work)
logic.model = model
card = logic.model_card()
labels = logic.create_annotation_segmentation(volume, card)
assert logic.mark_labelled(labels, [3, 12]) == {3, 12}
logic.export_labels(labels, work + "/labels.nii.gz", card)
segmentation_logic.export_segmentation(labels, work + "/segmentation.nii.gz")
print(sorted(name for name in ("torch", "monai") if name in sys.modules))
"""


def test_the_panels_work_in_slicers_process_without_torch(
    attention_model: ModelCard, phantom_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Listing models, reading a card, checking the volume, making the labels segmentation,
    marking and exporting slices all run in Slicer's own process; only the engine's child
    process may load torch and MONAI."""
    environment = engine_environment()
    folders = [str(ROOT / folder) for folder in ("ASDSeg", "ActiveAnnotate", "Testing")]
    environment["PYTHONPATH"] = os.pathsep.join([*folders, environment["PYTHONPATH"]])
    arguments = [str(attention_model.directory), str(phantom_files[0]), str(tmp_path)]
    command = [sys.executable, "-c", PANEL, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "labels.slices.json").is_file() and (tmp_path / "segmentation.nii.gz").is_file()
