"""Training on your own data: ``asdseg train --dataset`` on the nnU-Net v2 and Decathlon layouts,
on the synthetic male pelvis (bladder, prostate, rectum), from the folder to a segmentation."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from asdseg.cli import main
from asdseg.evaluation.metrics import dice
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.datasets import DECATHLON, NNUNET, read_dataset
from asdseg.io.image_io import image_to_array, read_image
from asdseg.io.labels import read_labels_json
from asdseg.phantoms import (
    BLADDER,
    PROSTATE,
    RECTUM,
    make_synthetic_pelvis,
    write_synthetic_pelvis_dataset,
)
from asdseg.registry import load_network, user_models_dir
from asdseg.registry.model_card import ModelCard
from asdseg.training.config import config_from_dict
from asdseg.training.data import load_split
from asdseg.training.dataset_training import split_by_counts

from ASDSegLib.segmentation_logic import RunOptions, SegmentationLogic
from mrml_application import start_slicer_core

CASES = 5
SHAPE = (40, 40, 32)
SNOMED = {"bladder": "89837001", "prostate": "41216001", "rectum": "34402009"}
#: A small VNet on 32^3 patches: 60 steps learn the bladder (Dice above 0.95 on the held-out
#: case, on AVX2 and AVX-512 kernels alike); the two small organs need a few hundred.
TINY_RUN = {
    "network": {"name": "vnet", "params": {"base_filters": 4, "dropout": 0.0}},
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "labelled_per_batch": 2,
    "learning_rate": 0.1,
    "lr_decay_every": 45,
    "foreground_probability": 1.0,
    "validate_every": 1000,
    "checkpoint_every": 1000,
}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_synthetic_pelvis_dataset(
        tmp_path / "pelvis", cases=CASES, shape=SHAPE, spacing=(1.0, 1.0, 1.5)
    )


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_RUN))
    return path


def train(dataset: Path, config: Path, output: Path, *options: str) -> int:
    source = ["--dataset", str(dataset), "--config", str(config), "--recipe", "supervised"]
    return main(["train", *source, "--output-dir", str(output), "--device", "cpu", *options])


def centroid(label: np.ndarray, value: int) -> np.ndarray:
    return np.argwhere(label == value).mean(axis=0)


def test_synthetic_pelvis_places_the_organs_as_in_a_male_pelvis_with_t2_contrast() -> None:
    for seed in range(3):
        pelvis = make_synthetic_pelvis((64, 64, 48), seed=seed)
        bladder, prostate, rectum = (centroid(pelvis.label, value) for value in (BLADDER, PROSTATE, RECTUM))
        # Axes (x: right to left, y: anterior to posterior, z: inferior to superior).
        assert prostate[2] < bladder[2]  # the prostate lies below the bladder
        assert rectum[1] > prostate[1] + 3 and rectum[1] > bladder[1] + 3  # the rectum behind both
        assert abs(prostate[0] - bladder[0]) < 3 and abs(rectum[0] - bladder[0]) < 4  # on the midline
        mean = {value: pelvis.image[pelvis.label == value].mean() for value in (0, BLADDER, PROSTATE, RECTUM)}
        assert mean[BLADDER] > mean[PROSTATE] > mean[RECTUM]  # urine bright, rectal wall and gas dark
        assert mean[BLADDER] > 2 * mean[0]
    assert np.array_equal(make_synthetic_pelvis(seed=1).image, make_synthetic_pelvis(seed=1).image)


@pytest.mark.parametrize("layout", ["nnunet", "msd"])
def test_both_layouts_read_as_the_same_cases_labels_and_codes(layout: str, tmp_path: Path) -> None:
    folder = write_synthetic_pelvis_dataset(tmp_path / layout, cases=3, shape=(24, 24, 16), layout=layout)
    dataset = read_dataset(folder)
    assert dataset.layout == {"nnunet": NNUNET, "msd": DECATHLON}[layout]
    assert dataset.names == ["synthpelvis_000", "synthpelvis_001", "synthpelvis_002"]
    assert dataset.channel == "T2"
    assert [(label.value, label.name) for label in dataset.labels] == [
        (0, "background"),
        (1, "bladder"),
        (2, "prostate"),
        (3, "rectum"),
    ]
    for label in dataset.labels[1:]:
        assert label.terminology["type"]["value"] == SNOMED[label.name]
        assert label.terminology["category"]["value"] == "123037004"
    assert len({label.color for label in dataset.labels}) == 4
    assert dataset.info["licence"] == "CC0-1.0 (synthetic)"
    case = dataset.case("synthpelvis_001")
    assert np.array_equal(
        sitk.GetArrayFromImage(read_image(case.label)), make_synthetic_pelvis((24, 24, 16), 1).label.T
    )


@pytest.fixture(scope="module")
def pelvis_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The synthetic pelvis set and a 60-step run on it, made once for this file's tests."""
    folder = tmp_path_factory.mktemp("pelvis-run")
    dataset = write_synthetic_pelvis_dataset(
        folder / "pelvis", cases=CASES, shape=SHAPE, spacing=(1.0, 1.0, 1.5)
    )
    config = folder / "tiny.json"
    config.write_text(json.dumps(TINY_RUN))
    source = ["--steps", "60", "--data-source", "synthetic, made by the test"]
    assert train(dataset, config, folder / "run", *source) == 0
    return dataset, folder / "run"


