"""Segmenting many volumes in one call: which volumes, where each one's outputs go, and the
model loaded once for all of them (:class:`Segmenter`).

``asdseg segment -i`` takes several files or a folder; the model is loaded once and the volumes
are segmented one after the other, each written as soon as it is done. A volume's outputs are
named after it: ``<folder>/<case><suffix>``, the case being the file name without its image
suffix and without nnU-Net's channel tag (``_0000``), as nnU-Net names its predictions; where
files share one name in folders of their own (``<case>/image.nii.gz``), the folder's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asdseg.errors import InputError
from asdseg.io.image_io import SUPPORTED_SUFFIXES, image_suffix

if TYPE_CHECKING:
    import SimpleITK as sitk

    from asdseg.inference.segment import SegmentationOptions, SegmentationResult
    from asdseg.progress import ProgressCallback
    from asdseg.registry.model_card import ModelCard

#: nnU-Net's channel tag at the end of an image's name (``case_0000.nii.gz``).
CHANNEL_TAG = re.compile(r"_\d{4}$")


@dataclass(frozen=True)
class BatchCase:
    name: str
    image: Path

    def output(self, folder: str | Path) -> Path:
        """This case's file in ``folder``, in the input's format."""
        return Path(folder) / f"{self.name}{image_suffix(self.image)}"


def is_batch(inputs: Sequence[str | Path]) -> bool:
    """Several inputs, or one folder: outputs are folders, one file per volume."""
    return len(inputs) > 1 or Path(inputs[0]).is_dir()


def batch_cases(inputs: Sequence[str | Path]) -> list[BatchCase]:
    """The volumes to segment, in order: each file given, and each image file of a folder given
    (sorted by name, hidden files left out)."""
    paths: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(
                path
                for path in given.iterdir()
                if path.is_file()
                and not path.name.startswith(".")
                and image_suffix(path) in SUPPORTED_SUFFIXES
            )
            if not found:
                raise InputError(
                    f"-i {given}: the folder holds no image ({', '.join(SUPPORTED_SUFFIXES)}); give "
                    "a folder of volumes or the volume files."
                )
            paths += found
        else:
            paths.append(given)
    names = [CHANNEL_TAG.sub("", path.name[: -len(image_suffix(path))]) for path in paths]
    if len(set(names)) < len(names):
        # One file name per case folder (<case>/image.nii.gz, as in LA 2018): the folders name them.
        names = [path.parent.name for path in paths]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(
            f"-i: several inputs would be written as {', '.join(twice)}; give volumes whose names differ."
        )
    return [BatchCase(name, path) for name, path in zip(names, paths)]


def check_output_folder(path: str | Path, option: str) -> Path:
    """A folder for the outputs of several volumes: refused when it is a file, or named like an
    image (a single output file where a folder is needed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: with several inputs, {option} names a folder; this is a file.")
    if not path.exists() and image_suffix(path) in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{option} {path}: with several inputs, {option} names a folder (one file per volume goes "
            "into it), not an image file."
        )
    return path


class Segmenter:
    """A model loaded once, with the options of a run, for one volume or many."""

    def __init__(self, card: ModelCard, options: SegmentationOptions) -> None:
        from asdseg.inference.loaded_networks import inference_network

        self.card, self.network, self.options = card, inference_network(card), options

    def segment(
        self, image: sitk.Image, source: str | Path, progress: ProgressCallback | None = None
    ) -> SegmentationResult:
        """Segment ``image`` (read from ``source``)."""
        from asdseg.inference.segment import segment_image

        return segment_image(image, self.card, self.network, self.options, source=source, progress=progress)
