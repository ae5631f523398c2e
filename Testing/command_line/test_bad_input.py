"""Off the happy path: every command refuses bad input with exit 2 and a message naming the
file or option and the problem, without a traceback, and leaves the disk as it was.

The matrix runs ``asdseg`` in-process (an uncaught exception fails the test) against a
workspace of small volumes and an isolated model folder, and compares every file under both
before and after the run: nothing new, nothing changed, nothing removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.cli import main
from asdseg.errors import InputError
from asdseg.io.atomic_write import atomic_paths
from asdseg.io.image_io import read_image, same_geometry, write_image
from asdseg.io.labels import Label
from asdseg.networks import build_network
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.registry import (
    available_models,
    find_model,
    install_model,
    load_network,
    save_model,
    shipped_models,
    user_models_dir,
)
from asdseg.registry.model_card import ModelCard
from asdseg.training.config import DEFAULT_NETWORKS, RECIPES, config_from_dict
from asdseg.training.data import load_split
from asdseg.training.trainer import Trainer

from conftest import ROTATED, attention_card, tiny_card

SHEARED = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def workspace(tmp_path: Path, model_home: Path) -> Path:
    """Inputs (a phantom, its label, sparse labels) and three installed models: ``tiny`` (two
    foreground labels, SDM head), ``tiny1`` (one foreground label) and ``tiny-attention``."""
    torch.manual_seed(0)
    models = tmp_path / "models"
    single = tiny_card("tiny1")
    single["architecture"]["params"]["num_classes"] = 2
    single["labels"] = single["labels"][:2]
    for card in (tiny_card(), single, attention_card()):
        network = build_network(card["architecture"]["name"], card["architecture"]["params"])
        install_model(save_model(network, card, models / card["name"]).directory / "card.json")
    work = tmp_path / "work"
    work.mkdir()
    image, label = phantom_image(
        make_phantom((24, 22, 20), seed=3),
        spacing=(0.95, 1.05, 1.1),
        origin=(12.5, -40.0, 3.0),
        direction=ROTATED,
    )
    sitk.WriteImage(image, str(work / "img.nii.gz"))
    sitk.WriteImage(label, str(work / "lab.nii.gz"))
    labels = [Label.from_dict(entry) for entry in attention_card()["labels"]]
    sparse = SparseLabels(sitk.GetArrayFromImage(label).transpose(2, 1, 0).astype(np.int64), {4, 9})
    write_sparse_labels(sparse, label, labels, work / "sparse.nii.gz")
    return work


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (hidden ones too) with its content hash."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return state


def volume(work: Path, name: str, array: np.ndarray, like: str = "img.nii.gz", direction=None) -> str:
    """Write an (z, y, x) ``array`` with the geometry of ``like`` (or a given direction)."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(sitk.ReadImage(str(work / like)))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(work / name))
    return str(work / name)


def phantom_array(work: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(work / "img.nii.gz")))


def card_copy(work: Path, **changes) -> str:
    """A copy of the installed ``tiny`` model's card and weights with ``changes`` to the card."""
    source = user_models_dir() / "tiny"
    folder = work / "candidate"
    folder.mkdir(exist_ok=True)
    shutil.copy(source / "model.pt", folder / "model.pt")
    data = {**json.loads((source / "card.json").read_text()), **changes}
    (folder / "card.json").write_text(json.dumps(data))
    return str(folder / "card.json")


def shipped_version(name: str) -> str:
    return shipped_models()[name].data["version"]


def sparse_file(work: Path, name: str, size, value: int, reference: str | None = None) -> str:
    if reference is None:
        reference_image = sitk.Image(list(size), sitk.sitkUInt8)
    else:
        reference_image = sitk.ReadImage(str(work / reference))
    array = np.full(reference_image.GetSize(), value, dtype=np.int64)
    labels = [Label(0, "background", (0, 0, 0)), Label(value, "thing", (9, 9, 9))]
    write_sparse_labels(SparseLabels(array, {1}), reference_image, labels, work / name)
    return str(work / name)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def folder(path: Path) -> str:
    path.mkdir(parents=True)
    return str(path)


SEGMENT = ["segment", "--model", "tiny", "--device", "cpu", "--progress", "json"]
SEGMENT_1 = ["segment", "--model", "tiny1", "--device", "cpu", "--progress", "json"]
SUGGEST = ["suggest", "--model", "tiny-attention", "--device", "cpu", "--progress", "json"]


#: A voxel box holding the workspace's labelled slices (4 and 9) of its 24 x 22 x 20 phantom.
VOXEL_ROI = ("--roi", "2", "2", "0", "21", "19", "12", "--roi-space", "voxel")


def finetune(w: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        "tiny-attention",
        "--image",
        str(w / "img.nii.gz"),
        "--labels",
        str(w / "sparse.nii.gz"),
        "--device",
        "cpu",
        "--progress",
        "json",
        "--output-dir",
        str(w / "round"),
        *extra,
    ]


def segment(w: Path, *extra: str) -> list[str]:
    """The tiny model on the workspace's image, into o.nii.gz, with ``extra`` options."""
    return [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(w / "o.nii.gz"), *extra]


def train_config(w: Path, config: str, *extra: str) -> list[str]:
    """train with ``config`` (JSON text) written to c.json, into the run folder r."""
    return ["train", "--config", write(w / "c.json", config), "--output-dir", str(w / "r"), *extra]


def evaluate(w: Path, *extra: str) -> list[str]:
    return ["evaluate", "--pred", str(w / "lab.nii.gz"), "--ref", str(w / "lab.nii.gz"), *extra]


Cases = dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]]


