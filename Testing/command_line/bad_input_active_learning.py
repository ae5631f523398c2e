"""Bad input to ``suggest`` and ``finetune`` (active learning): the cases that test_bad_input.py runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from workspace_helpers import Cases, finetune, folder, write

from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.io.labels import Label
from asdseg.registry import user_models_dir

from conftest import attention_card

SUGGEST = ["suggest", "--model", "tiny-attention", "--device", "cpu", "--progress", "json"]


#: A voxel box holding the workspace's labelled slices (4 and 9) of its 24 x 22 x 20 phantom.
VOXEL_ROI = ("--roi", "2", "2", "0", "21", "19", "12", "--roi-space", "voxel")


def sparse_file(work: Path, name: str, size, value: int, reference: str | None = None) -> str:
    if reference is None:
        reference_image = sitk.Image(list(size), sitk.sitkUInt8)
    else:
        reference_image = sitk.ReadImage(str(work / reference))
    array = np.full(reference_image.GetSize(), value, dtype=np.int64)
    labels = [Label(0, "background", (0, 0, 0)), Label(value, "thing", (9, 9, 9))]
    write_sparse_labels(SparseLabels(array, {1}), reference_image, labels, work / name)
    return str(work / name)


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


def copy_model(folder_path: Path) -> str:
    shutil.copytree(user_models_dir() / "tiny-attention", folder_path)
    return str(folder_path)


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
