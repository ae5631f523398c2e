"""ASDSeg's Teach driven against the real Slicer core libraries (slicer-core): the corrected
slices are found by difference against the prediction, a round fine-tunes in a child process,
installs a new version beside the original, and refuses a worse model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from asdseg.active.sparse_labels import read_sparse_labels
from asdseg.errors import CancelledError, InputError
from asdseg.io.image_io import read_image
from asdseg.registry import available_models, find_model
from asdseg.registry.model_card import ModelCard

from ASDSegLib.segmentation_logic import RunOptions, SegmentationLogic
from ASDSegLib.teach_logic import TeachLogic, default_site_name
from ASDSegLib.volume_nodes import oriented_image_from_array, update_volume_node_from_image
from conftest import wait_until
from mrml_application import SlicerCore, start_slicer_core

ONE_PASS = RunOptions(precision="fp32", mirroring=False, largest_component=False)


@pytest.fixture
def core() -> SlicerCore:
    return start_slicer_core()


@pytest.fixture
def teach(core: SlicerCore) -> TeachLogic:
    return TeachLogic(core.scene)


def add_volume(
    core: SlicerCore, path: Path, name: str, invert: bool = False
) -> slicer.vtkMRMLScalarVolumeNode:
    """The phantom as a volume node; ``invert``: its intensities negated, a 'site' the phantom
    model has never seen and segments badly."""
    image = read_image(path)
    if invert:
        image = sitk.Cast(-image, sitk.sitkFloat32)
    node = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node_from_image(node, image)
    return node


def segment(core: SlicerCore, volume_node, card: ModelCard) -> slicer.vtkMRMLSegmentationNode:
    return SegmentationLogic(core.scene).segment(volume_node, card.name, ONE_PASS).segmentation_node


def set_slices(segmentation_node, volume_node, label: np.ndarray, slices: list[int]) -> None:
    """The annotator's edit: slices ``slices`` (k) of every segment replaced by ``label``'s
    (a (k, j, i) label map), the other slices left as they are."""
    segment_labels = SegmentationLogic.segment_labels(segmentation_node)
    current = SegmentationLogic.merged_label_map(segmentation_node, segment_labels, volume_node)
    current[slices] = label[slices]
    for segment_id, segment_label in segment_labels:
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_image_from_array((current == segment_label.value).astype(np.uint8), volume_node),
            segmentation_node,
            segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        )


def organ_slices(label: np.ndarray, predicted: np.ndarray, count: int) -> list[int]:
    """``count`` slices (k) spread over those where ``label`` holds an organ and differs from
    ``predicted``: correcting them to ``label`` edits every one."""
    candidates = [k for k in range(label.shape[0]) if label[k].any() and (label[k] != predicted[k]).any()]
    assert len(candidates) >= count
    return [candidates[round(i)] for i in np.linspace(0, len(candidates) - 1, count)]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_the_corrected_slices_are_exactly_the_edited_and_the_checked_ones(
    core: SlicerCore, teach: TeachLogic, demo_installed: ModelCard, phantom_files, tmp_path: Path
) -> None:
    volume_node = add_volume(core, phantom_files[0], "phantom")
    segmentation_node = segment(core, volume_node, demo_installed)
    assert teach.corrected_slices(segmentation_node) == set()

    predicted = teach.prediction(segmentation_node)
    edited = predicted.copy()
    edited[7, 3:6, 3:6] = 2  # a few voxels drawn on slice 7
    edited[19][edited[19] == 1] = 0  # an organ erased on slice 19
    assert (edited[19] != predicted[19]).any()
    set_slices(segmentation_node, volume_node, edited, [7, 19])
    teach.mark_checked(segmentation_node, [12])

    assert teach.edited_slices(segmentation_node) == {7, 19}
    assert teach.corrected_slices(segmentation_node) == {7, 12, 19}
    with pytest.raises(InputError, match="outside"):
        teach.mark_checked(segmentation_node, [predicted.shape[0]])

    folder = tmp_path / "corrections"
    entry = teach.save_corrections(segmentation_node, folder)
    _, sparse = read_sparse_labels(entry / "labels.nii.gz")
    assert sparse.labelled_slices == {7, 12, 19}
    np.testing.assert_array_equal(sparse.label.transpose(2, 1, 0)[[7, 12, 19]], edited[[7, 12, 19]])
    assert teach.saved_corrections(folder) == [(entry / "image.nrrd", entry / "labels.nii.gz")]

    # Segmenting again replaces the prediction: the next corrections go to a new entry.
    segment(core, volume_node, demo_installed)
    assert teach.corrected_slices(segmentation_node) == set()


def test_nothing_corrected_is_refused_and_nothing_is_saved(
    core: SlicerCore, teach: TeachLogic, demo_installed: ModelCard, phantom_files, tmp_path: Path
) -> None:
    segmentation_node = segment(core, add_volume(core, phantom_files[0], "phantom"), demo_installed)
    with pytest.raises(InputError, match="correct the segmentation"):
        teach.start_teach(segmentation_node, tmp_path / "corrections")
    assert teach.saved_corrections(tmp_path / "corrections") == []


def test_a_teach_round_installs_a_new_version_and_leaves_the_original_untouched(
    core: SlicerCore, teach: TeachLogic, demo_installed: ModelCard, phantom_files, tmp_path: Path
) -> None:
    """On a 'new site' (inverted intensities) the phantom model finds nothing; ten slices
    corrected to the truth teach it (100 steps: Dice about 0 -> 0.98 on the two held out)."""
    original = folder_digest(demo_installed.directory)
    volume_node = add_volume(core, phantom_files[0], "site", invert=True)
    segmentation_node = segment(core, volume_node, demo_installed)
    truth = sitk.GetArrayFromImage(read_image(phantom_files[1]))
    corrected = organ_slices(truth, teach.prediction(segmentation_node), 10)  # 2 held out
    set_slices(segmentation_node, volume_node, truth, corrected)
    assert teach.edited_slices(segmentation_node) == set(corrected)

    folder = tmp_path / "corrections"
    outcome = teach.finish_teach(teach.start_teach(segmentation_node, folder, steps=100))

    assert outcome.installed is not None and outcome.installed.name == "phantom-demo-site1"
    assert outcome.report["accepted"] and outcome.report["new_dice"] > outcome.report["old_dice"] + 0.5
    assert "Installed phantom-demo-site1" in outcome.message()
    assert {"phantom-demo", "phantom-demo-site1"} <= set(available_models())
    assert folder_digest(demo_installed.directory) == original
    assert find_model("phantom-demo").directory == demo_installed.directory

    # Teaching the taught model again installs the site's next version beside it.
    assert default_site_name(outcome.installed.name) == "phantom-demo-site1"


@pytest.mark.slow
def test_a_worse_model_is_refused_and_the_round_kept(
    core: SlicerCore, teach: TeachLogic, demo_installed: ModelCard, phantom_files, tmp_path: Path
) -> None:
    """Corrections that contradict each other: the trained slices erased, the held-out slice
    the truth. The new model learns to erase and is worse on the held-out slice."""
    volume_node = add_volume(core, phantom_files[0], "phantom")
    segmentation_node = segment(core, volume_node, demo_installed)
    truth = sitk.GetArrayFromImage(read_image(phantom_files[1]))
    predicted = teach.prediction(segmentation_node)
    organs = [k for k in range(truth.shape[0]) if (truth[k] > 0).sum() >= 50 and predicted[k].any()]
    corrected = [organs[round(i)] for i in np.linspace(0, len(organs) - 1, 10)]
    held = [corrected[4], corrected[9]]  # the 5th and the 10th corrected slices
    wrong = np.zeros_like(truth)
    wrong[held] = truth[held]
    wrong[held, 0, 0] = 1  # an edit on the held-out slices too, so that they count as corrected
    set_slices(segmentation_node, volume_node, wrong, corrected)
    assert teach.edited_slices(segmentation_node) == set(corrected)

    outcome = teach.finish_teach(teach.start_teach(segmentation_node, tmp_path / "corrections", steps=60))

    assert outcome.installed is None and not outcome.report["accepted"]
    assert outcome.report["new_dice"] < outcome.report["old_dice"]
    assert "not installed" in outcome.message()
    assert (outcome.round_dir / "model" / "card.json").is_file()  # the run is kept
    assert "phantom-demo-site1" not in available_models()


@pytest.mark.slow
def test_a_stopped_round_resumes_on_the_same_corrections(
    core: SlicerCore, teach: TeachLogic, demo_installed: ModelCard, phantom_files, tmp_path: Path
) -> None:
    volume_node = add_volume(core, phantom_files[0], "site", invert=True)
    segmentation_node = segment(core, volume_node, demo_installed)
    truth = sitk.GetArrayFromImage(read_image(phantom_files[1]))
    corrected = organ_slices(truth, teach.prediction(segmentation_node), 6)
    set_slices(segmentation_node, volume_node, truth, corrected[:5])
    folder = tmp_path / "corrections"

    run = teach.start_teach(segmentation_node, folder, steps=100000)
    assert wait_until(lambda: (run.round_dir / "checkpoint.pt").is_file(), timeout=240)
    run.cancel()
    with pytest.raises(CancelledError):
        teach.finish_teach(run)
    assert (run.round_dir / "checkpoint.pt").is_file()

    resumed = teach.start_teach(segmentation_node, folder, steps=100000)
    assert resumed.round_dir == run.round_dir and "--resume" in resumed.arguments
    resumed.cancel()
    with pytest.raises(CancelledError):
        teach.finish_teach(resumed)

    set_slices(segmentation_node, volume_node, truth, corrected[5:])  # new corrections: a new round
    fresh = teach.start_teach(segmentation_node, folder, steps=100000)
    assert fresh.round_dir != run.round_dir and "--resume" not in fresh.arguments
    fresh.cancel()
    with pytest.raises(CancelledError):
        teach.finish_teach(fresh)