def test_a_run_on_a_dataset_folder_records_the_split_and_the_data_in_its_card(
    pelvis_run: tuple[Path, Path],
) -> None:
    _, run = pelvis_run
    split = json.loads((run / "split.json").read_text())
    assert split == {
        "labelled": [f"synthpelvis_{index:03d}" for index in range(4)],
        "unlabelled": [],
        "validation": ["synthpelvis_004"],
    }
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["name"] == "syntheticpelvis-supervised"
    assert card["training"]["split"] == split
    assert card["training"]["data_licence"] == "CC0-1.0 (synthetic)"
    assert card["training"]["data_source"] == "synthetic, made by the test"
    assert card["training"]["data"].startswith("SyntheticPelvis (nnU-Net v2 layout, 5 cases, T2)")
    assert "CC0-1.0 (synthetic)" in card["license"]
    assert card["architecture"]["params"]["num_classes"] == 4


def test_the_trained_model_installs_and_segments_the_named_organs(
    pelvis_run: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset, run = pelvis_run
    assert main(["models", "install", str(run / "model" / "card.json")]) == 0
    output = tmp_path / "seg" / "pelvis.nii.gz"
    image = dataset / "imagesTr" / "synthpelvis_004_0000.nii.gz"
    model = "syntheticpelvis-supervised"
    assert main(["segment", "-i", str(image), "-o", str(output), "--model", model, "--device", "cpu"]) == 0
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "synthpelvis_004.nii.gz")))
    assert set(np.unique(prediction)) <= {0, 1, 2, 3}
    assert dice(prediction == BLADDER, reference == BLADDER) > 0.8
    labels = read_labels_json(tmp_path / "seg" / "pelvis.labels.json")
    assert [label.name for label in labels] == ["background", "bladder", "prostate", "rectum"]
    assert [label.terminology["type"]["value"] for label in labels[1:]] == list(SNOMED.values())
    slicer_table = (tmp_path / "seg" / "pelvis.ctbl").read_text()
    assert all(f"{value} {name} " in slicer_table for value, name in enumerate(SNOMED, start=1))


