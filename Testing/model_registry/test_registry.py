"""Model cards, checksums and installing models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from asdseg.errors import ModelError
from asdseg.inference.sliding_window import card_window_settings
from asdseg.registry import (
    available_models,
    find_model,
    install_model,
    load_network,
    sha256_of,
    shipped_models,
    user_models_dir,
)
from asdseg.registry.model_card import ModelCard, validate_card


def test_card_schema_rejects_missing_and_malformed_fields(tiny_model: ModelCard) -> None:
    card = dict(tiny_model.data)
    del card["license"]
    with pytest.raises(ModelError, match=r"'license' is a required property"):
        validate_card(card, "card.json")
    bad_patch = {**tiny_model.data, "inference": {**tiny_model.data["inference"], "patch_size": [20, 16, 16]}}
    with pytest.raises(ModelError, match=r"patch_size \[20, 16, 16\] must be a multiple of \[16, 16, 16\]"):
        validate_card(bad_patch, "card.json")
    no_background = {**tiny_model.data, "labels": tiny_model.data["labels"][1:]}
    with pytest.raises(ModelError, match=r"include 0"):
        validate_card(no_background, "card.json")


def test_card_sets_test_time_mirroring_and_the_user_can_turn_it_off(tiny_model: ModelCard) -> None:
    assert card_window_settings(tiny_model).mirror_axes == ()
    inference = {**tiny_model.data["inference"], "mirror_axes": [0, 1]}
    mirrored = ModelCard({**tiny_model.data, "inference": inference}, tiny_model.directory)
    validate_card(mirrored.data, "card.json")
    assert card_window_settings(mirrored).mirror_axes == (0, 1)
    assert card_window_settings(mirrored, mirror_axes=()).mirror_axes == ()
    repeated = {**tiny_model.data, "inference": {**tiny_model.data["inference"], "mirror_axes": [0, 0]}}
    with pytest.raises(ModelError, match=r"at inference.mirror_axes, "):
        validate_card(repeated, "card.json")


def test_weights_that_do_not_match_the_card_are_refused(tiny_model: ModelCard) -> None:
    with open(tiny_model.weights_path, "ab") as stream:
        stream.write(b"tampered")
    with pytest.raises(ModelError, match=r"do not match their model card"):
        load_network(tiny_model)


def test_truncated_weights_with_a_matching_card_are_refused(tiny_model: ModelCard) -> None:
    data = tiny_model.weights_path.read_bytes()
    tiny_model.weights_path.write_bytes(data[: len(data) // 2])
    card = {**tiny_model.data, "weights": {"file": "model.pt", "sha256": sha256_of(tiny_model.weights_path)}}
    with pytest.raises(ModelError, match=r"cannot load weights"):
        load_network(ModelCard(card, tiny_model.directory))


def test_unknown_model_names_the_available_ones(tiny_model: ModelCard) -> None:
    install_model(tiny_model.directory / "card.json")
    with pytest.raises(
        ModelError,
        match=r"unknown model 'heart'.*available: la-attention, la-dan, la-sassnet, la-sassnet-72, tiny\)",
    ):
        find_model("heart")


def test_install_copies_card_and_weights_and_loads(tiny_model: ModelCard, model_home: Path) -> None:
    installed = install_model(tiny_model.directory / "card.json")
    assert installed.directory == model_home / "models" / "tiny"
    assert "tiny" in available_models()
    assert load_network(find_model("tiny")) is not None


def test_install_refuses_a_wrong_checksum_and_leaves_nothing(
    tiny_model: ModelCard, model_home: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.pt"
    other.write_bytes(b"not these weights")
    with pytest.raises(ModelError, match=r"do not match"):
        install_model(tiny_model.directory / "card.json", other)
    assert not (model_home / "models" / "tiny").exists()


def test_card_summary_shows_labels_and_training_data(tiny_model: ModelCard) -> None:
    summary = tiny_model.summary()
    assert "1=ellipsoid, 2=sphere" in summary and "synthetic phantoms" in summary


def test_the_default_model_ships_and_is_what_segment_and_the_demo_run() -> None:
    from asdseg.cli import build_parser
    from asdseg.demo.end_to_end import choose_la_model
    from asdseg.registry import DEFAULT_MODEL, default_model, shipped_models

    card = default_model()
    assert card is not None and card.name == DEFAULT_MODEL and DEFAULT_MODEL in shipped_models()
    assert card.data["task"] == "left-atrium"
    assert build_parser().parse_args(["segment", "-i", "in.nrrd", "-o", "out.nrrd"]).model == DEFAULT_MODEL
    assert choose_la_model(None).name == DEFAULT_MODEL


def test_a_folder_named_like_a_model_does_not_replace_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare name means the installed or shipped model even where the current folder holds a
    model folder of that name; ``./name`` means the folder."""
    monkeypatch.chdir(workspace)
    shutil.copytree(user_models_dir() / "tiny", workspace / "la-dan")
    assert find_model("la-dan").directory == shipped_models()["la-dan"].directory
    assert find_model("./la-dan").directory.resolve() == (workspace / "la-dan").resolve()
