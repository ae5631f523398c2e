"""Training: a short run per recipe on phantoms learns; checkpoints resume exactly or are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asdseg.cli import main
from asdseg.errors import AsdsegError, InputError
from asdseg.evaluation.metrics import dice
from asdseg.registry import load_network
from asdseg.training.checkpoint import load_checkpoint, save_checkpoint
from asdseg.training.config import FINE_TUNING_RECIPES, config_from_dict
from asdseg.training.data import load_split
from asdseg.training.losses import (
    adversarial_bce,
    confidence_target_loss,
    masked_cross_entropy,
    masked_dice_loss,
    one_hot,
    sample_attention_dice_loss,
)
from asdseg.training.recipes import RECIPE_CLASSES
from asdseg.training.trainer import CHECKPOINT_FILE, Trainer

PHANTOM_LABELS = [
    {"value": 0, "name": "background", "color": [0, 0, 0]},
    {"value": 1, "name": "ellipsoid", "color": [230, 159, 0]},
    {"value": 2, "name": "sphere", "color": [86, 180, 233]},
]
#: Per recipe: the segmenter, loss settings, and the learning rate and steps that make a short
#: run meaningful on any CPU and seed. Every run spends its last quarter at a tenth of the rate
#: (``tiny_config``): at a constant rate the eval-mode prediction (BatchNorm running statistics)
#: of the last step swung so much that the same run passed on AVX-512 kernels and failed on
#: AVX2 ones. SASSNet and ASDNet learn slowest, hence their rate and steps. SASSNet trains with
#: the shipped la-sassnet's CE + Dice: with the paper's Dice alone, 0.1 x 200 steps reached
#: 0.47-0.97 over seeds 1, 2, 1337 and both kernel sets on an AMD EPYC but only 0.12, 0.17 and
#: 0.51 with the AVX-512 kernels on an Intel Xeon (bar 0.25); with CE + Dice, 0.44-0.98 there
#: over the same seeds and both kernel sets. ASDNet's adversarial run is the most chaotic: when
#: training went channels-last (the same arithmetic, other rounding) its 160 steps ended at 0.22
#: for seed 1337 (0.57 channels-first); 240 steps reached 0.36-0.73 over seeds 1, 2, 1337 and
#: both kernel sets on an AMD EPYC.
RECIPE_SETUPS = {
    "supervised": ({"name": "vnet", "params": {"base_filters": 4}}, {}, 0.1, 60),
    "sassnet": (
        {"name": "vnet", "params": {"base_filters": 4, "sdm_head": True}},
        {"discriminator_filters": 4, "rampup_steps": 30, "consistency": 0.01, "supervised_loss": "dice-ce"},
        0.1,
        200,
    ),
    "asdnet": (
        {"name": "svnet", "params": {"base_filters": 4}},
        {"confidence_filters": 4, "semi_supervised_start": 0.25},
        0.05,
        240,
    ),
    "dan": ({"name": "enhanced-unet", "params": {"base_filters": 4}}, {"confidence_filters": 4}, 0.05, 80),
    "attention-unet": ({"name": "attention-unet", "params": {"base_filters": 4}}, {}, 0.05, 80),
}


def tiny_config(recipe: str, steps: int | None = None, **overrides) -> dict:
    network, loss, learning_rate, default_steps = RECIPE_SETUPS[recipe]
    steps = steps or default_steps
    params = {"num_classes": 3, **network["params"]}
    if network["name"] in ("vnet", "svnet"):
        params["dropout"] = 0.0
    network = {"name": network["name"], "params": params}
    return {
        "recipe": recipe,
        "data": {"labelled": 3, "validation": 1, "cases": 6, "phantom_shape": [32, 32, 32]},
        "network": network,
        "labels": PHANTOM_LABELS,
        "patch_size": [32, 32, 32],
        "batch_size": 4,
        "labelled_per_batch": 2,
        "steps": steps,
        "learning_rate": learning_rate,
        "lr_decay_every": max(steps * 3 // 4, 1),
        "validate_every": steps,
        "checkpoint_every": steps,
        "foreground_probability": 1.0,
        "loss": loss,
        **overrides,
    }


def trivial_dice(config) -> float:
    """The best validation Dice of a predictor that ignores the image: every voxel one class."""
    validation = load_split(config.data).validation
    scores = [
        max(dice(np.full(case.label.shape, True), case.label == value), 0.0)
        for case in validation
        for value in (1, 2)
    ]
    return float(np.mean(scores))


def test_every_recipe_has_a_test_setup() -> None:
    """Every recipe 'asdseg train' runs; the fine-tuning recipe starts from a released model and
    is tested in test_finetune.py."""
    assert set(RECIPE_SETUPS) == set(RECIPE_CLASSES) - set(FINE_TUNING_RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPE_SETUPS))
def test_a_short_run_reduces_the_loss_and_beats_a_trivial_predictor(recipe: str, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    config = config_from_dict(tiny_config(recipe))
    result = Trainer(config, tmp_path, device="cpu").run(show_progress=False)
    losses = [row["loss"] for row in result.history]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert result.history[-1]["validation_dice"] > trivial_dice(config) + 0.2
    assert (tmp_path / "log.csv").read_text().count("\n") == len(losses) + 1
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert result.model is not None and result.model.weights_path.is_file()
    if recipe == "sassnet":  # where paper and reference code disagree, the card says which was used
        assert "0.01 x Gaussian warm-up" in result.model.data["training"]["notes"]


def test_resuming_from_a_checkpoint_gives_the_same_next_steps(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config("sassnet", steps=4, checkpoint_every=2, validate_every=100))
    straight = Trainer(config, tmp_path / "straight", device="cpu").run(show_progress=False).history

    Trainer(config, tmp_path / "interrupted", device="cpu").run(until=2, show_progress=False)
    resumed = Trainer(config, tmp_path / "interrupted", device="cpu")
    resumed.resume()
    assert resumed.step == 2
    history = resumed.run(show_progress=False).history
    for expected, actual in zip(straight[2:], history[2:], strict=True):
        assert actual["step"] == expected["step"]
        assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert actual["discriminator"] == pytest.approx(expected["discriminator"], rel=1e-5)


def test_a_checkpoint_is_not_continued_under_other_loss_settings(tmp_path: Path) -> None:
    """A DAN run checkpointed with the old default confidence target is not switched to the new
    default halfway when resumed; naming the checkpoint's setting continues it."""
    values = tiny_config("dan", steps=2, checkpoint_every=1, validate_every=100)
    values["loss"] = {**values.get("loss", {}), "confidence_target": "correctness"}
    Trainer(config_from_dict(values), tmp_path, device="cpu").run(until=1, show_progress=False)
    loss = {key: value for key, value in values["loss"].items() if key != "confidence_target"}
    changed = {**values, "loss": loss}
    with pytest.raises(InputError, match=r"confidence_target='correctness'.*confidence_target='paper'"):
        Trainer(config_from_dict(changed), tmp_path, device="cpu").resume()
    same = Trainer(config_from_dict(values), tmp_path, device="cpu")
    same.resume()
    assert same.step == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_validation_hands_the_network_back_in_the_runs_memory_layout(
    channels_last: bool, tmp_path: Path
) -> None:
    """CPU inference runs channels-last; a run's validation must not switch the layout its
    config asked for (a resumed run would then round differently from an uninterrupted one)."""
    settings = tiny_config("supervised", steps=2, validate_every=1, channels_last=channels_last)
    trainer = Trainer(config_from_dict(settings), tmp_path, device="cpu")
    result = trainer.run(show_progress=False)
    assert all("validation_dice" in row for row in result.history)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    network = trainer.recipe.networks["segmenter"]
    weights = [weight for weight in network.parameters() if weight.dim() == 5 and weight.shape[1] > 1]
    assert weights and all(weight.is_contiguous(memory_format=layout) for weight in weights)