def test_a_release_judges_the_shipped_weights_per_organ_on_the_validation_cases(
    pelvis_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset, run = pelvis_run
    models = tmp_path / "models"
    assert main(["release", str(run), "--name", "pelvis-test", "--output-dir", str(models)]) == 0
    card = ModelCard.load(models / "pelvis-test" / "card.json")
    validation = card.data["metrics"]["validation"]
    assert validation["cases"] == 1 and list(validation["organs"]) == ["bladder", "prostate", "rectum"]
    prediction = segment_image(
        read_image(dataset / "imagesTr" / "synthpelvis_004_0000.nii.gz"), card, load_network(card)
    ).label_array()
    reference = image_to_array(read_image(dataset / "labelsTr" / "synthpelvis_004.nii.gz"), np.int64)
    for value, organ in enumerate(SNOMED, start=1):
        assert validation["organs"][organ]["raw"]["dice"] == pytest.approx(
            dice(prediction == value, reference == value), abs=1e-4
        )
    assert validation["organs"]["bladder"]["raw"]["dice"] > 0.8
    assert card.data["training"]["data_licence"] == "CC0-1.0 (synthetic)"
    assert card.weights_path.stat().st_size < 0.6 * (run / "model" / "model.pt").stat().st_size  # float16
    rows = (models / "pelvis-test" / "validation.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # raw and largest component, three organs
    assert "bladder: Dice" in capsys.readouterr().out

    assert main(["release", str(run), "--name", "pelvis-test", "--output-dir", str(models)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(path.name for path in models.iterdir()) == ["pelvis-test"]


def test_a_run_without_validation_cases_is_not_released(
    dataset: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert train(dataset, tiny_config, run, "--steps", "1", "--validation", "0") == 0
    assert main(["release", str(run), "--name", "unjudged", "--output-dir", str(tmp_path / "models")]) == 2
    assert "held out no validation case" in capsys.readouterr().err
    assert not (tmp_path / "models" / "unjudged").exists()


def test_in_slicer_the_model_gives_one_coded_segment_per_organ_and_exports_their_values(
    pelvis_run: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset, run = pelvis_run
    card = ModelCard.load(
        shutil.copytree(run / "model", user_models_dir() / "syntheticpelvis-supervised") / "card.json"
    )
    core = start_slicer_core()
    image = dataset / "imagesTr" / "synthpelvis_004_0000.nii.gz"
    volume = core.volumes_logic.AddArchetypeVolume(str(image), "pelvis")
    logic = SegmentationLogic(core.scene)
    outputs = logic.segment(volume, card.name, RunOptions(precision="fp32", largest_component=False))

    segmentation = outputs.segmentation_node.GetSegmentation()
    segments = [segmentation.GetNthSegment(index) for index in range(segmentation.GetNumberOfSegments())]
    assert [segment.GetName() for segment in segments] == ["bladder", "prostate", "rectum"]
    for segment, label in zip(segments, card.foreground_labels, strict=True):
        np.testing.assert_allclose(segment.GetColor(), np.array(label.color) / 255.0, atol=1e-6)
        serialised = vtk.reference("")
        assert segment.GetTag(segment.GetTerminologyEntryTagName(), serialised)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(str(serialised), entry)
        assert entry.GetTypeObject().GetCodeValue() == SNOMED[label.name]

    logic.export_segmentation(outputs.segmentation_node, tmp_path / "export.nii.gz")
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "export.nii.gz")))
    options = SegmentationOptions(precision="fp32", largest_component=False)
    engine = segment_image(read_image(image), card, load_network(card), options).label_array()
    np.testing.assert_array_equal(exported, engine.transpose(2, 1, 0))
    assert BLADDER in np.unique(exported) and set(np.unique(exported)) <= {0, 1, 2, 3}
    sidecar = read_labels_json(tmp_path / "export.labels.json")
    assert [(label.value, label.name) for label in sidecar] == [
        (0, "background"),
        (1, "bladder"),
        (2, "prostate"),
        (3, "rectum"),
    ]


def test_a_splits_file_and_the_licence_flag_go_into_the_run(
    dataset: Path, tiny_config: Path, tmp_path: Path
) -> None:
    splits = tmp_path / "splits.json"
    chosen = {
        "labelled": ["synthpelvis_003", "synthpelvis_001"],
        "unlabelled": ["synthpelvis_000"],
        "validation": ["synthpelvis_002"],
    }
    splits.write_text(json.dumps(chosen))
    run = tmp_path / "run"
    assert (
        train(
            dataset, tiny_config, run, "--steps", "1", "--splits", str(splits), "--data-licence", "CC-BY-4.0"
        )
        == 0
    )
    assert json.loads((run / "split.json").read_text()) == chosen
    assert json.loads((run / "config.json").read_text())["data"]["split"] == chosen
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["training"]["data_licence"] == "CC-BY-4.0"


def test_cases_are_trained_at_the_median_spacing(dataset: Path, tiny_config: Path, tmp_path: Path) -> None:
    for folder, name in (("imagesTr", "synthpelvis_001_0000"), ("labelsTr", "synthpelvis_001")):
        path = dataset / folder / f"{name}.nii.gz"
        image = sitk.ReadImage(str(path))
        image.SetSpacing((2.0, 2.0, 3.0))  # the same voxels over twice the field of view
        sitk.WriteImage(image, str(path))
    run = tmp_path / "run"
    assert train(dataset, tiny_config, run, "--steps", "1", "--labelled", "2", "--validation", "0") == 0
    config = config_from_dict(json.loads((run / "config.json").read_text()))
    assert config.data.spacing == (1.0, 1.0, 1.5)
    cases = {case.name: case for case in load_split(config.data).labelled}
    assert cases["synthpelvis_001"].image.shape == (80, 80, 64)
    assert cases["synthpelvis_001"].spacing == cases["synthpelvis_000"].spacing == (1.0, 1.0, 1.5)
    assert sorted(np.unique(cases["synthpelvis_001"].label)) == [0, BLADDER, PROSTATE, RECTUM]
    assert json.loads((run / "model" / "card.json").read_text())["preprocessing"]["spacing"] == [
        1.0,
        1.0,
        1.5,
    ]


def test_counts_give_labelled_first_and_validation_last(dataset: Path) -> None:
    split = split_by_counts(read_dataset(dataset), labelled=2, validation=1, unlabelled=1)
    assert split == {
        "labelled": ["synthpelvis_000", "synthpelvis_001"],
        "unlabelled": ["synthpelvis_002"],
        "validation": ["synthpelvis_004"],
    }


def _make_unlabelled(folder: Path, name: str) -> None:
    """Case ``name`` becomes an image without a label, in imagesUnlabelled."""
    (folder / "imagesUnlabelled").mkdir(exist_ok=True)
    (folder / "imagesTr" / f"{name}_0000.nii.gz").rename(folder / "imagesUnlabelled" / f"{name}_0000.nii.gz")
    (folder / "labelsTr" / f"{name}.nii.gz").unlink()
    description = json.loads((folder / "dataset.json").read_text())
    description["numTraining"] -= 1
    (folder / "dataset.json").write_text(json.dumps(description))


def test_images_without_labels_are_unlabelled_cases(dataset: Path, tiny_config: Path, tmp_path: Path) -> None:
    _make_unlabelled(dataset, "synthpelvis_001")
    folder = read_dataset(dataset)
    assert folder.unlabelled_names == ["synthpelvis_001"] and len(folder.labelled_names) == 4
    split = split_by_counts(folder, labelled=2, validation=1)
    assert split == {
        "labelled": ["synthpelvis_000", "synthpelvis_002"],
        "unlabelled": ["synthpelvis_003", "synthpelvis_001"],
        "validation": ["synthpelvis_004"],
    }
    assert train(dataset, tiny_config, tmp_path / "run", "--labelled", "2", "--steps", "2") == 0
    assert json.loads((tmp_path / "run" / "split.json").read_text()) == split
    config = config_from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    unlabelled = {case.name: case for case in load_split(config.data).unlabelled}
    assert unlabelled["synthpelvis_001"].label is None
    assert unlabelled["synthpelvis_001"].image.shape == SHAPE


def test_an_image_without_label_is_refused_as_labelled(
    dataset: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _make_unlabelled(dataset, "synthpelvis_001")
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labelled": ["synthpelvis_000", "synthpelvis_001"]}))
    assert train(dataset, tiny_config, tmp_path / "run", "--splits", str(splits)) == 2
    assert "images of imagesUnlabelled (no label) can only be unlabelled: synthpelvis_001" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def _drop_label(folder: Path) -> None:
    (folder / "labelsTr" / "synthpelvis_002.nii.gz").unlink()


def _drop_image(folder: Path) -> None:
    (folder / "imagesTr" / "synthpelvis_002_0000.nii.gz").unlink()


def _shift_label(folder: Path) -> None:
    path = folder / "labelsTr" / "synthpelvis_001.nii.gz"
    label = sitk.ReadImage(str(path))
    label.SetOrigin((0.0, 0.0, 3.0))
    sitk.WriteImage(label, str(path))


def _undeclared_value(folder: Path) -> None:
    path = folder / "labelsTr" / "synthpelvis_003.nii.gz"
    label = sitk.ReadImage(str(path))
    label[5, 5, 5] = 7
    sitk.WriteImage(label, str(path))


def _two_channels_declared(folder: Path) -> None:
    description = json.loads((folder / "dataset.json").read_text())
    description["channel_names"] = {"0": "T2", "1": "ADC"}
    (folder / "dataset.json").write_text(json.dumps(description))


def _second_channel_file(folder: Path) -> None:
    images = folder / "imagesTr"
    shutil.copy(images / "synthpelvis_000_0000.nii.gz", images / "synthpelvis_000_0001.nii.gz")


def _wrong_count(folder: Path) -> None:
    description = json.loads((folder / "dataset.json").read_text())
    description["numTraining"] = 9
    (folder / "dataset.json").write_text(json.dumps(description))


def _uncompressed_with_a_label_cut_in_half(folder: Path) -> None:
    """The dataset as uncompressed .nii files, one label map cut in half (ITK reads the missing
    voxels as zeros without an error)."""
    for path in [*folder.glob("imagesTr/*.nii.gz"), *folder.glob("labelsTr/*.nii.gz")]:
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path.with_suffix("")))
        path.unlink()
    _change_description(folder, file_ending=".nii")
    label = folder / "labelsTr" / "synthpelvis_003.nii"
    with label.open("r+b") as handle:
        handle.truncate(label.stat().st_size // 2)


def _image_cut_short(folder: Path) -> None:
    path = folder / "imagesTr" / "synthpelvis_004_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:-100])


def _change_description(folder: Path, **changes: object) -> None:
    description = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**description, **changes}))