#: segment: case -> (argv built in the workspace, fragments the error message must contain).
SEGMENT_CASES: Cases = {
    "truncated .nii": (
        lambda w: [*SEGMENT, "-i", write(w / "t.nii", "x"), "-o", str(w / "o.nii.gz")],
        ("t.nii", "not a readable image"),
    ),
    "complex voxels": (
        lambda w: [
            *SEGMENT,
            "-i",
            volume(w, "c.nii.gz", phantom_array(w).astype(np.complex64)),
            "-o",
            str(w / "o.nii.gz"),
        ],
        ("c.nii.gz", "complex voxels"),
    ),
    "100 mm spacing": (
        lambda w: (
            [*SEGMENT, "-i", str(w / "s.mha"), "-o", str(w / "o.nii.gz")]
            if sitk.WriteImage(spaced(w, 100.0), str(w / "s.mha")) is None
            else []
        ),
        ("s.mha", "grid", "spacing in the header"),
    ),
    "one voxel at 3e38": (
        lambda w: [
            *SEGMENT,
            "-i",
            volume(w, "b.nii.gz", with_voxel(phantom_array(w), 3e38)),
            "-o",
            str(w / "o.nii.gz"),
        ],
        ("b.nii.gz", "extreme values"),
    ),
    "input is a folder": (
        lambda w: [*SEGMENT, "-i", folder(w / "d.nii.gz"), "-o", str(w / "out")],
        ("d.nii.gz", "the folder holds no image"),
    ),
    "sheared direction to NIfTI": (
        lambda w: [
            *SEGMENT,
            "-i",
            volume(w, "sh.mha", phantom_array(w), direction=SHEARED),
            "-o",
            str(w / "o.nii.gz"),
        ],
        ("sh.mha", "not a rotation", "o.nii.gz", ".mha"),
    ),
    "sheared direction to NRRD SDM": (
        lambda w: [
            *SEGMENT,
            "-i",
            volume(w, "sh.mha", phantom_array(w), direction=SHEARED),
            "-o",
            str(w / "o.mha"),
            "--sdm",
            str(w / "s.nrrd"),
        ],
        ("sh.mha", "not a rotation", "s.nrrd"),
    ),
    "overlap 1.5": (
        lambda w: segment(w, "--overlap", "1.5"),
        ("--overlap", "[0, 1)"),
    ),
    "overlap nan": (
        lambda w: segment(w, "--overlap", "nan"),
        ("--overlap", "[0, 1)"),
    ),
    "batch size 0": (
        lambda w: segment(w, "--batch-size", "0"),
        ("--batch-size", "at least 1"),
    ),
    "batch size text": (
        lambda w: segment(w, "--batch-size", "two"),
        ("--batch-size", "not a number"),
    ),
    "unknown device": (
        lambda w: segment(w, "--device", "tpu"),
        ("tpu",),
    ),
    "-o is the input": (
        lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(w / "img.nii.gz")],
        ("-o", "img.nii.gz", "is the input"),
    ),
    "-o is the input through a symlink": (
        lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", link(w / "l.nii.gz", w / "img.nii.gz")],
        ("l.nii.gz", "is the input"),
    ),
    "--probabilities is the input": (
        lambda w: [
            *SEGMENT,
            "-i",
            str(w / "img.nii.gz"),
            "-o",
            str(w / "o.nii.gz"),
            "--probabilities",
            str(w / "." / "img.nii.gz"),
        ],
        ("--probabilities", "is the input"),
    ),
    "-o x --sdm x": (
        lambda w: [
            *SEGMENT_1,
            "-i",
            str(w / "img.nii.gz"),
            "-o",
            str(w / "x.nii.gz"),
            "--sdm",
            str(w / "x.nii.gz"),
        ],
        ("--sdm", "x.nii.gz", "-o already writes"),
    ),
    "-o x --probabilities x": (
        lambda w: [
            *SEGMENT,
            "-i",
            str(w / "img.nii.gz"),
            "-o",
            str(w / "x.nii.gz"),
            "--probabilities",
            str(w / "x.nii.gz"),
        ],
        ("--probabilities", "-o already writes"),
    ),
    "--sdm meets a per-label SDM name": (
        lambda w: [
            *SEGMENT,
            "-i",
            str(w / "img.nii.gz"),
            "-o",
            str(w / "s-1.nii.gz"),
            "--sdm",
            str(w / "s.nii.gz"),
        ],
        ("--sdm", "s-1.nii.gz", "-o already writes"),
    ),
    "-o is a folder": (
        lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", folder(w / "o.nii.gz")],
        ("-o", "o.nii.gz", "is a folder"),
    ),
    "a sidecar is a folder": (
        lambda w: segment(w) if folder(w / "o.ctbl") else [],
        ("o.ctbl", "is a folder"),
    ),
    "--sdm is a folder": (
        lambda w: [
            *SEGMENT_1,
            "-i",
            str(w / "img.nii.gz"),
            "-o",
            str(w / "o.nii.gz"),
            "--sdm",
            folder(w / "s.nii.gz"),
        ],
        ("--sdm", "s.nii.gz", "is a folder"),
    ),
    "-o inside a file": (
        lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(Path(write(w / "f", "x")) / "o.nii.gz")],
        ("-o", "is a file, not a folder"),
    ),
    "-o without an image suffix": (
        lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(w / "o.txt")],
        ("-o", "o.txt", "image suffix"),
    ),
    "--confidence with a model without one": (
        lambda w: [
            *SEGMENT,
            "-i",
            str(w / "img.nii.gz"),
            "-o",
            str(w / "o.nii.gz"),
            "--confidence",
            str(w / "c.nii.gz"),
        ],
        ("tiny", "no confidence network"),
    ),
}

