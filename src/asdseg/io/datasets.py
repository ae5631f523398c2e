"""Training sets in the layouts segmentation data is distributed or converted in.

Two layouts, both a folder with a ``dataset.json``:

- **nnU-Net v2 raw**: ``imagesTr/<case>_<channel:04d><file_ending>`` and
  ``labelsTr/<case><file_ending>``; ``dataset.json`` holds ``channel_names`` (or the older
  ``modality``), ``labels`` as name -> value, ``numTraining`` and ``file_ending``.
- **Medical Segmentation Decathlon**: ``dataset.json`` lists ``training`` as
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``, ``labels`` as value ->
  name and ``modality`` as index -> name.

Images without labels, for the semi-supervised recipes, go in ``imagesUnlabelled/`` beside
``imagesTr/``, named as ``imagesTr``'s images are (nnU-Net: ``<case>_0000<file_ending>``). They
are cases without a label: only the unlabelled part of a split can take them. A missing label
in ``labelsTr`` stays an error, so that a forgotten file is not silently trained on as
unlabelled.

:func:`read_dataset` pairs images and labels and reads the labels and the channel;
:func:`check_dataset` reads every case's header and label voxels. Between them, everything a
training run would trip over later (a missing label, a label on another grid, a label value the
dataset does not declare, a second channel) is refused before any training, naming the case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.io.anatomy import named_label
from asdseg.io.image_io import grid_difference, read_image
from asdseg.io.json_files import read_json
from asdseg.io.labels import Label

DATASET_FILE = "dataset.json"
#: The folder of images without labels, beside imagesTr.
UNLABELLED_FOLDER = "imagesUnlabelled"
NNUNET, DECATHLON = "nnU-Net v2", "Medical Segmentation Decathlon"
#: The descriptive fields of a dataset.json copied into the model card, under one spelling each:
#: nnU-Net and the Decathlon write "licence"; the Decathlon's own files spell release "relase".
INFO_FIELDS = {
    "name": ("name",),
    "description": ("description",),
    "reference": ("reference",),
    "licence": ("licence", "license"),
    "release": ("release", "relase"),
}
#: How far image and label geometry may differ (mm, and direction cosines): NIfTI stores them as
#: float32, so two writes of the same grid can differ in the last digits.
#: How many offending names an error message lists.
SHOWN = 5


@dataclass(frozen=True)
class DatasetCase:
    name: str
    image: Path
    label: Path | None  #: None for an image of imagesUnlabelled


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: str
    cases: tuple[DatasetCase, ...]
    labels: tuple[Label, ...]
    #: The name of the one image channel (e.g. "T2").
    channel: str
    #: ``name``, ``description``, ``reference``, ``licence``, ``release`` where dataset.json has them.
    info: dict[str, str]

    @property
    def names(self) -> list[str]:
        return [case.name for case in self.cases]

    @property
    def labelled_names(self) -> list[str]:
        """The cases with a label, in name order."""
        return [case.name for case in self.cases if case.label is not None]

    @property
    def unlabelled_names(self) -> list[str]:
        """The images of imagesUnlabelled, in name order."""
        return [case.name for case in self.cases if case.label is None]

    def case(self, name: str) -> DatasetCase:
        for case in self.cases:
            if case.name == name:
                return case
        raise InputError(f"{self.root}: no case {name!r}; its cases are {_listed(self.names)}.")


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def is_dataset_folder(root: str | Path) -> bool:
    return (Path(root) / DATASET_FILE).is_file()


def read_dataset(root: str | Path) -> Dataset:
    """The dataset in ``root``: its cases paired image to label, its labels and its channel."""
    root = Path(root)
    description = _read_description(root)
    where = root / DATASET_FILE
    if "file_ending" in description:
        layout, labels, cases = NNUNET, _nnunet_labels(description, where), _nnunet_cases(root, description)
    elif isinstance(description.get("training"), list):
        layout, labels, cases = (
            DECATHLON,
            _decathlon_labels(description, where),
            _decathlon_cases(root, description),
        )
    else:
        raise InputError(
            f"{where}: neither the nnU-Net v2 layout (it has no file_ending) nor the Decathlon's (it has "
            "no training list); see docs/own-data.md for both."
        )
    expected = description.get("numTraining")
    if expected is not None and expected != len(cases):
        raise InputError(
            f"{where}: numTraining is {expected} but the folder holds {len(cases)} image/label pairs; "
            "add the missing cases or correct numTraining."
        )
    if not cases:
        raise InputError(f"{root}: no training cases found.")
    cases += _unlabelled_cases(root, description, {case.name for case in cases})
    info = {
        key: str(description[spelling])
        for key, spellings in INFO_FIELDS.items()
        for spelling in spellings
        if spelling in description
    }
    return Dataset(root, layout, tuple(cases), tuple(labels), _one_channel(description, where), info)


def case_names(root: Path) -> list[str]:
    """The cases of a data folder: a dataset folder's, or those train.list names (the LA layout)."""
    if is_dataset_folder(root):
        return read_dataset(root).names
    listing = root / "train.list"
    if not listing.is_file():
        raise InputError(f"{root}: no train.list; the data folder needs train.list and train/<case>/.")
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()]


