"""Model cards: the JSON that says what a weights file is, validated against a schema."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asdseg.errors import ModelError
from asdseg.io.json_files import check_json, read_json, schema
from asdseg.io.labels import Label
from asdseg.strides import patch_divisor

#: The architectures that predict twice (final features and attention maps), as P-DSC needs.
ATTENTION_ARCHITECTURES = ("attention-unet",)
#: The card's own file name, which weights must not overwrite.
CARD_FILE = "card.json"


def card_schema() -> dict[str, Any]:
    return schema("model_card")


def validate_card(card: dict[str, Any], source: str | Path) -> None:
    """Raise :class:`ModelError` naming the offending field when ``card`` breaks the schema."""
    check_json(card, "model_card", source, "model card", ModelError)
    check_card_beyond_schema(card, source)


def check_card_beyond_schema(card: dict[str, Any], source: str | Path) -> None:
    """What the schema cannot say: the weights beside the card, a patch the network can take,
    label values unique with 0."""
    weights_file = card["weights"]["file"]
    if Path(weights_file).name != weights_file or weights_file in (".", "..", CARD_FILE):
        raise ModelError(
            f"{source}: weights.file {weights_file!r} must be a plain file name beside card.json "
            "(no folders, no '..')."
        )
    patch, divisor = card["inference"]["patch_size"], patch_divisor(card["architecture"].get("params", {}))
    if any(size % factor for size, factor in zip(patch, divisor)):
        raise ModelError(
            f"{source}: inference.patch_size {patch} must be a multiple of {list(divisor)} on each axis "
            "(what the network's levels shrink it by)."
        )
    values = [entry["value"] for entry in card["labels"]]
    if len(set(values)) != len(values) or 0 not in values:
        raise ModelError(f"{source}: label values must be unique and include 0 (background).")


def check_model_name(name: str, option: str = "--name") -> None:
    """Refuse a model name the card schema would refuse, before a run that ends by saving it."""
    pattern = card_schema()["properties"]["name"]["pattern"]
    if not re.fullmatch(pattern, name):
        raise ModelError(
            f"{option} {name!r}: a model name uses lower-case letters, digits and '-', starting with "
            "a letter or digit (e.g. la-round-2)."
        )


@dataclass(frozen=True)
class ModelCard:
    """A validated model card and the folder its weights live in."""

    data: dict[str, Any]
    directory: Path

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        data = read_json(path, "model_card", "model card", ModelError)
        check_card_beyond_schema(data, path)
        return cls(data, path.parent)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def labels(self) -> list[Label]:
        return [Label.from_dict(entry) for entry in self.data["labels"]]

    @property
    def foreground_labels(self) -> list[Label]:
        return [label for label in self.labels if label.value != 0]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.data["preprocessing"]["spacing"])

    @property
    def weights_path(self) -> Path:
        return self.directory / self.data["weights"]["file"]

    @property
    def weights_sha256(self) -> str:
        return self.data["weights"]["sha256"]

    @property
    def weights_url(self) -> str | None:
        """Where the weights can be downloaded from, for a card whose weights are not bundled."""
        return self.data["weights"].get("url")

    @property
    def has_sdm(self) -> bool:
        return bool(self.data["outputs"]["sdm"])

    @property
    def has_confidence(self) -> bool:
        return bool(self.data["outputs"]["confidence"])

    def _field_of_view_lines(self) -> list[str]:
        field_of_view = self.data["preprocessing"].get("field_of_view_mm")
        if field_of_view is None:
            return []
        size = " x ".join(f"{value:.0f}" for value in field_of_view)
        return [f"  trained on volumes of about {size} mm: set a region of interest on larger scans"]

    def summary(self) -> str:
        """A few lines for a person choosing a model (CLI ``models show``, Slicer's selector)."""
        labels = ", ".join(f"{label.value}={label.name}" for label in self.foreground_labels)
        extras = [name for name in ("sdm", "confidence") if self.data["outputs"][name]]
        lines = [
            f"{self.name} (v{self.data['version']}): {self.data['description']}",
            f"  input: {self.data['modality']}",
            *self._field_of_view_lines(),
            f"  labels: {labels}",
            f"  extra outputs: {', '.join(extras) or 'none'}",
            f"  training data: {self.data['training']['data']}",
        ]
        validation = self.data["metrics"].get("validation")
        if validation:
            lines.append(
                f"  validation: Dice {100 * validation['raw']['dice']:.1f} % "
                f"({100 * validation['largest_component']['dice']:.1f} % keeping the largest component) "
                f"on {validation['cases']} held-out cases"
                + (" (mean over the organs)" if "organs" in validation else "")
            )
            for organ, entry in validation.get("organs", {}).items():
                lines.append(f"    {organ}: Dice {100 * entry['raw']['dice']:.1f} %")
        return "\n".join([*lines, f"  licence: {self.data['license']}"])
