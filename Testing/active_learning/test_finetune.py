"""Fine-tuning on sparse slice labels: in process, and as the ``asdseg finetune`` child process
that ActiveAnnotate runs (progress lines, a new model, SIGTERM keeping the last checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from asdseg.active.finetune import (
    FineTuneSettings,
    fine_tune,
    fine_tuning_patch,
    fine_tuning_precision,
    model_grid_case,
)
from asdseg.active.pseudo_labels import pseudo_labelled
from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.active.teach import hold_out, judge
from asdseg.background import BackgroundJob, JobState, engine_environment
from asdseg.cli import EXIT_STOPPED, EXIT_WORSE, TEACH_REPORT
from asdseg.errors import InputError, ModelError
from asdseg.evaluation.metrics import dice
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.image_io import image_to_array, write_image
from asdseg.networks import build_network
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.preprocessing.transforms import CropBox
from asdseg.registry import find_model, load_network, save_model
from asdseg.registry.model_card import ModelCard
from asdseg.training.checkpoint import load_checkpoint
from asdseg.training.intensity_augmentation import IntensityAugmentation
from asdseg.training.losses import UNLABELLED
from asdseg.training.recipes.sparse_finetune import sparse_losses
from asdseg.training.trainer import CHECKPOINT_FILE

from conftest import tiny_card

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


@pytest.mark.slow
def test_kill_9_then_resume_finishes_the_round_with_a_model_that_loads(
    attention_model: ModelCard, tmp_path: Path
) -> None:
    """SIGKILL (nothing can clean up) past the first checkpoint: --resume continues from step 50
    to the last step, and the model it writes loads with the card's step count."""
    output = tmp_path / "round-1"
    arguments = ["finetune", *write_inputs(tmp_path, attention_model), "--output-dir", str(output)]
    arguments += ["--steps", "80", "--progress", "json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "asdseg", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=engine_environment(),
    )
    for line in process.stdout:
        if json.loads(line)["done"] >= 55:
            break
    process.kill()
    process.communicate(timeout=30)
    assert load_checkpoint(output / CHECKPOINT_FILE)["step"] == 50
    assert not (output / "model").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "asdseg", *arguments, "--resume"],
        capture_output=True,
        text=True,
        env=engine_environment(),
    )
    assert resumed.returncode == 0, resumed.stderr
    model = ModelCard.load(output / "model" / "card.json")
    load_network(model)
    assert model.data["training"]["steps"] == 80
    assert load_checkpoint(output / CHECKPOINT_FILE)["step"] == 80


def untrained_model(folder: Path, kind: str) -> ModelCard:
    """An untrained 4-filter network of each released kind (the 2-filter fixtures are too small
    to learn the phantom in a test's few steps): la-sassnet's VNet with an SDM head, a VNet with
    ASDNet's confidence network, and la-dan's enhanced U-Net with its confidence network."""
    torch.manual_seed(0)
    card = tiny_card("tiny", sdm=kind == "vnet with SDM head", confidence=kind != "vnet with SDM head")
    card["architecture"]["params"]["base_filters"] = 4
    if kind == "enhanced-unet with confidence":
        params = {"num_classes": 3, "base_filters": 4, "confidence_filters": 2}
        card["architecture"] = {"name": "enhanced-unet-confidence", "params": params}
    architecture = card["architecture"]
    return save_model(build_network(architecture["name"], architecture["params"]), card, folder)


def labelled_slice_dice(card: ModelCard, image, label, slices: set[int]) -> float:
    prediction = segment_image(image, card, load_network(card)).label_array()[:, :, sorted(slices)]
    return dice(prediction == 1, image_to_array(label)[:, :, sorted(slices)] == 1)