def test_training_time_is_measured_across_resumptions(tmp_path: Path) -> None:
    """The card's training minutes count the time before an interruption too: the checkpoint
    carries it, so a run resumed after ten minutes reports at least ten."""
    config = config_from_dict(tiny_config("supervised", steps=2, checkpoint_every=1, validate_every=100))
    Trainer(config, tmp_path, device="cpu").run(until=1, show_progress=False)
    checkpoint = tmp_path / CHECKPOINT_FILE
    state = load_checkpoint(checkpoint)
    assert state["training_seconds"] > 0
    state["training_seconds"] = 600.0  # as if the first part had taken ten minutes
    save_checkpoint(checkpoint, state)

    resumed = Trainer(config, tmp_path, device="cpu")
    resumed.resume()
    minutes = resumed.run(show_progress=False).model.data["training"]["training_minutes"]
    assert 10.0 <= minutes < 11.0
    assert load_checkpoint(checkpoint)["training_seconds"] == pytest.approx(60 * minutes, abs=3)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config("supervised", steps=2, checkpoint_every=2, validate_every=100))
    Trainer(config, tmp_path, device="cpu").run(show_progress=False)
    checkpoint = tmp_path / CHECKPOINT_FILE
    assert load_checkpoint(checkpoint)["step"] == 2
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(AsdsegError, match="incomplete or corrupt"):
        Trainer(config, tmp_path, device="cpu").resume()


