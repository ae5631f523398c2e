"""Fine-tuning on sparse slice labels: in process, and as the ``asdseg finetune`` child process
that ActiveAnnotate runs (progress lines, a new model, SIGTERM keeping the last checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asdseg.active.finetune import FineTuneSettings, fine_tune, model_grid_case
from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.background import BackgroundJob, JobState, engine_environment
from asdseg.cli import EXIT_STOPPED
from asdseg.demo.phantoms import make_phantom, phantom_image
from asdseg.errors import InputError
from asdseg.evaluation.metrics import dice
from asdseg.inference.segment import segment_image
from asdseg.io.image_io import image_to_array, write_image
from asdseg.preprocessing.transforms import CropBox
from asdseg.registry import find_model, load_network
from asdseg.registry.model_card import ModelCard
from asdseg.training.checkpoint import load_checkpoint
from asdseg.training.trainer import CHECKPOINT_FILE

EVERY_FOURTH = set(range(1, 24, 4))


def sparse_phantom(seed: int) -> tuple:
    image, label = phantom_image(make_phantom(shape=(24, 24, 24), seed=seed), spacing=(1.0, 1.0, 1.0))
    return image, label, SparseLabels(image_to_array(label, np.int64), EVERY_FOURTH)


def organ_dice(card: ModelCard, image, label) -> float:
    prediction = segment_image(image, card, load_network(card)).label_array()
    return dice(prediction == 1, image_to_array(label) == 1)


def test_fine_tuning_on_every_fourth_slice_learns_the_organ(
    attention_model: ModelCard, tmp_path: Path
) -> None:
    cases = [model_grid_case(*sparse_phantom(seed)[::2], attention_model, f"case-{seed}") for seed in (1, 2)]
    assert (cases[0].label == -1).any() and (cases[0].label >= 0).any()
    image, label, _ = sparse_phantom(7)
    before = organ_dice(attention_model, image, label)
    result = fine_tune(
        attention_model,
        cases,
        tmp_path / "round-1",
        FineTuneSettings(steps=60, learning_rate=0.05),
        device="cpu",
    )
    assert result.model is not None and not result.stopped
    assert result.model.data["training"]["fine_tuned_from"].startswith("tiny-attention")
    assert result.model.name == "tiny-attention-finetuned"
    after = organ_dice(result.model, image, label)
    assert after > max(before, 0.5), (before, after)


def test_fine_tuning_needs_a_labelled_slice(attention_model: ModelCard) -> None:
    image, _label, sparse = sparse_phantom(1)
    with pytest.raises(InputError, match="no slice is marked labelled"):
        model_grid_case(image, SparseLabels(sparse.label, set()), attention_model, "empty")


def test_with_an_roi_only_the_box_is_trained_on(attention_model: ModelCard, tmp_path: Path) -> None:
    image, _label, sparse = sparse_phantom(1)
    region = CropBox((3, 2, 4), (21, 20, 18))
    case = model_grid_case(image, sparse, attention_model, "with roi", region)
    # The same volume cut out beforehand, its labelled slices (5, 9, 13, 17) counted from slice 4.
    cut = SparseLabels(sparse.label[region.slices], {1, 5, 9, 13})
    expected = model_grid_case(image[region.slices], cut, attention_model, "cut out")
    np.testing.assert_array_equal(case.image, expected.image)
    np.testing.assert_array_equal(case.label, expected.label)
    assert case.image.shape != model_grid_case(image, sparse, attention_model, "whole").image.shape
    assert (case.label >= 1).any(), "the box holds labelled organ voxels"
    # The round runs on the box and gives a model.
    result = fine_tune(attention_model, [case], tmp_path / "round", FineTuneSettings(steps=2), device="cpu")
    assert result.model is not None


def test_an_roi_between_the_labelled_slices_is_refused(attention_model: ModelCard) -> None:
    image, _label, sparse = sparse_phantom(1)
    with pytest.raises(InputError, match=r"no labelled slice lies inside the ROI \(slices 2 to 4\)"):
        model_grid_case(image, sparse, attention_model, "between", CropBox((0, 0, 2), (24, 24, 5)))


def write_inputs(folder: Path, card: ModelCard) -> list[str]:
    image, _, sparse = sparse_phantom(3)
    write_image(image, folder / "image.nii.gz")
    write_sparse_labels(sparse, image, card.labels, folder / "labels.nii.gz")
    image_path, labels_path = str(folder / "image.nii.gz"), str(folder / "labels.nii.gz")
    return ["--model", str(card.directory), "--image", image_path, "--labels", labels_path, "--device", "cpu"]


def test_finetune_child_reports_progress_and_writes_a_model(
    attention_model: ModelCard, tmp_path: Path
) -> None:
    arguments = ["finetune", *write_inputs(tmp_path, attention_model), "--steps", "6"]
    job = BackgroundJob([*arguments, "--output-dir", str(tmp_path / "round-1"), "--name", "round-1"])
    assert job.wait(120) is JobState.SUCCEEDED, job.error
    assert job.progress.done == job.progress.total == 6
    assert set(job.progress.details) == {"loss", "eta_s"} and job.progress.details["eta_s"] == 0
    model = find_model(str(tmp_path / "round-1" / "model"))
    assert model.name == "round-1"
    load_network(model)
    again = BackgroundJob([*arguments, "--output-dir", str(tmp_path / "round-1")])
    assert again.wait(120) is JobState.FAILED
    assert "already holds a run's checkpoint" in again.error


def test_sigterm_stops_cleanly_keeping_the_last_checkpoint(
    attention_model: ModelCard, tmp_path: Path
) -> None:
    output = tmp_path / "round-1"
    command = [sys.executable, "-m", "asdseg", "finetune", *write_inputs(tmp_path, attention_model)]
    command += ["--steps", "5000", "--output-dir", str(output), "--progress", "json"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_environment()
    )
    for line in process.stdout:
        if json.loads(line)["done"] >= 55:  # past the first checkpoint (every 50 steps)
            break
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert process.returncode == EXIT_STOPPED, errors
    assert "stopped" in errors
    assert load_checkpoint(output / CHECKPOINT_FILE)["step"] == 50
    assert not (output / "model").exists(), "a stopped run writes no model"