@pytest.mark.parametrize(
    "kind", ["vnet with SDM head", "vnet with confidence", "enhanced-unet with confidence"]
)
def test_fine_tuning_any_architecture_learns_the_labelled_slices(kind: str, tmp_path: Path) -> None:
    card = untrained_model(tmp_path / "model", kind)
    image, label, sparse = sparse_phantom(1)
    before = labelled_slice_dice(card, image, label, EVERY_FOURTH)
    case = model_grid_case(image, sparse, card, "case")
    # Without the intensity augmentation and the pseudo-labels, which have tests of their own:
    # 40 steps of an untrained network are about the losses and heads, not about learning past
    # perturbed intensities or from an untrained network's guesses.
    settings = FineTuneSettings(
        steps=40, learning_rate=0.05, intensity_augmentation=False, pseudo_label_confidence=None
    )
    result = fine_tune(card, [case], tmp_path / "round", settings, device="cpu")
    assert result.model is not None
    assert result.model.data["architecture"] == card.data["architecture"]
    assert "sparse" in result.model.data["training"]["protocol"]
    after = labelled_slice_dice(result.model, image, label, EVERY_FOURTH)
    assert after > max(before, 0.5), (before, after)
    first, last = result.history[0], result.history[-1]
    assert last["segmentation"] < first["segmentation"]


def test_unlabelled_voxels_give_no_gradient_to_any_head() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8, 6))
    labels[..., 1::2] = UNLABELLED  # every other slice unlabelled
    outputs = {
        "logits": torch.randn(2, 3, 8, 8, 6, requires_grad=True),
        "sdm": torch.randn(2, 2, 8, 8, 6, requires_grad=True),
        "confidence_logits": torch.randn(2, 1, 8, 8, 6, requires_grad=True),
    }
    losses = sparse_losses(outputs, labels, sdm_sign_weight=0.3)
    assert set(losses) == {"segmentation", "sdm_sign", "confidence"}
    sum(losses.values()).backward()
    for name, tensor in outputs.items():
        assert tensor.grad[..., 1::2].abs().max() == 0, f"{name} gets a gradient from unlabelled voxels"
        assert tensor.grad[..., 0::2].abs().max() > 0, f"{name} learns nothing from labelled voxels"


def test_freezing_the_encoder_keeps_its_weights(tiny_model: ModelCard, tmp_path: Path) -> None:
    image, _label, sparse = sparse_phantom(1)
    case = model_grid_case(image, sparse, tiny_model, "case")
    settings = FineTuneSettings(steps=3, learning_rate=0.05, freeze_encoder=True)
    result = fine_tune(tiny_model, [case], tmp_path / "round", settings, device="cpu")
    before = load_network(tiny_model).state_dict()
    after = load_network(result.model).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    encoder = {name for name in before if name.startswith(("encoder", "downsamplers"))}
    weights = {name for name in encoder if "running" not in name and "num_batches" not in name}
    assert not weights & changed, "encoder weights moved"
    assert any(name.startswith("decoder") for name in changed), "the decoder did not learn"


def test_a_round_trains_on_the_patch_its_settings_name(tiny_model: ModelCard, tmp_path: Path) -> None:
    """The model's own patch by default; FineTuneSettings.patch_size another, as the run's config
    records."""
    image, _label, sparse = sparse_phantom(1)
    case = model_grid_case(image, sparse, tiny_model, "phantom")
    settings = FineTuneSettings(steps=1, batchnorm_statistics_batches=0, pseudo_label_confidence=None)
    for patch, folder in ((None, "own"), ((32, 16, 16), "other")):
        fine_tune(tiny_model, [case], tmp_path / folder, replace(settings, patch_size=patch), device="cpu")
    recorded = [
        json.loads((tmp_path / name / "config.json").read_text())["patch_size"] for name in ("own", "other")
    ]
    assert recorded == [list(tiny_model.data["inference"]["patch_size"]), [32, 16, 16]]


def test_rounds_train_in_bf16_only_where_the_patch_keeps_the_deepest_level_wide() -> None:
    """la-sassnet-72's 96 x 96 x 64 patches train in ``auto`` (bf16 where native, twice as fast);
    la-sassnet's 64 x 64 x 32 leave the deepest level 2 voxels thin, where bf16 gave NaN
    gradients: fp32."""
    settings = FineTuneSettings()
    assert fine_tuning_precision(fine_tuning_patch(find_model("la-sassnet-72"), settings)) == "auto"
    assert fine_tuning_precision(fine_tuning_patch(find_model("la-sassnet"), settings)) == "fp32"
    assert fine_tuning_patch(find_model("la-sassnet-72"), replace(settings, patch_size=(64, 64, 32))) == (
        64,
        64,
        32,
    )


