"""Label definitions (value, name, colour), and label maps written with their sidecar files.

A label map's values are fixed by its model card, so a viewer needs the sidecar to name and
colour them: a JSON file for programs, a Slicer colour table (``.ctbl``) that Slicer loads as a
colour node, and an ITK-SNAP label description file. Slicer's own process writes label maps
too (exports, the annotator's labels), so this module needs neither torch nor MONAI.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.io.atomic_write import atomic_paths
from asdseg.io.image_io import check_file_name, image_suffix, save_image
from asdseg.io.json_files import read_json


@dataclass(frozen=True)
class Label:
    """One label value of a label map."""

    value: int
    name: str
    color: tuple[int, int, int]
    #: Standard codes (``category``, ``type``, optional ``region``), each a dict with
    #: ``scheme``, ``value`` and ``meaning`` (e.g. SCT 82471001 "Left atrium"), or None.
    terminology: dict | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, entry: dict) -> Label:
        return cls(
            int(entry["value"]),
            str(entry["name"]),
            tuple(int(c) for c in entry["color"]),
            entry.get("terminology"),
        )

    def to_dict(self) -> dict:
        entry = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology is not None:
            entry["terminology"] = self.terminology
        return entry


def sidecar_stem(label_path: str | Path) -> Path:
    """``out/seg.nii.gz`` -> ``out/seg`` (the stem the sidecar names are built from)."""
    label_path = Path(label_path)
    return label_path.with_name(label_path.name[: -len(image_suffix(label_path))])


def sidecar_paths(label_path: str | Path) -> dict[str, Path]:
    """Where the JSON, Slicer and ITK-SNAP sidecars of ``label_path`` go."""
    stem = sidecar_stem(label_path)
    return {
        "json": stem.with_name(stem.name + ".labels.json"),
        "slicer": stem.with_name(stem.name + ".ctbl"),
        "itksnap": stem.with_name(stem.name + ".itksnap.txt"),
    }


def labels_json(labels: Sequence[Label]) -> str:
    return json.dumps({"labels": [label.to_dict() for label in labels]}, indent=2) + "\n"


def slicer_color_table(labels: Sequence[Label]) -> str:
    """Slicer colour table: ``value name r g b a`` per line; names cannot contain spaces."""
    lines = ["# Slicer colour table written by asdseg", "0 background 0 0 0 0"]
    for label in labels:
        if label.value == 0:
            continue
        name = label.name.replace(" ", "_")
        lines.append(f"{label.value} {name} {label.color[0]} {label.color[1]} {label.color[2]} 255")
    return "\n".join(lines) + "\n"


def itksnap_label_description(labels: Sequence[Label]) -> str:
    """ITK-SNAP label description: ``IDX R G B A VIS MSH "LABEL"`` per line."""
    lines = ["# ITK-SnAP Label Description File written by asdseg", '0 0 0 0 0 0 0 "Clear Label"']
    for label in labels:
        if label.value == 0:
            continue
        red, green, blue = label.color
        lines.append(f'{label.value} {red} {green} {blue} 1 1 1 "{label.name}"')
    return "\n".join(lines) + "\n"


def sidecar_contents(labels: Sequence[Label]) -> dict[str, str]:
    """Text of each sidecar kind (keys as in :func:`sidecar_paths`)."""
    return {
        "json": labels_json(labels),
        "slicer": slicer_color_table(labels),
        "itksnap": itksnap_label_description(labels),
    }


def read_labels_json(path: str | Path) -> list[Label]:
    """Labels from a JSON sidecar written by :func:`write_label_sidecars`."""
    return [Label.from_dict(entry) for entry in read_json(path, "label_sidecar", "label sidecar")["labels"]]


def label_pixel_type(labels: Sequence[Label]) -> type:
    return np.uint8 if max(label.value for label in labels) <= 255 else np.uint16


def sdm_output_paths(path: str | Path, values: Sequence[int]) -> dict[int, Path]:
    """One SDM file per foreground label value: ``path`` itself for a single label, else
    ``<stem>-<value><suffix>``."""
    path = Path(path)
    if len(values) == 1:
        return {values[0]: path}
    stem = sidecar_stem(path)
    suffix = path.name[len(stem.name) :]
    return {value: stem.with_name(f"{stem.name}-{value}{suffix}") for value in values}


def write_label_map(
    label_map: sitk.Image,
    labels: Sequence[Label],
    label_path: str | Path,
    extra_images: dict[Path, sitk.Image] | None = None,
    extra_texts: dict[Path, str] | None = None,
) -> list[Path]:
    """Write a label map, its sidecars and any ``extra_images`` and ``extra_texts``, all or nothing.

    Every file is first written to a temporary file beside its target; only when all of them
    are complete are they renamed into place, so a failure leaves existing files untouched. A
    file name that is not safe on every system is refused before anything is written.
    """
    images = {Path(label_path): label_map, **(extra_images or {})}
    texts = {sidecar_paths(label_path)[kind]: text for kind, text in sidecar_contents(labels).items()}
    texts.update(extra_texts or {})
    for path in [*images, *texts]:
        check_file_name(path)
    with atomic_paths([*images, *texts]) as temporaries:
        for temporary, (path, image) in zip(temporaries, images.items()):
            save_image(image, temporary, path)
        for temporary, text in zip(temporaries[len(images) :], texts.values()):
            temporary.write_text(text, encoding="utf-8")
    return [*images, *texts]