#: evaluate: case -> (argv built in the workspace, fragments the error message must contain).
EVALUATE_CASES: Cases = {
    "evaluate --csv into an image file": (
        lambda w: evaluate(w, "--csv", str(w / "table.nii.gz")),
        ("--csv", "table.nii.gz", "give a .csv file name"),
    ),
    "evaluate: folders that hold different cases": (
        lambda w: [
            "evaluate",
            "--pred",
            folder_with(w, "p", "a", "b"),
            "--ref",
            folder_with(w, "r", "a", "c"),
        ],
        ("only among the predictions: b", "only among the references: c"),
    ),
    "evaluate --labels a,b": (lambda w: evaluate(w, "--labels", "a,b"), ("--labels", "a,b")),
    "evaluate --labels 0": (lambda w: evaluate(w, "--labels", "0"), ("--labels", "1 to 65535")),
    "evaluate a probability map": (
        lambda w: [
            "evaluate",
            "--pred",
            volume(w, "p.nii.gz", fraction_of(w)),
            "--ref",
            str(w / "lab.nii.gz"),
        ],
        ("p.nii.gz", "not label values"),
    ),
    "evaluate negative labels": (
        lambda w: [
            "evaluate",
            "--pred",
            volume(w, "n.nii.gz", -label_of(w).astype(np.int16)),
            "--ref",
            str(w / "lab.nii.gz"),
        ],
        ("n.nii.gz", "not label values"),
    ),
    "evaluate two empty maps without --labels": (
        lambda w: [
            "evaluate",
            "--pred",
            volume(w, "a.nii.gz", 0 * label_of(w)),
            "--ref",
            volume(w, "b.nii.gz", 0 * label_of(w)),
        ],
        ("no label", "--labels 1"),
    ),
    "evaluate --csv is a folder": (
        lambda w: evaluate(w, "--csv", folder(w / "m.csv")),
        ("--csv", "m.csv", "is a folder"),
    ),
    "evaluate --csv is the prediction": (
        lambda w: [
            "evaluate",
            "--pred",
            str(w / "lab.nii.gz"),
            "--ref",
            str(w / "img.nii.gz"),
            "--csv",
            str(w / "lab.nii.gz"),
        ],
        ("--csv", "is the input"),
    ),
    "evaluate grids differ": (
        lambda w: ["evaluate", "--pred", str(w / "lab.nii.gz"), "--ref", str(spaced_label(w))],
        ("do not share one voxel grid",),
    ),
    "evaluate counts differ": (
        lambda w: [
            "evaluate",
            "--pred",
            str(w / "lab.nii.gz"),
            str(w / "lab.nii.gz"),
            "--ref",
            str(w / "lab.nii.gz"),
        ],
        ("2 predictions but 1 references",),
    ),
}

#: models: case -> (argv built in the workspace, fragments the error message must contain).
MODELS_CASES: Cases = {
    "install: a card with NaN": (
        lambda w: ["models", "install", nan_card(w)],
        ("card.json", "inference.overlap", "finite"),
    ),
    "install: weights.file escapes the folder": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="escape",
                weights={
                    **json.loads((user_models_dir() / "tiny" / "card.json").read_text())["weights"],
                    "file": "../../x.pt",
                },
            ),
            "--weights",
            str(user_models_dir() / "tiny" / "model.pt"),
        ],
        ("weights.file", "../../x.pt", "plain file name"),
    ),
    "install: weights.file is card.json": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="self",
                weights={
                    **json.loads((user_models_dir() / "tiny" / "card.json").read_text())["weights"],
                    "file": "card.json",
                },
            ),
            "--weights",
            str(user_models_dir() / "tiny" / "model.pt"),
        ],
        ("weights.file", "card.json"),
    ),
    "install: unknown architecture": (
        lambda w: [
            "models",
            "install",
            card_copy(w, name="unknown-net", architecture={"name": "xnet", "params": {}}),
        ],
        ("unknown-net", "unknown network 'xnet'"),
    ),
    "install: parameters the network does not take": (
        lambda w: [
            "models",
            "install",
            card_copy(w, name="odd", architecture={"name": "vnet", "params": {"x": 1}}),
        ],
        ("odd", "cannot build network 'vnet'"),
    ),
    "install: weights of another architecture": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="other",
                architecture={"name": "vnet", "params": {"num_classes": 3, "base_filters": 4}},
            ),
        ],
        ("other", "cannot load weights"),
    ),
    "install: weights that do not unpickle": (
        lambda w: [
            "models",
            "install",
            card_copy(
                w,
                name="garbage",
                weights={"file": "model.pt", "sha256": hashlib.sha256(b"garbage").hexdigest()},
            ),
            "--weights",
            write(w / "g.pt", "garbage"),
        ],
        ("garbage", "cannot load weights"),
    ),
    "install: NaN weights": (
        lambda w: ["models", "install", nan_model(w)],
        ("nan-model", "NaN or infinite"),
    ),
    "install: card is a folder": (
        lambda w: ["models", "install", folder(w / "card.json")],
        ("card.json", "cannot read the model card"),
    ),
    "install: card is not JSON": (
        lambda w: ["models", "install", write(w / "card.json", "{")],
        ("card.json", "cannot read the model card"),
    ),
    "show: unknown model": (lambda w: ["models", "show", "nope"], ("unknown model 'nope'",)),
    "install: a shipped model's name": (
        lambda w: ["models", "install", card_copy(w, name="la-dan")],
        ("'la-dan' is the name of a shipped model", "--as-new-version"),
    ),
    "install: a new version numbered as the shipped one": (
        lambda w: [
            "models",
            "install",
            card_copy(w, name="la-dan", version=shipped_version("la-dan")),
            "--as-new-version",
        ],
        (f"'la-dan' v{shipped_version('la-dan')} is the shipped model's version",),
    ),
    "install: a model's name with --weights": (
        lambda w: ["models", "install", "la-dan", "--weights", str(w / "img.nii.gz")],
        ("--weights: only with a model card file", "la-dan"),
    ),
    "install: a model's name with --as-new-version": (
        lambda w: ["models", "install", "la-dan", "--as-new-version"],
        ("--as-new-version: only with a model card file",),
    ),
    "install: an unknown model's name": (
        lambda w: ["models", "install", "nope"],
        ("unknown model 'nope'",),
    ),
}

