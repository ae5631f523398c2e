"""The left-atrium models shipped in the package: their cards, their weights and what they do
on LA 2018 validation cases they never trained on (skipped without ../shared)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from asdseg.demo.end_to_end import run_demo
from asdseg.errors import InputError
from asdseg.evaluation.evaluate_predictions import evaluate_label_maps
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.datasets import case_names
from asdseg.io.image_io import image_to_array, read_image
from asdseg.registry import find_model, load_network, sha256_of, shipped_models_dir
from asdseg.registry.model_card import ATTENTION_ARCHITECTURES, ModelCard

from conftest import LA2018, needs_la2018

#: Each shipped model, the extra output it exists for, and the Dice it must exceed on its
#: first validation case (its card's figure for that case less about 3 points: K32FD6LRSUSSXGS1YUOX
#: for the 16-label reproductions, 0.938, 0.940 and 0.901; Q0MEX9ZIKAGJORSPLQ3Y for la-sassnet-72,
#: 0.874).
SHIPPED = {
    "la-sassnet-72": ("sdm", 0.84),
    "la-sassnet": ("sdm", 0.91),
    "la-dan": ("confidence", 0.91),
    "la-attention": ("attention_logits", 0.87),
}
#: Labelled, unlabelled and validation cases of train.list: the papers' 16-label protocol, or
#: every labelled case but 8 for the default model.
SPLITS = {"la-sassnet-72": (72, 0, 8)}
PAPERS_SPLIT = (16, 44, 20)
METRICS = ("dice", "jaccard", "hd95_voxels", "asd_voxels", "hd95_mm", "asd_mm")


def shipped_card(name: str) -> ModelCard:
    return ModelCard.load(shipped_models_dir() / name / "card.json")  # validates against the schema


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_card_weights_and_checksum(name: str) -> None:
    card = shipped_card(name)
    assert find_model(name).directory == card.directory
    assert sha256_of(card.weights_path) == card.weights_sha256
    assert card.weights_path.stat().st_size < 21e6  # float16; the card says why when over 20 MB
    extra, _ = SHIPPED[name]
    if extra == "attention_logits":
        assert card.data["architecture"]["name"] in ATTENTION_ARCHITECTURES  # P-DSC, the paper's ranking
    else:
        assert card.data["outputs"][extra]
    network = load_network(card)
    with torch.no_grad():
        outputs = network(torch.randn(1, 1, *card.data["inference"]["patch_size"]))
    assert outputs[extra].shape[2:] == outputs["logits"].shape[2:]

    training = card.data["training"]
    split = training["split"]
    counts = SPLITS.get(name, PAPERS_SPLIT)
    assert tuple(len(split[part]) for part in ("labelled", "unlabelled", "validation")) == counts
    assert not set(split["validation"]) & (set(split["labelled"]) | set(split["unlabelled"]))
    assert (
        training["steps"] > 0 and training["hardware"] and "z-scored" in card.data["preprocessing"]["notes"]
    )
    validation = card.data["metrics"]["validation"]
    assert validation["cases"] == counts[2]
    for kind in ("raw", "largest_component"):
        assert set(METRICS) <= set(validation[kind])
    assert "research" in card.data["license"] and "validation: Dice" in card.summary()
    rows = list(csv.DictReader((card.directory / "validation.csv").open()))
    for kind in ("raw", "largest_component"):
        dice = [float(row["dice"]) for row in rows if row["post_processing"] == kind]
        assert {row["case"] for row in rows} == set(split["validation"]) and len(dice) == counts[2]
        assert np.mean(dice) == pytest.approx(validation[kind]["dice"], abs=1e-4)
    assert (card.directory / "calibration.png").stat().st_size > 10_000


@needs_la2018
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_segments_a_validation_case_as_its_card_says(name: str) -> None:
    card = shipped_card(name)
    split = card.data["training"]["split"]
    names = case_names(LA2018)
    labelled, _, validation = SPLITS.get(name, PAPERS_SPLIT)
    assert split["labelled"] == names[:labelled] and split["validation"] == names[-validation:]
    case = split["validation"][0]
    folder = LA2018 / "train" / case
    image, reference = read_image(folder / "image.nii.gz"), read_image(folder / "label.nii.gz")
    result = segment_image(image, card, load_network(card), SegmentationOptions(device="cpu"), source=case)
    dice = evaluate_label_maps(
        result.label_array(), image_to_array(reference, np.int64), image.GetSpacing(), [1]
    )[1].dice
    _, threshold = SHIPPED[name]
    assert dice > threshold
    recorded = next(
        row for row in csv.DictReader((card.directory / "validation.csv").open()) if row["case"] == case
    )
    assert dice == pytest.approx(float(recorded["dice"]), abs=2e-3)


@needs_la2018
def test_the_demo_segments_an_la_case_with_a_shipped_model(tmp_path) -> None:
    lines: list[str] = []
    metrics = run_demo(
        tmp_path, lines.append, SegmentationOptions(device="cpu", largest_component=True), "la-dan"
    )
    assert any("Model: la-dan. Input: LA 2018 validation case" in line for line in lines)
    assert metrics[1]["dice"] > 0.7
    for written in ("segmentation.nii.gz", "confidence.nii.gz", "metrics.csv", "overlay.png"):
        assert (tmp_path / written).is_file(), written


def test_the_demo_refuses_a_model_that_does_not_segment_the_atrium(tiny_model: ModelCard) -> None:
    with pytest.raises(InputError, match=r"segments 'phantom'.*Leave out --model"):
        run_demo(tiny_model.directory.parent / "out", print, None, str(tiny_model.directory))
