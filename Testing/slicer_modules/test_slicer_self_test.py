"""The ASDSeg self-test's set-up (ASDSegLib.self_test): the phantom model is trained in a child
process into a model folder of the test's own, and the user's model folder is left as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from asdseg.background import engine_environment
from asdseg.demo import phantom_model
from asdseg.registry import available_models, find_model, user_models_dir

from ASDSegLib.self_test import install_demo_model, isolated_model_home


def folder_contents(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_the_self_test_trains_in_a_child_and_leaves_the_users_models_alone(
    model_home: Path, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_model.directory, user_models_dir() / "users-own")
    before = folder_contents(model_home)

    def no_training_here(*args, **kwargs):
        raise AssertionError("the phantom model was trained in the test's own process")

    monkeypatch.setattr(phantom_model, "train_demo_model", no_training_here)
    with isolated_model_home(tmp_path, engine_environment()) as (folder, environment):
        assert folder.parent == tmp_path
        card = install_demo_model(None, environment)
        assert card.directory == folder / "asdseg-home" / "models" / phantom_model.NAME
        assert find_model(phantom_model.NAME).directory == card.directory
        assert tiny_model.name not in available_models()
    assert os.environ["ASDSEG_HOME"] == str(model_home)
    assert not folder.exists()
    assert folder_contents(model_home) == before
    assert phantom_model.NAME not in available_models()
    assert tiny_model.name in available_models()