#: train: case -> (argv built in the workspace, fragments the error message must contain).
TRAIN_CASES: Cases = {
    "train: lr_decay_every 0": (
        lambda w: train_config(w, '{"lr_decay_every": 0}'),
        ("c.json", "lr_decay_every", "minimum"),
    ),
    "train: a negative seed": (
        lambda w: train_config(w, '{"seed": -1}'),
        ("c.json", "seed"),
    ),
    "train: an unknown normalisation": (
        lambda w: train_config(w, '{"data": {"normalization": "foo"}}'),
        ("c.json", "data.normalization", "zscore"),
    ),
    "train: a split whose labelled part is null": (
        lambda w: train_config(w, '{"data": {"split": {"labelled": null}}}'),
        ("c.json", "data.split"),
    ),
    "train: a split that is a string": (
        lambda w: train_config(w, '{"data": {"split": "abc"}}'),
        ("c.json", "data.split"),
    ),
    "train: a negative number of labelled cases": (
        lambda w: train_config(w, '{"data": {"labelled": -1}}'),
        ("c.json", "data.labelled"),
    ),
    "train: NaN deep in the config": (
        lambda w: train_config(w, '{"data": {"spacing": [1.0, NaN, 1.0]}}'),
        ("c.json", "data.spacing[1]", "finite"),
    ),
    "train: --resume where no run was": (
        lambda w: ["train", "--steps", "2", "--output-dir", str(w / "r"), "--resume"],
        ("--resume", "no checkpoint"),
    ),
    "train: an unknown --device": (
        lambda w: ["train", "--steps", "2", "--output-dir", str(w / "r"), "--device", "bogus"],
        ("unknown device 'bogus'",),
    ),
    "train: a label on another grid than its image": (
        lambda w: ["train", "--config", la_folder_config(w), "--steps", "2", "--output-dir", str(w / "r")],
        ("label.nii.gz", "its origin differs", "image.nii.gz"),
    ),
    "train: config value of the wrong type": (
        lambda w: train_config(w, '{"steps": "ten"}'),
        ("c.json", "'steps'", "must be int"),
    ),
    "train: bool for an int": (
        lambda w: train_config(w, '{"data": {"labelled": true}}'),
        ("c.json data", "'labelled'"),
    ),
    "train: patch size of two numbers": (
        lambda w: train_config(w, '{"patch_size": [64, 64]}'),
        ("'patch_size'", "tuple[int, int, int]"),
    ),
    "train: config is a list": (
        lambda w: train_config(w, "[1]"),
        ("c.json", "JSON object"),
    ),
    "train: learning rate NaN": (
        lambda w: train_config(w, '{"learning_rate": NaN}'),
        ("learning_rate", "finite"),
    ),
    "train: a network the recipe cannot train": (
        lambda w: train_config(
            w, '{"network": {"name": "vnet", "params": {"num_classes": 2}}}', "--recipe", "attention-unet"
        ),
        ("attention-unet", "cannot train network 'vnet'"),
    ),
    "train: sassnet without an SDM head": (
        lambda w: train_config(
            w, '{"network": {"name": "vnet", "params": {"num_classes": 2}}}', "--recipe", "sassnet"
        ),
        ("sdm_head",),
    ),
    "train: labels and classes disagree": (
        lambda w: train_config(w, '{"network": {"name": "vnet", "params": {"num_classes": 3}}}'),
        ("num_classes is 3",),
    ),
    "train: a label without a name": (
        lambda w: train_config(w, '{"labels": [{"value": 0}, {"value": 1}]}'),
        ("labels", "'name' is a required property"),
    ),
    "train: --steps 0": (
        lambda w: ["train", "--steps", "0", "--output-dir", str(w / "r")],
        ("--steps", "at least 1"),
    ),
    "train: --output-dir is a file": (
        lambda w: ["train", "--steps", "1", "--output-dir", write(w / "r", "x")],
        ("--output-dir", "is a file, not a folder"),
    ),
    "train: a patch size that is not a multiple of 16": (
        lambda w: train_config(w, '{"patch_size": [24, 24, 24]}'),
        ("patch_size [24, 24, 24] must be three multiples of 16",),
    ),
    "train: --init-from a model that is not installed": (
        lambda w: ["train", "--init-from", "nosuch", "--steps", "1", "--output-dir", str(w / "r")],
        ("'nosuch'",),
    ),
}

#: release: case -> (argv built in the workspace, fragments the error message must contain).
RELEASE_CASES: Cases = {
    "release: --as-new-version outside the model folder": (
        lambda w: [
            "release",
            str(w),
            "--name",
            "la-sassnet",
            "--as-new-version",
            "--output-dir",
            str(w / "m"),
        ],
        ("--as-new-version", "shadows no shipped model"),
    ),
    "release: a shipped model's name": (
        lambda w: ["release", str(w), "--name", "la-sassnet"],
        ("'la-sassnet' is the name of a shipped model", "--as-new-version"),
    ),
    "release: a new version numbered as the shipped one": (
        lambda w: [
            "release",
            str(w),
            "--name",
            "la-sassnet",
            "--version",
            shipped_version("la-sassnet"),
            "--as-new-version",
        ],
        ("is the shipped model's version",),
    ),
    "release: a run stopped before its first checkpoint": (
        lambda w: ["release", folder(w / "stopped"), "--name", "stopped"],
        ("no checkpoint there", "train the run to its last step before releasing it"),
    ),
}

#: suggest: case -> (argv built in the workspace, fragments the error message must contain).
SUGGEST_CASES: Cases = {
    "suggest: --output is a folder": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "--output", folder(w / "s.json")],
        ("--output", "s.json", "is a folder"),
    ),
    "suggest: --output is the image": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "--output", str(w / "img.nii.gz")],
        ("--output", "is the input"),
    ),
    "suggest: --segmentation is the image": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "--segmentation", str(w / "img.nii.gz")],
        ("--segmentation", "is the input"),
    ),
    "suggest: --segmentation without an image suffix": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "--segmentation", str(w / "prediction.txt")],
        ("--segmentation", "prediction.txt", "use an image suffix"),
    ),
    "suggest: --segmentation's sidecar is --output": (
        lambda w: [
            *SUGGEST,
            *["-i", str(w / "img.nii.gz"), "--output", str(w / "p.labels.json")],
            *["--segmentation", str(w / "p.nii.gz")],
        ],
        ("--segmentation", "--output already writes", "p.labels.json"),
    ),
    "suggest: labels of another shape": (
        lambda w: [
            *SUGGEST,
            "-i",
            str(w / "img.nii.gz"),
            "--labels",
            sparse_file(w, "s.nii.gz", (9, 9, 9), 1),
        ],
        ("--labels", "s.nii.gz", "its size (9, 9, 9) differs from the image"),
    ),
    "suggest: labels with another spacing": (
        lambda w: [
            *SUGGEST,
            "-i",
            str(w / "img.nii.gz"),
            "--labels",
            moved_labels(w, spacing=(2.0, 2.0, 2.0)),
        ],
        ("--labels", "moved.nii.gz", "its spacing (2.0, 2.0, 2.0) differs from the image"),
    ),
    "suggest: --output that is not .json": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "--output", str(w / "x.nii.gz")],
        ("--output", "x.nii.gz", "give a .json file name"),
    ),
    "suggest: -k 0": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "-k", "0"],
        ("--budget", "at least 1"),
    ),
    "suggest: --min-area -1": (
        lambda w: [*SUGGEST, "-i", str(w / "img.nii.gz"), "--min-area", "-1"],
        ("--min-area", "at least 0"),
    ),
    "suggest: a second opinion the model lacks": (
        lambda w: [
            *["suggest", "--model", "tiny", "-i", str(w / "img.nii.gz")],
            *["--second-opinion", "attention"],
        ],
        ("tiny", "cannot give a 'attention' second opinion", "sdm, mirroring"),
    ),
}

