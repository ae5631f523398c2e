"""Bad input to ``segment``: the cases that test_bad_input.py runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from workspace_helpers import SEGMENT, SHEARED, Cases, folder, phantom_array, volume, write

SEGMENT_1 = ["segment", "--model", "tiny1", "--device", "cpu", "--progress", "json"]


def segment(w: Path, *extra: str) -> list[str]:
    """The tiny model on the workspace's image, into o.nii.gz, with ``extra`` options."""
    return [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(w / "o.nii.gz"), *extra]


def spaced(w: Path, spacing: float) -> sitk.Image:
    image = sitk.ReadImage(str(w / "img.nii.gz"))
    image.SetSpacing((spacing,) * 3)
    return image


def with_voxel(array: np.ndarray, value: float) -> np.ndarray:
    array = array.copy()
    array[3, 3, 3] = value
    return array


def link(path: Path, target: Path) -> str:
    path.symlink_to(target)
    return str(path)


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
