"""Releasing a finished run: the exported network rebuilt from the checkpoint, float16 weights,
the data split by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asdseg.demo.phantom_model import CARD as DEMO_CARD
from asdseg.errors import InputError
from asdseg.registry import load_network, save_model
from asdseg.training.config import DataConfig, config_from_dict
from asdseg.training.data import split_names
from asdseg.training.release import as_shipped, load_finished_run
from asdseg.training.trainer import Trainer


def dan_config(steps: int):
    return config_from_dict(
        {
            "recipe": "dan",
            "data": {"labelled": 2, "validation": 1, "cases": 4, "phantom_shape": [32, 32, 32]},
            "network": {"name": "enhanced-unet", "params": {"num_classes": 3, "base_filters": 4}},
            "labels": DEMO_CARD["labels"],
            "patch_size": [32, 32, 32],
            "batch_size": 2,
            "labelled_per_batch": 2,
            "steps": steps,
            "validate_every": steps,
            "checkpoint_every": 1,
            "loss": {"confidence_filters": 4},
        }
    )


def test_a_released_run_ships_segmenter_and_confidence_network_in_float16(tmp_path: Path) -> None:
    trained = Trainer(dan_config(steps=2), tmp_path / "run", device="cpu").run(show_progress=False).model
    run = load_finished_run(tmp_path / "run")
    assert run.architecture["name"] == "enhanced-unet-confidence" and run.steps == 2
    assert run.training_minutes == trained.data["training"]["training_minutes"]  # the card's figure

    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        rebuilt, saved_by_trainer = run.network(image), load_network(trained)(image)
        shipped = as_shipped(run.network)(image)
    for name in ("logits", "confidence"):  # the checkpoint gives back the trainer's own model
        torch.testing.assert_close(rebuilt[name], saved_by_trainer[name])
    assert (shipped["confidence"] - rebuilt["confidence"]).abs().max() < 1e-2
    assert not torch.equal(shipped["logits"], rebuilt["logits"])  # rounding happened

    card = save_model(
        run.network, {**trained.data, "name": "released"}, tmp_path / "released", half_precision=True
    )
    assert card.weights_path.stat().st_size < 0.6 * trained.weights_path.stat().st_size
    with torch.no_grad():
        loaded = load_network(card)(image)
    torch.testing.assert_close(loaded["logits"], shipped["logits"], rtol=0, atol=0)


def test_an_unfinished_run_is_refused(tmp_path: Path) -> None:
    Trainer(dan_config(steps=3), tmp_path, device="cpu").run(until=1, show_progress=False)
    with pytest.raises(InputError, match=r"stopped at step 1 of 3.*--resume"):
        load_finished_run(tmp_path)


def test_split_names_follow_train_list(tmp_path: Path) -> None:
    names = [f"case{index:02d}" for index in range(10)]
    (tmp_path / "train.list").write_text("\n".join(names) + "\n")
    split = split_names(DataConfig(root=str(tmp_path), labelled=3, validation=2))
    assert split == {"labelled": names[:3], "unlabelled": names[3:8], "validation": names[8:]}
    assert split_names(DataConfig(labelled=2, validation=1, cases=5))["unlabelled"] == [2, 3]
    with pytest.raises(InputError, match="10 cases cannot give 9 labelled and 2 validation"):
        split_names(DataConfig(root=str(tmp_path), labelled=9, validation=2))