#: finetune: case -> (argv built in the workspace, fragments the error message must contain).
FINETUNE_CASES: Cases = {
    "finetune: an unknown --device": (
        lambda w: [*finetune(w)[:7], "--device", "bogus", *finetune(w)[9:]],
        ("unknown device 'bogus'",),
    ),
    "finetune: labels with another origin": (
        lambda w: [*finetune(w)[:5], "--labels", moved_labels(w, origin=(0.0, 0.0, 0.0)), *finetune(w)[7:]],
        ("--labels", "moved.nii.gz", "its origin (0.0, 0.0, 0.0) differs from the image"),
    ),
    "finetune: --learning-rate nan": (lambda w: finetune(w, "--learning-rate", "nan"), ("--learning-rate",)),
    "finetune: --learning-rate -1": (lambda w: finetune(w, "--learning-rate", "-1"), ("--learning-rate",)),
    "finetune: --batch-size 0": (lambda w: finetune(w, "--batch-size", "0"), ("--batch-size", "at least 1")),
    "finetune: --steps 0": (lambda w: finetune(w, "--steps", "0"), ("--steps", "at least 1")),
    "finetune: invalid --name": (lambda w: finetune(w, "--name", "My Model"), ("--name", "'My Model'")),
    "finetune: two --roi boxes for one image": (
        lambda w: finetune(w, *VOXEL_ROI, "--roi", "0", "0", "0", "9", "9", "9", "--roi-space", "voxel"),
        ("2 --roi boxes for 1 images", "one per --image"),
    ),
    "finetune: an --roi outside the image": (
        lambda w: finetune(w, "--roi", "50", "50", "50", "60", "60", "60", "--roi-space", "voxel"),
        ("img.nii.gz", "holds no voxel"),
    ),
    "finetune: an --roi without a labelled slice": (
        lambda w: finetune(w, "--roi", "0", "0", "10", "23", "21", "19", "--roi-space", "voxel"),
        ("no labelled slice lies inside the ROI", "slices 10 to 19"),
    ),
    "finetune: --output-dir is a file": (
        lambda w: finetune(w) if write(w / "round", "x") else [],
        ("--output-dir", "is a file, not a folder"),
    ),
    "finetune: a label value the model lacks": (
        lambda w: [
            "finetune",
            "--model",
            "tiny-attention",
            "--image",
            str(w / "img.nii.gz"),
            "--labels",
            sparse_file(w, "s.nii.gz", None, 7, "img.nii.gz"),
            "--output-dir",
            str(w / "round"),
        ],
        ("label value(s) [7]", "tiny-attention"),
    ),
    "finetune: labels of another shape": (
        lambda w: [
            "finetune",
            "--model",
            "tiny-attention",
            "--image",
            str(w / "img.nii.gz"),
            "--labels",
            sparse_file(w, "s.nii.gz", (9, 9, 9), 1),
            "--output-dir",
            str(w / "round"),
        ],
        ("its size (9, 9, 9) differs from the image",),
    ),
    "finetune: new model over the one it starts from": (
        lambda w: [
            "finetune",
            "--model",
            copy_model(w / "r1" / "model"),
            "--image",
            str(w / "img.nii.gz"),
            "--labels",
            str(w / "sparse.nii.gz"),
            "--output-dir",
            str(w / "r1"),
        ],
        ("--output-dir", "model being fine-tuned"),
    ),
    "finetune: --resume without a checkpoint": (
        lambda w: finetune(w, "--resume", "--steps", "1"),
        ("no checkpoint there", "start without --resume"),
    ),
}

#: demo: case -> (argv built in the workspace, fragments the error message must contain).
DEMO_CASES: Cases = {
    "demo: --output-dir is a file": (
        lambda w: ["demo", "--output-dir", write(w / "d", "x")],
        ("--output-dir", "is a file, not a folder"),
    ),
    "demo: an output is a folder": (
        lambda w: ["demo", "--output-dir", str(Path(folder(w / "d" / "metrics.csv")).parent)],
        ("metrics.csv", "is a folder"),
    ),
    "demo: a model of another task": (
        lambda w: ["demo", "--output-dir", str(w / "d"), "--model", "tiny"],
        ("tiny", "left-atrium"),
    ),
}

#: One table per command.
BAD_INPUT: dict[str, Cases] = {
    "segment": SEGMENT_CASES,
    "evaluate": EVALUATE_CASES,
    "models": MODELS_CASES,
    "train": TRAIN_CASES,
    "release": RELEASE_CASES,
    "suggest": SUGGEST_CASES,
    "finetune": FINETUNE_CASES,
    "demo": DEMO_CASES,
}


def spaced(w: Path, spacing: float) -> sitk.Image:
    image = sitk.ReadImage(str(w / "img.nii.gz"))
    image.SetSpacing((spacing,) * 3)
    return image


def moved_labels(w: Path, **geometry: tuple[float, float, float]) -> str:
    """The workspace's sparse labels with another spacing or origin, as ``moved.nii.gz``."""
    reference = sitk.ReadImage(str(w / "img.nii.gz"))
    if "spacing" in geometry:
        reference.SetSpacing(geometry["spacing"])
    if "origin" in geometry:
        reference.SetOrigin(geometry["origin"])
    labels = [Label.from_dict(entry) for entry in attention_card()["labels"]]
    sparse = SparseLabels(np.ones(reference.GetSize(), dtype=np.int64), {4, 9})
    write_sparse_labels(sparse, reference, labels, w / "moved.nii.gz")
    return str(w / "moved.nii.gz")