def test_intensity_augmentation_perturbs_patches_as_its_seed_says() -> None:
    torch.manual_seed(0)
    images = torch.randn(8, 1, 16, 16, 12)
    augmentation = IntensityAugmentation()
    augmented = augmentation(images, seed=5)
    assert torch.equal(augmentation(images, seed=5), augmented)  # a resumed run draws the same
    assert not torch.equal(augmentation(images, seed=6), augmented)
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    assert type(augmented) is torch.Tensor, "a MONAI MetaTensor slows every op of the network after it"
    changed = [
        bool((after - before).abs().max() > 1e-3) for after, before in zip(augmented, images, strict=True)
    ]
    assert 0 < sum(changed) < len(changed), "each transform is drawn with its own probability"


def test_a_round_with_intensity_augmentation_learns_and_says_so(
    tiny_model: ModelCard, tmp_path: Path
) -> None:
    image, _label, sparse = sparse_phantom(1)
    case = model_grid_case(image, sparse, tiny_model, "case")
    settings = FineTuneSettings(steps=40, learning_rate=0.05, intensity_augmentation=True)
    result = fine_tune(tiny_model, [case], tmp_path / "round", settings, device="cpu")
    assert "intensity augmentation" in result.model.data["training"]["notes"]
    losses = [entry["segmentation"] for entry in result.history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_pseudo_labels_fill_only_confident_unlabelled_voxels_with_the_prediction(
    demo_model: ModelCard,
) -> None:
    image, _label, sparse = sparse_phantom(5)
    case = model_grid_case(image, sparse, demo_model, "case")
    truth = model_grid_case(image, SparseLabels(sparse.label, set(range(24))), demo_model, "truth").label
    events = []
    report = lambda *event: events.append(event)  # noqa: E731
    filled = pseudo_labelled(demo_model, [case, case], 0.9, torch.device("cpu"), seed=0, progress=report)[0]
    assert events == [(done, 3, "pseudo-labelling") for done in (1, 2, 3)], "AdaBN, then each volume"
    corrected = case.label != UNLABELLED
    assert np.array_equal(filled.label[corrected], case.label[corrected]), "corrections are kept"
    added = (case.label == UNLABELLED) & (filled.label != UNLABELLED)
    assert added.sum() > 0.5 * (case.label == UNLABELLED).sum(), "the trained model is confident"
    assert (filled.label[added] == truth[added]).mean() > 0.95
    assert (filled.label[added] == 1).any() and (filled.label[added] == 0).any(), "organ and background"
    nothing = pseudo_labelled(demo_model, [case], 1.01, torch.device("cpu"), seed=0)[0]
    assert np.array_equal(nothing.label, case.label), "no probability reaches 1.01"


def test_a_model_that_misses_the_corrected_organ_gives_no_pseudo_labels(demo_model: ModelCard) -> None:
    """On inverted intensities the phantom model finds no organ where the corrections draw it;
    its confident 'no organ' elsewhere would teach it to miss the organ everywhere."""
    image, _label, sparse = sparse_phantom(5)
    case = model_grid_case(image * -1.0, sparse, demo_model, "inverted")
    assert pseudo_labelled(demo_model, [case], 0.9, torch.device("cpu"), seed=0) is None


def test_every_fifth_corrected_slice_is_held_out_over_all_volumes() -> None:
    label = np.zeros((4, 4, 12), dtype=np.int64)
    first, second = SparseLabels(label, {0, 2, 4, 6}), SparseLabels(label, {1, 3, 5, 7, 9, 11})
    splits = hold_out([first, second], every=5)
    # Over both volumes in order the 5th and 10th corrected slices: second's first (1) and last (11).
    assert [set(split.held_out) for split in splits] == [set(), {1, 11}]
    assert splits[1].training.labelled_slices == {3, 5, 7, 9}
    only_one = hold_out([SparseLabels(label, {0, 1}), SparseLabels(label, {2, 3})], every=2)
    assert all(split.training.labelled_slices for split in only_one), "a volume keeps a slice to train on"
    with pytest.raises(InputError, match="too few to hold one in 5 out"):
        hold_out([SparseLabels(label, {0, 1, 2})], every=5)


def test_a_new_model_that_predicts_nan_is_refused_with_the_reason(demo_model: ModelCard) -> None:
    """A diverged fine-tuning's NaN is a verdict against the new model, not a crash of the round."""
    image, _label, sparse = sparse_phantom(3)
    broken = load_network(demo_model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    options = SegmentationOptions(device="cpu")
    splits = hold_out([sparse], every=5)
    verdict = judge(demo_model, load_network(demo_model), demo_model, broken, [image], splits, options)
    assert verdict.new_model_broken and not verdict.accepted
    assert verdict.old_dice > 0.8, "the old model is still scored"
    assert "NaN" in verdict.message() and "not installed" in verdict.message()
    assert verdict.to_dict()["new_model_broken"]


def run_finetune(arguments: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "asdseg", "finetune", *arguments, "--progress", "json"]
    return subprocess.run(command, capture_output=True, text=True, env=engine_environment(), timeout=600)


@pytest.mark.slow  # slicer_modules/test_slicer_teach_logic.py installs a version beside the original
def test_a_teach_round_installs_rounds_side_by_side(tiny_model: ModelCard, tmp_path: Path) -> None:
    arguments = [*write_inputs(tmp_path, tiny_model), "--steps", "40", "--learning-rate", "0.05"]
    arguments += ["--hold-out-every", "5", "--install-as", "site-a"]
    for round_name, installed in (("round-1", "site-a"), ("round-2", "site-a-v2")):
        done = run_finetune([*arguments, "--output-dir", str(tmp_path / round_name)])
        assert done.returncode == 0, done.stderr
        report = json.loads((tmp_path / round_name / TEACH_REPORT).read_text())
        assert report["accepted"] and report["held_out_slices"] == 1
        assert report["new_dice"] >= report["old_dice"]
        assert find_model(installed).data["name"] == installed
    assert find_model("site-a").data["version"] == "1" and find_model("site-a-v2").data["version"] == "2"
    assert find_model(str(tiny_model.directory)).weights_sha256 == tiny_model.weights_sha256


def test_a_worse_model_is_not_installed(demo_model: ModelCard, tmp_path: Path) -> None:
    """Corrections that erase the organ on every slice trained on make the model worse on the
    held-out slice, which still shows it: the round says so and installs nothing."""
    image, _label, sparse = sparse_phantom(3)
    held = 17  # the fifth of the six labelled slices
    misleading = np.where(np.arange(24)[None, None, :] == held, sparse.label, 0)
    write_image(image, tmp_path / "image.nii.gz")
    write_sparse_labels(
        SparseLabels(misleading, EVERY_FOURTH), image, demo_model.labels, tmp_path / "labels.nii.gz"
    )
    arguments = ["--model", str(demo_model.directory), "--image", str(tmp_path / "image.nii.gz")]
    arguments += ["--labels", str(tmp_path / "labels.nii.gz"), "--device", "cpu", "--steps", "20"]
    arguments += ["--learning-rate", "0.05", "--hold-out-every", "5", "--install-as", "site-b"]
    done = run_finetune([*arguments, "--output-dir", str(tmp_path / "round")])
    assert done.returncode == EXIT_WORSE, done.stderr
    assert "The new model is worse" in done.stderr and "not installed" in done.stderr
    report = json.loads((tmp_path / "round" / TEACH_REPORT).read_text())
    assert not report["accepted"] and report["new_dice"] < report["old_dice"]
    assert (tmp_path / "round" / "model" / "card.json").is_file(), "the run is kept"
    with pytest.raises(ModelError):
        find_model("site-b")
