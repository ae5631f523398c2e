"""Helpers for tests that run ``asdseg`` commands in the ``workspace`` fixture (Testing/conftest.py):
files written into it, the state of its files, and the command lines the tests share.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.registry import user_models_dir

SHEARED = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


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


def label_of(w: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(w / "lab.nii.gz")))


def card_copy(work: Path, **changes) -> str:
    """A copy of the installed ``tiny`` model's card and weights with ``changes`` to the card."""
    source = user_models_dir() / "tiny"
    folder = work / "candidate"
    folder.mkdir(exist_ok=True)
    shutil.copy(source / "model.pt", folder / "model.pt")
    data = {**json.loads((source / "card.json").read_text()), **changes}
    (folder / "card.json").write_text(json.dumps(data))
    return str(folder / "card.json")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def folder(path: Path) -> str:
    path.mkdir(parents=True)
    return str(path)


SEGMENT = ["segment", "--model", "tiny", "--device", "cpu", "--progress", "json"]


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


Cases = dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]]