def spaced_label(w: Path) -> Path:
    label = sitk.ReadImage(str(w / "lab.nii.gz"))
    label.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(label, str(w / "coarse.nii.gz"))
    return w / "coarse.nii.gz"


def with_voxel(array: np.ndarray, value: float) -> np.ndarray:
    array = array.copy()
    array[3, 3, 3] = value
    return array


def label_of(w: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(w / "lab.nii.gz")))


def fraction_of(w: Path) -> np.ndarray:
    """The label map scaled into [0, 0.8]: what truncation to integers would turn into zeros."""
    return label_of(w).astype(np.float32) * 0.4


def link(path: Path, target: Path) -> str:
    path.symlink_to(target)
    return str(path)


def copy_model(folder_path: Path) -> str:
    shutil.copytree(user_models_dir() / "tiny-attention", folder_path)
    return str(folder_path)


def nan_card(w: Path) -> str:
    """A copy of the tiny model whose card's window overlap is NaN (Python's json writes it)."""
    card = json.loads(Path(card_copy(w, name="nan-card")).read_text())
    card["inference"]["overlap"] = float("nan")
    return write(w / "candidate" / "card.json", json.dumps(card))


def folder_with(w: Path, name: str, *cases: str) -> str:
    """A folder of copies of the workspace's label map, one per case name."""
    (w / name).mkdir()
    for case in cases:
        shutil.copy(w / "lab.nii.gz", w / name / f"{case}.nii.gz")
    return str(w / name)


def la_folder_config(w: Path) -> str:
    """A config on an LA 2018-style folder (train.list, train/<case>/{image,label}.nii.gz) whose
    one case's label lies 5 mm off its image."""
    case = Path(folder(w / "la" / "train" / "case1"))
    shutil.copy(w / "img.nii.gz", case / "image.nii.gz")
    label = sitk.ReadImage(str(w / "lab.nii.gz"))
    label.SetOrigin(tuple(value + 5.0 for value in label.GetOrigin()))
    sitk.WriteImage(label, str(case / "label.nii.gz"))
    write(w / "la" / "train.list", "case1\n")
    config = {"data": {"root": str(w / "la"), "labelled": 1, "validation": 0}, "patch_size": [16, 16, 16]}
    return write(w / "c.json", json.dumps(config))


def nan_model(w: Path) -> str:
    card = {**tiny_card("nan-model")}
    network = build_network("vnet", card["architecture"]["params"])
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    return str(save_model(network, card, w / "nan-model").directory / "card.json")


@pytest.mark.parametrize(
    ("command", "case"), [(command, case) for command, table in BAD_INPUT.items() for case in sorted(table)]
)
def test_bad_input_is_refused_cleanly(
    command: str, case: str, workspace: Path, model_home: Path, capsys: pytest.CaptureFixture
) -> None:
    make_argv, fragments = BAD_INPUT[command][case]
    argv = make_argv(workspace)
    before = snapshot(workspace, model_home)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses options this way
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2, error
    assert "Traceback" not in error
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    assert snapshot(workspace, model_home) == before, "a refused run must leave every file as it was"


def test_a_broken_user_card_is_skipped_with_a_warning(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    broken = user_models_dir() / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{")
    assert main(["models", "list"]) == 0
    captured = capsys.readouterr()
    assert "tiny-attention" in captured.out and "la-dan" in captured.out
    assert "skipping a broken model" in captured.err and str(broken / "card.json") in captured.err
    assert "broken" not in available_models(warn=lambda message: None)


# Writing: all outputs of a run or none, with the user's umask ----------------------------------


def test_a_failed_rename_puts_back_every_output_already_replaced(tmp_path: Path) -> None:
    targets = [tmp_path / "seg.nii.gz", tmp_path / "seg.labels.json", tmp_path / "sdm.nii.gz"]
    targets[0].write_text("old label map")
    with pytest.raises(IsADirectoryError), atomic_paths(targets) as temporaries:
        for temporary in temporaries:
            temporary.write_text("new")
        targets[2].mkdir()  # appears while the run writes: the third rename must fail
    assert targets[0].read_text() == "old label map"
    assert not targets[1].exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sdm.nii.gz", "seg.nii.gz"]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "prob.nii.gz"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_paths([target]) as (temporary,):
        temporary.write_bytes(b"\0" * 1000)
        raise KeyboardInterrupt
    assert [path.name for path in tmp_path.iterdir()] == ["prob.nii.gz"]
    assert target.read_text() == "old"


def test_sigterm_while_writing_removes_the_temporary_files(tmp_path: Path) -> None:
    """The CLI turns SIGTERM into an exception, so the half-written file goes with it."""
    script = f"""
import os, signal, sys, time
from pathlib import Path
import asdseg.cli.models as models_command
from asdseg.cli import main
from asdseg.io.atomic_write import atomic_path

def stopped_while_writing(args):
    with atomic_path(Path({str(tmp_path)!r}) / "seg.nii.gz") as temporary:
        temporary.write_bytes(b"x" * 100000)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    return 0

models_command.command_models = stopped_while_writing
sys.exit(main(["models", "list"]))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 143, completed.stderr
    assert "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_take_the_users_umask(workspace: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        out = workspace / "out"
        code = main(
            [
                *SEGMENT,
                "-i",
                str(workspace / "img.nii.gz"),
                "-o",
                str(out / "seg.nii.gz"),
                "--sdm",
                str(out / "sdm.nii.gz"),
            ]
        )
        assert code == 0
        modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
        assert set(modes.values()) == {0o666 & ~umask}, modes
        card = install_model(user_models_dir() / "tiny" / "card.json")
        assert card.weights_path.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(previous)


def test_a_full_disk_is_an_error_naming_the_file_and_changes_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = workspace / "out"
    out.mkdir()
    (out / "seg.nii.gz").write_text("previous run")
    real_write = sitk.WriteImage

    def write_until_full(image, path, *args, **kwargs):
        if "prob" in Path(path).name:
            Path(path).write_bytes(b"\0" * 4096)
            raise RuntimeError("ImageIO: could not write: No space left on device")
        real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", write_until_full)
    before = snapshot(workspace)
    code = main(
        [
            *SEGMENT,
            "-i",
            str(workspace / "img.nii.gz"),
            "-o",
            str(out / "seg.nii.gz"),
            "--probabilities",
            str(out / "prob.nii.gz"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert str(out / "prob.nii.gz") in error and "No space left on device" in error
    assert snapshot(workspace) == before


def limited_file_size(limit: int) -> None:
    """In the child: files may grow to ``limit`` bytes; a longer write fails with EFBIG (the
    signal that would kill the process is ignored), as on a full disk."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


#: Commands whose outputs outgrow a 1 KB file-size limit: an uncompressed label map (ITK), a fine-tuning
#: round's files (its config, torch.save's checkpoint), a model install (the weights).
FULL_DISK_COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "segment": lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(w / "seg.nii")],
    "finetune": lambda w: finetune(w, "--steps", "2"),
    "models install": lambda w: ["models", "install", card_copy(w, name="copy")],
}