MALFORMED: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "a .nii label cut in half": (
        _uncompressed_with_a_label_cut_in_half,
        [],
        "synthpelvis_003.nii: truncated: its header describes",
    ),
    "an image cut short": (_image_cut_short, [], "synthpelvis_004_0000.nii.gz: not a readable image"),
    "a starting model that is not installed": (lambda folder: None, ["--init-from", "nosuch"], "'nosuch'"),
    "numTraining as a word": (
        lambda folder: _change_description(folder, numTraining="zero"),
        [],
        "at numTraining, 'zero' is not of type 'integer'",
    ),
    "numTraining as text": (
        lambda folder: _change_description(folder, numTraining="6"),
        [],
        "at numTraining, '6' is not of type 'integer'",
    ),
    "image without label": (_drop_label, [], "images without a label in labelsTr: synthpelvis_002"),
    "label without image": (_drop_image, [], "labels without an image in imagesTr: synthpelvis_002"),
    "label on another grid": (_shift_label, [], "case synthpelvis_001: the label's origin"),
    "undeclared label value": (_undeclared_value, [], "label values [7] are not in dataset.json's labels"),
    "two channels in dataset.json": (_two_channels_declared, [], "2 image channels (T2, ADC)"),
    "a second channel's images": (_second_channel_file, [], "channels other than _0000"),
    "numTraining off": (_wrong_count, [], "numTraining is 9 but the folder holds 5"),
    "too few cases for the split": (
        lambda folder: None,
        ["--labelled", "4", "--validation", "2"],
        "5 cases with labels cannot give",
    ),
    "too few cases with unlabelled": (
        lambda folder: None,
        ["--labelled", "3", "--unlabelled", "2"],
        "cannot give",
    ),
}


