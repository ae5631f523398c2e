"""Fine-tuning off the happy path: label values mapped to the model's classes, a diverging round
writes no model, a stopped round continues with --resume, a constant image gets a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from workspace_helpers import finetune, phantom_array, volume

from asdseg.cli import main
from asdseg.errors import InputError
from asdseg.registry.model_card import ModelCard


def test_fine_tuning_maps_label_values_to_the_models_classes(attention_model: ModelCard) -> None:
    from asdseg.active.finetune import class_indices

    card = ModelCard(
        {
            **attention_model.data,
            "labels": [
                {"value": 0, "name": "background", "color": [0, 0, 0]},
                {"value": 5, "name": "a", "color": [1, 1, 1]},
                {"value": 9, "name": "b", "color": [2, 2, 2]},
            ],
        },
        attention_model.directory,
    )
    target = np.array([[[-1, 0, 5, 9]]])
    np.testing.assert_array_equal(class_indices(target, card, "x"), [[[-1, 0, 1, 2]]])
    with pytest.raises(InputError, match=r"label value\(s\) \[3\]"):
        class_indices(np.array([[[3]]]), card, "x")


def test_a_diverging_fine_tuning_writes_no_model(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(finetune(workspace, "--steps", "3", "--batch-size", "1", "--learning-rate", "1e30"))
    assert code == 2 and "training diverged" in capsys.readouterr().err
    assert not (workspace / "round" / "model").exists()


def test_a_stopped_round_continues_with_resume(workspace: Path) -> None:
    assert main(finetune(workspace, "--steps", "2", "--batch-size", "1")) == 0
    (workspace / "round" / "model" / "card.json").unlink()
    assert main(finetune(workspace, "--steps", "2", "--batch-size", "1")) == 2  # already holds a checkpoint
    assert main(finetune(workspace, "--steps", "2", "--batch-size", "1", "--resume")) == 0
    assert (workspace / "round" / "model" / "card.json").is_file()


def test_fine_tuning_on_a_constant_image_warns(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    zeros = volume(workspace, "zeros.nii.gz", np.zeros_like(phantom_array(workspace)))
    argv = finetune(workspace, "--steps", "1")
    argv[argv.index("--image") + 1] = zeros
    assert main(argv) == 0
    assert "zeros.nii.gz: every voxel has the same value" in capsys.readouterr().err
