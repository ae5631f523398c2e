"""Bad input to ``train`` and ``demo``: the cases that test_bad_input.py runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import SimpleITK as sitk
from workspace_helpers import Cases, folder, write


def train_config(w: Path, config: str, *extra: str) -> list[str]:
    """train with ``config`` (JSON text) written to c.json, into the run folder r."""
    return ["train", "--config", write(w / "c.json", config), "--output-dir", str(w / "r"), *extra]


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