def case_paths(root: Path, name: str) -> tuple[Path, Path | None]:
    """The image and label files of a case of the LA layout or of a dataset folder (no label
    for an image of a dataset's imagesUnlabelled)."""
    if is_dataset_folder(root):
        case = read_dataset(root).case(name)
        return case.image, case.label
    return root / "train" / name / "image.nii.gz", root / "train" / name / "label.nii.gz"


def nnunet_description(root: str | Path) -> tuple[dict[str, Any], list[Label]]:
    """The dataset.json of an nnU-Net v2 folder and its labels, for adding cases to it. The
    Decathlon layout is refused: a new case would also have to join its ``training`` list."""
    root = Path(root)
    description = _read_description(root)
    if "file_ending" not in description:
        raise InputError(
            f"{root / DATASET_FILE}: cases are added to the nnU-Net v2 layout only (it needs file_ending, "
            'e.g. ".nii.gz"); see docs/own-data.md.'
        )
    return description, _nnunet_labels(description, root / DATASET_FILE)


def _read_description(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise InputError(f"--dataset {root}: not a folder.")
    path = root / DATASET_FILE
    if not path.is_file():
        raise InputError(
            f"{root}: no {DATASET_FILE}. A dataset folder holds dataset.json, imagesTr/ and labelsTr/ "
            "(the nnU-Net v2 or the Medical Segmentation Decathlon layout)."
        )
    return read_json(path, "dataset", "dataset.json")


def _one_channel(description: dict[str, Any], where: Path) -> str:
    """The name of the dataset's single image channel; several are refused, since every recipe
    takes one-channel images."""
    channels = description.get("channel_names", description.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(
            f'{where}: channel_names (or modality) must name the image channels, e.g. {{"0": "T2"}}.'
        )
    if len(channels) > 1:
        raise InputError(
            f"{where}: {len(channels)} image channels ({', '.join(map(str, channels.values()))}), but the "
            "recipes take one. Keep one channel (e.g. T2): move the others out of imagesTr and list only "
            "it in dataset.json."
        )
    return str(next(iter(channels.values())))


def _checked_labels(pairs: list[tuple[Any, Any]], where: Path) -> list[Label]:
    """Labels from (value, name) pairs: whole values 0, 1, ..., n - 1, each a class of the network."""
    labels = []
    for value, name in pairs:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(
                f"{where}: label {name!r} has value {value!r}; give each label one whole value (region-based "
                "labels, lists of values, are not supported)."
            )
        labels.append(named_label(value, str(name)))
    values = sorted(label.value for label in labels)
    if values != list(range(len(values))) or len(values) < 2:
        raise InputError(
            f"{where}: label values {values}; they must be 0 (background), 1, 2, ... without gaps, "
            "at least one organ."
        )
    return sorted(labels, key=lambda label: label.value)


def _nnunet_labels(description: dict[str, Any], where: Path) -> list[Label]:
    labels = description.get("labels")
    if not isinstance(labels, dict):
        raise InputError(f'{where}: labels must map names to values, e.g. {{"background": 0, "bladder": 1}}.')
    if "ignore" in labels:
        raise InputError(f"{where}: the 'ignore' label is not supported; relabel those voxels.")
    return _checked_labels([(value, name) for name, value in labels.items()], where)


def _decathlon_labels(description: dict[str, Any], where: Path) -> list[Label]:
    labels = description.get("labels")
    if not isinstance(labels, dict):
        raise InputError(
            f'{where}: labels must map values to names, e.g. {{"0": "background", "1": "bladder"}}.'
        )
    return _checked_labels(list(labels.items()), where)


def _visible_files(folder: Path, ending: str) -> list[Path]:
    """Files of ``folder`` ending in ``ending``, without hidden ones (macOS's ``._`` copies,
    which the Decathlon's archives carry)."""
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.iterdir() if path.name.endswith(ending) and not path.name.startswith(".")
    )


def _unpaired(root: Path, images_only: list[str], labels_only: list[str]) -> None:
    problems = []
    if images_only:
        problems.append(f"images without a label in labelsTr: {_listed(images_only)}")
    if labels_only:
        problems.append(f"labels without an image in imagesTr: {_listed(labels_only)}")
    if problems:
        raise InputError(
            f"{root}: images and labels do not pair ({'; '.join(problems)}). Every case needs both; "
            f"move unpaired files out of the folder (images without labels, for the semi-supervised "
            f"recipes, go in {UNLABELLED_FOLDER}/)."
        )


def _nnunet_cases(root: Path, description: dict[str, Any]) -> list[DatasetCase]:
    ending = str(description["file_ending"])
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending) + "$")
    channels: dict[str, set[int]] = {}
    for path in _visible_files(root / "imagesTr", ending):
        match = pattern.match(path.name)
        if match is None:
            raise InputError(
                f"{path}: an nnU-Net image is named <case>_<channel>{ending}, e.g. case_001_0000{ending}."
            )
        channels.setdefault(match.group(1), set()).add(int(match.group(2)))
    several = sorted(name for name, found in channels.items() if found != {0})
    if several:
        raise InputError(
            f"{root / 'imagesTr'}: cases {_listed(several)} have channels other than _0000; the recipes take "
            "one channel. Keep only <case>_0000 images."
        )
    labels = {path.name[: -len(ending)]: path for path in _visible_files(root / "labelsTr", ending)}
    _unpaired(root, sorted(set(channels) - set(labels)), sorted(set(labels) - set(channels)))
    return [
        DatasetCase(name, root / "imagesTr" / f"{name}_0000{ending}", labels[name]) for name in sorted(labels)
    ]