def test_a_new_run_never_overwrites_an_existing_checkpoint(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config("supervised", steps=2, checkpoint_every=2, validate_every=100))
    Trainer(config, tmp_path, device="cpu").run(show_progress=False)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(AsdsegError, match="--resume"):
        Trainer(config, tmp_path, device="cpu").run(show_progress=False)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_a_run_initialised_from_a_released_model_starts_from_its_weights(tmp_path: Path) -> None:
    """The segmenter and the confidence network DAN ships both start from the model's weights;
    without ``init_from`` the same seed starts elsewhere."""
    short = {"steps": 2, "checkpoint_every": 2, "validate_every": 100}
    released = Trainer(config_from_dict(tiny_config("dan", **short)), tmp_path / "first", device="cpu")
    model = released.run(show_progress=False).model
    expected = load_network(model).state_dict()

    def exported_state(**overrides) -> dict[str, torch.Tensor]:
        config = config_from_dict(tiny_config("dan", seed=7, **short, **overrides))
        trainer = Trainer(config, tmp_path / f"run{len(overrides)}", device="cpu")
        trainer.run(until=0, show_progress=False)
        return trainer.recipe.export_network().state_dict()

    initialised, fresh = exported_state(init_from=str(model.directory)), exported_state()
    assert any(name.startswith("confidence") for name in expected)
    assert all(torch.equal(initialised[name], tensor) for name, tensor in expected.items())
    assert not all(torch.equal(fresh[name], tensor) for name, tensor in expected.items())


def test_a_resumed_run_takes_its_weights_from_the_checkpoint_not_its_starting_model(
    tmp_path: Path,
) -> None:
    """The starting model is read when the run starts, not when it resumes: a run still
    resumes after that model has gone, goes on from its checkpoint's weights, and its card still
    names the model it started from (its version, weights and steps)."""
    one_step = tiny_config("dan", steps=1, checkpoint_every=1, validate_every=100)
    released = Trainer(config_from_dict(one_step), tmp_path / "released", device="cpu")
    starting_card = released.run(show_progress=False).model
    starting_model = starting_card.directory
    config = config_from_dict(
        tiny_config(
            "dan", seed=7, steps=2, checkpoint_every=1, validate_every=100, init_from=str(starting_model)
        )
    )
    Trainer(config, tmp_path / "run", device="cpu").run(until=1, show_progress=False)
    checkpointed = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["recipe"]["networks"]["segmenter"]
    shutil.rmtree(starting_model)

    resumed = Trainer(config, tmp_path / "run", device="cpu")
    resumed.resume()
    assert resumed.step == 1
    weights = resumed.recipe.networks["segmenter"].state_dict()
    assert all(torch.equal(weights[name], tensor) for name, tensor in checkpointed.items())
    training = resumed.run(show_progress=False).model.data["training"]
    assert training["steps"] == 2
    assert training["started_from"]["weights_sha256"] == starting_card.weights_sha256
    assert training["started_from"]["steps"] == 1
    assert training["started_from"]["version"] == starting_card.data["version"]