@pytest.mark.parametrize("command", sorted(FULL_DISK_COMMANDS))
def test_a_file_size_limit_is_an_error_naming_the_file_and_leaves_nothing_half_written(
    command: str, workspace: Path, model_home: Path
) -> None:
    argv = FULL_DISK_COMMANDS[command](workspace)
    before = snapshot(workspace, model_home)
    completed = subprocess.run(
        [sys.executable, "-m", "asdseg", *argv],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: limited_file_size(1024),
        env={**os.environ, "ASDSEG_HOME": str(model_home), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    reasons = ("File too large", "could not be written", "cut short while being written")
    assert any(reason in completed.stderr for reason in reasons), completed.stderr
    assert str(workspace) in completed.stderr or str(model_home) in completed.stderr, completed.stderr
    after = snapshot(workspace, model_home)
    half_written = {
        path for path, digest in after.items() if before.get(path) != digest and digest != "folder"
    }
    assert not half_written, completed.stderr


def test_a_read_only_folder_is_refused_before_any_work(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    read_only = workspace / "mnt"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    code = main([*SEGMENT, "-i", str(workspace / "img.nii.gz"), "-o", str(read_only / "sub" / "o.nii.gz")])
    error = capsys.readouterr().err
    assert code == 2 and "read-only file system or no permission" in error and str(read_only) in error
    assert list(read_only.iterdir()) == []


# Silent wrong results ------------------------------------------------------------------------


def test_intensity_scale_does_not_change_the_segmentation(workspace: Path) -> None:
    """z-scoring is scale-free: a volume scaled by 1e17 (whose float32 sum of squares overflows)
    must be segmented exactly like the original, not as an empty map."""
    scaled = volume(workspace, "scaled.nii.gz", phantom_array(workspace) * np.float32(1e17))
    for source, output in ((str(workspace / "img.nii.gz"), "a.nii.gz"), (scaled, "b.nii.gz")):
        assert main([*SEGMENT, "-i", source, "-o", str(workspace / output)]) == 0
    first, second = (
        sitk.GetArrayFromImage(read_image(workspace / name)) for name in ("a.nii.gz", "b.nii.gz")
    )
    assert np.count_nonzero(first) > 0
    np.testing.assert_array_equal(first, second)


def test_a_model_that_outputs_nan_is_an_error_not_an_empty_map(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import asdseg.inference.segment

    real_predict = asdseg.inference.segment.predict_volume

    def predict_nan(*args, **kwargs):
        outputs = real_predict(*args, **kwargs)
        outputs["probabilities"][:] = np.nan
        return outputs

    monkeypatch.setattr(asdseg.inference.segment, "predict_volume", predict_nan)
    code = main([*SEGMENT, "-i", str(workspace / "img.nii.gz"), "-o", str(workspace / "o.nii.gz")])
    assert code == 2 and "produced NaN or infinite values" in capsys.readouterr().err
    assert not (workspace / "o.nii.gz").exists()


def test_a_diverging_fine_tuning_writes_no_model(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(finetune(workspace, "--steps", "3", "--batch-size", "1", "--learning-rate", "1e30"))
    assert code == 2 and "training diverged" in capsys.readouterr().err
    assert not (workspace / "round" / "model").exists()


def test_two_empty_maps_score_dice_1_when_the_label_is_named(workspace: Path, tmp_path: Path) -> None:
    empty = volume(workspace, "empty.nii.gz", 0 * label_of(workspace))
    assert (
        main(["evaluate", "--pred", empty, "--ref", empty, "--labels", "1", "--csv", str(tmp_path / "m.csv")])
        == 0
    )
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1:4] == ["1", "1.0", "1.0"]


def test_a_label_absent_from_one_case_counts_as_agreement(workspace: Path, tmp_path: Path) -> None:
    label = label_of(workspace)
    only_ellipsoid = volume(workspace, "e.nii.gz", np.where(label == 2, 0, label).astype(np.uint8))
    full = str(workspace / "lab.nii.gz")
    args = ["evaluate", "--pred", full, only_ellipsoid, "--ref", full, only_ellipsoid]
    assert main([*args, "--csv", str(tmp_path / "m.csv")]) == 0
    rows = [line.split(",")[:3] for line in (tmp_path / "m.csv").read_text().splitlines()[1:]]
    assert [row[1:] for row in rows] == [["1", "1.0"], ["2", "1.0"], ["1", "1.0"], ["2", "1.0"]]


# Fine-tuning ---------------------------------------------------------------------------------


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


def test_a_stopped_round_continues_with_resume(workspace: Path) -> None:
    assert main(finetune(workspace, "--steps", "2", "--batch-size", "1")) == 0
    (workspace / "round" / "model" / "card.json").unlink()
    assert main(finetune(workspace, "--steps", "2", "--batch-size", "1")) == 2  # already holds a checkpoint
    assert main(finetune(workspace, "--steps", "2", "--batch-size", "1", "--resume")) == 0
    assert (workspace / "round" / "model" / "card.json").is_file()


# Training with the default config ----------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_default_config_trains_on_the_phantoms(recipe: str, tmp_path: Path) -> None:
    """Every setting left at its default (network, labels, classes) except the sizes that make
    a step fast: the phantoms it trains on must fit the network it builds."""
    config = config_from_dict(
        {
            "recipe": recipe,
            "steps": 1,
            "patch_size": [16, 16, 16],
            "batch_size": 4,
            "labelled_per_batch": 2,
            "data": {"labelled": 1, "validation": 1, "cases": 3, "phantom_shape": [20, 20, 20]},
        }
    )
    assert config.network == DEFAULT_NETWORKS[recipe]
    split = load_split(config.data, config.network["params"]["num_classes"])
    assert max(int(case.label.max()) for case in split.labelled) == 1
    result = Trainer(config, tmp_path, device="cpu").run(show_progress=False)
    assert result.model is not None and np.isfinite(result.history[-1]["loss"])


# Geometry ------------------------------------------------------------------------------------


def random_geometry(seed: int) -> tuple[tuple, tuple, tuple]:
    """Random spacing, origin and orthonormal direction (rotations and reflections)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    direction = q * np.sign(np.diag(r))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, 3))
    origin = tuple(float(o) for o in rng.uniform(-300, 300, 3))
    return spacing, origin, tuple(float(d) for d in direction.ravel())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_geometry_round_trips_for_random_orthonormal_grids(tmp_path: Path, seed: int, suffix: str) -> None:
    spacing, origin, direction = random_geometry(seed)
    image = sitk.GetImageFromArray(np.random.default_rng(seed).random((5, 6, 7), dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    write_image(image, tmp_path / f"v{suffix}")
    assert same_geometry(read_image(tmp_path / f"v{suffix}"), image, tolerance=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_segment_outputs_keep_a_random_input_geometry(workspace: Path, seed: int) -> None:
    spacing, origin, direction = random_geometry(seed)
    image = sitk.ReadImage(str(workspace / "img.nii.gz"))
    image.SetSpacing(tuple(0.8 + 0.4 * s / 3 for s in spacing))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(workspace / "r.nii.gz"))
    out = workspace / "out"
    code = main(
        [
            *SEGMENT,
            "-i",
            str(workspace / "r.nii.gz"),
            "-o",
            str(out / "seg.nii.gz"),
            "--sdm",
            str(out / "sdm.nrrd"),
        ]
    )
    assert code == 0
    source = read_image(workspace / "r.nii.gz")
    for name in ("seg.nii.gz", "sdm-1.nrrd", "sdm-2.nrrd"):
        assert same_geometry(read_image(out / name), source, tolerance=1e-4), name


def test_a_sheared_volume_keeps_its_direction_in_metaimage(workspace: Path) -> None:
    sheared = volume(workspace, "sh.mha", phantom_array(workspace), direction=SHEARED)
    assert main([*SEGMENT, "-i", sheared, "-o", str(workspace / "o.mha")]) == 0
    assert np.allclose(sitk.ReadImage(str(workspace / "o.mha")).GetDirection(), SHEARED)


def test_an_emulated_precision_gets_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from asdseg import devices

    cpu = torch.device("cpu")
    assert "fp16 on a CPU is emulated" in devices.precision_warning(cpu, "fp16")
    assert devices.precision_warning(cpu, "fp32") is None
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert "bf16 is emulated" in devices.precision_warning(cpu, "bf16")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.precision_warning(cpu, "bf16") is None


def test_an_image_with_one_value_everywhere_is_named_before_training() -> None:
    from asdseg.training.data import Case, CaseSplit, constant_images

    varied = Case("varied", np.arange(8, dtype=np.float32).reshape(2, 2, 2), None)
    blank = Case("blank", np.zeros((2, 2, 2), dtype=np.float32), None)
    assert constant_images(CaseSplit(labelled=[varied], unlabelled=[blank], validation=[])) == ["blank"]


KILL_AT_RENAME = """
import os, signal, sys
import asdseg.cli as cli

real_replace, calls = os.replace, [0]

def replace_or_die(source, target):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target)

os.replace = replace_or_die
sys.exit(cli.main({argv!r}))
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_kill_9_while_replacing_a_model_leaves_the_old_or_the_new_one(
    kill_at: int, workspace: Path, model_home: Path
) -> None:
    """``models install`` over an installed model, killed (SIGKILL, nothing can clean up) at
    its first, second or third rename: the folder holds a whole model, its card naming weights
    of the checksum it records, the old model's or the new one's."""
    installed = user_models_dir() / "tiny"
    old = ModelCard.load(installed / "card.json").weights_sha256
    torch.manual_seed(1)
    candidate = save_model(
        build_network("vnet", tiny_card()["architecture"]["params"]), tiny_card(), workspace / "new"
    )
    script = KILL_AT_RENAME.format(
        kill_at=kill_at, argv=["models", "install", str(candidate.directory / "card.json")]
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ASDSEG_HOME": str(model_home)},
    )
    assert completed.returncode in (0, -9), completed.stderr
    card = ModelCard.load(installed / "card.json")
    load_network(card)  # the weights it names are whole and match its checksum
    new = hashlib.sha256(card.weights_path.read_bytes()).hexdigest()
    assert card.weights_sha256 in (old, new)
    if completed.returncode == 0:
        assert card.weights_sha256 != old


def test_a_folder_named_like_a_model_does_not_replace_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare name means the installed or shipped model even where the current folder holds a
    model folder of that name; ``./name`` means the folder."""
    monkeypatch.chdir(workspace)
    shutil.copytree(user_models_dir() / "tiny", workspace / "la-dan")
    assert find_model("la-dan").directory == shipped_models()["la-dan"].directory
    assert find_model("./la-dan").directory.resolve() == (workspace / "la-dan").resolve()


def test_fine_tuning_on_a_constant_image_warns(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    zeros = volume(workspace, "zeros.nii.gz", np.zeros_like(phantom_array(workspace)))
    argv = finetune(workspace, "--steps", "1")
    argv[argv.index("--image") + 1] = zeros
    assert main(argv) == 0
    assert "zeros.nii.gz: every voxel has the same value" in capsys.readouterr().err