def _unlabelled_cases(root: Path, description: dict[str, Any], labelled: set[str]) -> list[DatasetCase]:
    """The images of imagesUnlabelled, named as the layout names its training images."""
    nnunet = "file_ending" in description
    ending = str(description["file_ending"]) if nnunet else ""
    cases = []
    for path in _visible_files(root / UNLABELLED_FOLDER, ending):
        if nnunet:
            if not path.name.endswith(f"_0000{ending}"):
                raise InputError(
                    f"{path}: an nnU-Net image is named <case>_0000{ending}; only channel 0000 is taken."
                )
            name = path.name[: -len(f"_0000{ending}")]
        else:
            name = _case_name(path.name)
        cases.append(DatasetCase(name, path, None))
    clashes = sorted({case.name for case in cases} & labelled)
    if clashes:
        raise InputError(
            f"{root / UNLABELLED_FOLDER}: cases {_listed(clashes)} also have a label in the training set; "
            "a case is either labelled or unlabelled. Remove or rename one of them."
        )
    return cases


def _case_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _decathlon_cases(root: Path, description: dict[str, Any]) -> list[DatasetCase]:
    cases, images_only, labels_only = [], [], []
    for entry in description["training"]:
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise InputError(
                f"{root / DATASET_FILE}: each training entry needs image and label, not {entry!r}."
            )
        case = DatasetCase(_case_name(entry["image"]), root / entry["image"], root / entry["label"])
        if not case.image.is_file():
            labels_only.append(case.name)
        elif not case.label.is_file():
            images_only.append(case.name)
        cases.append(case)
    _unpaired(root, images_only, labels_only)
    return cases


def _geometry(path: Path) -> dict[str, tuple]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable image ({str(error).strip().splitlines()[-1]}).") from error
    return {
        "size": reader.GetSize(),
        "spacing": reader.GetSpacing(),
        "origin": reader.GetOrigin(),
        "direction": reader.GetDirection(),
        "components": (reader.GetNumberOfComponents(),),
    }


def _check_geometry(case: DatasetCase) -> tuple[float, ...]:
    """Refuse an image with several channels or a label on another grid; return the spacing."""
    image = _geometry(case.image)
    if len(image["size"]) < 3:
        raise InputError(f"{case.image}: a {len(image['size'])}D image; the recipes train on 3D volumes.")
    channels = image["components"][0] * (image["size"][3] if len(image["size"]) == 4 else 1)
    if channels > 1:
        raise InputError(
            f"{case.image}: {channels} channels in one file (size {image['size']}), but the recipes take "
            "one; keep one channel (e.g. T2) per image."
        )
    if case.label is None:
        return image["spacing"][:3]
    label = _geometry(case.label)
    key = grid_difference(label, image)
    if key is not None:
        raise InputError(
            f"case {case.name}: the label's {key} {label[key]} differs from the image's {image[key]}; "
            "the label must be on the image's voxel grid. Resample it onto the image (nearest "
            "neighbour) or export both again from the same volume."
        )
    return image["spacing"][:3]


def _check_label_values(case: DatasetCase, labels: tuple[Label, ...]) -> None:
    voxels = sitk.GetArrayFromImage(read_image(case.label))
    values = np.unique(voxels)
    if not np.array_equal(values, np.round(values)):
        raise InputError(f"{case.label}: holds fractional values; a label map holds whole label values.")
    declared = {label.value for label in labels}
    undeclared = sorted(int(value) for value in values if int(value) not in declared)
    if undeclared:
        names = ", ".join(f"{label.value}={label.name}" for label in labels)
        raise InputError(
            f"{case.label}: label values {undeclared} are not in dataset.json's labels ({names}); add them "
            "to dataset.json or relabel the case."
        )


def check_dataset(dataset: Dataset) -> tuple[float, float, float]:
    """Read every case whole before training starts: each file complete and readable, one
    channel, the label on the image's grid, only the label values dataset.json declares.
    Returns the median spacing (mm, per axis) of the labelled cases, which the cases are trained
    at, as nnU-Net does."""
    spacings = []
    for case in dataset.cases:
        spacing = _check_geometry(case)
        read_image(case.image)
        if case.label is not None:
            spacings.append(spacing)
            _check_label_values(case, dataset.labels)
    return tuple(round(float(value), 4) for value in np.median(spacings, axis=0))