def test_init_from_a_model_of_another_architecture_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dan = config_from_dict(tiny_config("dan", steps=1, checkpoint_every=1, validate_every=100))
    released = Trainer(dan, tmp_path / "dan", device="cpu").run(show_progress=False).model
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tiny_config("supervised", steps=1)))
    arguments = ["train", "--config", str(config_path), "--output-dir", str(tmp_path / "out")]
    assert main([*arguments, "--init-from", str(released.directory)]) == 2
    error = capsys.readouterr().err
    assert "enhanced-unet-confidence" in error and "same architecture" in error
    assert not (tmp_path / "out" / "config.json").exists()


def test_train_command_rejects_unknown_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text('{"recipe": "supervised", "stepz": 10}')
    assert main(["train", "--config", str(config_path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "unknown setting(s) stepz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", [300, 1500, 6000])
def test_sassnet_warm_up_reaches_the_papers_weight_at_the_end_of_any_schedule(steps: int) -> None:
    config = config_from_dict({**tiny_config("sassnet"), "steps": steps, "loss": {"consistency": 0.001}})
    recipe = RECIPE_CLASSES["sassnet"](config, torch.device("cpu"))
    assert recipe.adversarial_weight(steps) == pytest.approx(0.001)
    assert recipe.adversarial_weight(steps // 2) == pytest.approx(0.001 * np.exp(-5 * 0.25))
    assert recipe.adversarial_weight(0) == pytest.approx(0.001 * np.exp(-5))


def test_sassnet_discriminator_judges_the_segmenter_in_eval_mode() -> None:
    config = config_from_dict(tiny_config("sassnet"))
    recipe = RECIPE_CLASSES["sassnet"](config, torch.device("cpu"))
    modes = []
    recipe.networks["discriminator"].register_forward_hook(
        lambda module, inputs, output: modes.append(module.training)
    )
    images = torch.randn(1, 1, 32, 32, 32)
    labels = torch.zeros(1, 32, 32, 32, dtype=torch.long)
    labels[0, 8:20, 8:20, 8:20] = 1
    recipe.training_step(images, labels, torch.randn(1, 1, 32, 32, 32), step=0)
    assert modes == [False, True]  # judged for the segmenter's loss, then trained


@pytest.mark.parametrize(
    ("recipe", "supervised_loss", "other"),
    [
        ("sassnet", "dice", "dice-ce"),
        ("sassnet", "dice-ce", "dice"),
        ("asdnet", "sample-attention", "dice-ce"),
        ("asdnet", "dice-ce", "sample-attention"),
    ],
)
def test_supervised_loss_is_the_papers_or_the_baselines_dice_ce(
    recipe: str, supervised_loss: str, other: str
) -> None:
    """SASSNet's paper loss is Dice, ASDNet's Eq. 2 the sample-attention Dice; "dice-ce" is the
    supervised baseline's (CE + Dice) / 2. The step logs the chosen one, computed by hand."""
    config = config_from_dict({**tiny_config(recipe), "loss": {"supervised_loss": supervised_loss}})
    trainer = RECIPE_CLASSES[recipe](config, torch.device("cpu"))
    images, unlabelled = torch.randn(2, 1, 32, 32, 32), torch.randn(2, 1, 32, 32, 32)
    labels = torch.zeros(2, 32, 32, 32, dtype=torch.long)
    labels[0, 8:20, 8:20, 8:20] = 1
    labels[1, 4:12, 4:12, 4:28] = 2
    with torch.no_grad():  # the step's own forward pass, before its update changes the weights
        logits = trainer.segmenter(torch.cat([images, unlabelled]))["logits"][:2]
    probabilities = torch.softmax(logits, dim=1)
    dice = masked_dice_loss(probabilities, labels)
    expected = {
        "dice": dice,
        "dice-ce": 0.5 * (dice + masked_cross_entropy(logits, labels)),
        "sample-attention": sample_attention_dice_loss(probabilities, one_hot(labels, 3), 2.0),
    }
    logged = trainer.training_step(images, labels, unlabelled, step=0)
    assert logged["segmentation"] == pytest.approx(expected[supervised_loss].item(), rel=1e-5)
    assert logged["segmentation"] != pytest.approx(expected[other].item(), rel=1e-3)


@pytest.mark.parametrize(
    ("recipe", "known"), [("sassnet", "dice, dice-ce"), ("asdnet", "sample-attention, dice-ce")]
)
def test_an_unknown_supervised_loss_is_refused(recipe: str, known: str) -> None:
    config = config_from_dict({**tiny_config(recipe), "loss": {"supervised_loss": "focal"}})
    with pytest.raises(AsdsegError, match=f"supervised_loss 'focal' is not one of {known}"):
        RECIPE_CLASSES[recipe](config, torch.device("cpu"))


@pytest.mark.parametrize("target", ["paper", "correctness"])
def test_dan_confidence_network_learns_eq_4_by_default_or_correctness(target: str) -> None:
    """Eq. 4 rates the one-hot label map real and the prediction fake; "correctness" rates the
    prediction by whether each voxel's class is right. The step logs the chosen loss, computed by
    hand on the networks as they were before it."""
    loss = {} if target == "paper" else {"confidence_target": target}
    recipe = RECIPE_CLASSES["dan"](
        config_from_dict({**tiny_config("dan"), "loss": loss}), torch.device("cpu")
    )
    torch.manual_seed(0)
    images, labels = torch.randn(2, 1, 32, 32, 32), torch.zeros(2, 32, 32, 32, dtype=torch.long)
    labels[0, 8:20, 8:20, 8:20] = 1
    labels[1, 4:12, 4:12, 4:28] = 2
    confidence = recipe.networks["confidence"]
    with torch.no_grad():
        logits = recipe.segmenter(images)["logits"]
        probabilities = torch.softmax(logits, dim=1)
        label_map = one_hot(labels, 3).float()
        eq_4 = adversarial_bce(confidence(label_map, images), True) + adversarial_bce(
            confidence(probabilities, images), False
        )
        right = confidence_target_loss(confidence(probabilities, images), logits, labels)
    expected, other = (eq_4, right) if target == "paper" else (right, eq_4)
    logged = recipe.training_step(images, labels, None, step=0)["confidence"]
    assert logged == pytest.approx(expected.item(), rel=1e-4)
    assert logged != pytest.approx(other.item(), rel=1e-2)
    assert ("not the paper's" in recipe.card_notes()) == (target == "correctness")


def test_dan_confidence_network_follows_the_papers_adam_rate_and_decay() -> None:
    config = config_from_dict({**tiny_config("dan"), "learning_rate": 0.01, "lr_decay_factor": 0.1})
    recipe = RECIPE_CLASSES["dan"](config, torch.device("cpu"))
    rates = []
    for segmenter_rate in (0.01, 0.001):
        recipe.set_learning_rate(segmenter_rate)
        rates.append(recipe.optimizers["confidence"].param_groups[0]["lr"])
    assert rates == pytest.approx([5e-3, 1e-3])
    assert recipe.settings["adversarial_weight"] == 0.005