@pytest.mark.parametrize("problem", sorted(MALFORMED))
def test_a_malformed_dataset_is_refused_before_any_training(
    problem: str, dataset: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    damage, options, message = MALFORMED[problem]
    damage(dataset)
    assert train(dataset, tiny_config, tmp_path / "run", *options) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_a_decathlon_image_with_several_channels_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_synthetic_pelvis_dataset(tmp_path / "msd", cases=3, shape=(24, 24, 16), layout="msd")
    path = folder / "imagesTr" / "synthpelvis_001.nii.gz"
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(path))  # T2 and a second map in one 4D file
    assert main(["train", "--dataset", str(folder), "--output-dir", str(tmp_path / "run")]) == 2
    assert "2 channels in one file" in capsys.readouterr().err


def test_a_splits_file_naming_unknown_cases_is_refused(
    dataset: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    splits = tmp_path / "splits.json"
    splits.write_text(
        json.dumps({"labelled": ["synthpelvis_000", "case_99"], "validation": ["synthpelvis_000"]})
    )
    assert train(dataset, tiny_config, tmp_path / "run", "--splits", str(splits)) == 2
    error = capsys.readouterr().err
    assert "cases not in the dataset: case_99" in error and "in more than one part: synthpelvis_000" in error


def test_a_splits_file_and_counts_together_are_refused(
    dataset: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labelled": ["synthpelvis_000"]}))
    assert train(dataset, tiny_config, tmp_path / "run", "--splits", str(splits), "--validation", "1") == 2
    assert "leave out --validation" in capsys.readouterr().err


def test_split_options_need_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--labelled", "3", "--output-dir", str(tmp_path / "run")]) == 2
    assert "--labelled: only with --dataset DIR" in capsys.readouterr().err


@pytest.mark.slow  # a model replaced under kill -9 is also tested in files/test_kill_during_writes.py
def test_kill_9_during_release_leaves_no_model_or_a_whole_one(
    pelvis_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """Killed at its first rename and at its last (the one that puts the model in place), a
    release leaves either no model or one that loads, and a release after the kill succeeds."""
    from test_kill_during_writes import renames_of, run_killed_at

    _, run = pelvis_run
    argv = ["release", str(run), "--name", "pelvis-killed", "--output-dir", str(tmp_path / "models")]
    renames = renames_of(run_killed_at(0, argv))
    for kill_at in (1, renames):
        models = tmp_path / f"models-{kill_at}"
        argv[-1] = str(models)
        assert run_killed_at(kill_at, argv).returncode == -9
        visible = [path.name for path in models.glob("*") if not path.name.startswith(".")]
        assert visible in ([], ["pelvis-killed"])
        if not visible:
            assert main(argv) == 0
        load_network(ModelCard.load(models / "pelvis-killed" / "card.json"))
