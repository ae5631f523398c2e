"""Training configuration: one JSON file per run, every field with the papers' default."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from asdseg.errors import InputError

RECIPES = ("supervised", "asdnet", "sassnet", "dan", "attention-unet")


@dataclass
class DataConfig:
    """Where the cases come from. ``root`` is a folder with ``train/<case>/{image,label}.nii.gz``
    and a ``train.list`` (the LA 2018 layout); without it, synthetic phantoms are generated."""

    root: str | None = None
    labelled: int = 16
    validation: int = 8
    #: Cases used in all (labelled + unlabelled + validation); None = every listed case.
    cases: int | None = None
    #: Integer factor the volumes are downsampled by before training (the compact CPU setting).
    downsample: int = 1
    normalization: str = "zscore"
    phantom_shape: tuple[int, int, int] = (48, 48, 40)


@dataclass
class TrainingConfig:
    recipe: str = "supervised"
    data: DataConfig = field(default_factory=DataConfig)
    network: dict[str, Any] = field(default_factory=lambda: {"name": "vnet", "params": {"num_classes": 2}})
    labels: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"value": 0, "name": "background", "color": [0, 0, 0]},
            {"value": 1, "name": "left atrium", "color": [220, 60, 60]},
        ]
    )
    patch_size: tuple[int, int, int] = (112, 112, 80)
    batch_size: int = 4
    #: Of each batch, how many patches come from labelled cases (the rest from unlabelled ones).
    labelled_per_batch: int = 2
    steps: int = 6000
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: Step decay as in UA-MT / SASSNet: the learning rate is multiplied by ``lr_decay_factor``
    #: every ``lr_decay_every`` steps.
    lr_decay_every: int = 2500
    lr_decay_factor: float = 0.1
    foreground_probability: float = 0.33
    augment: bool = True
    validate_every: int = 500
    checkpoint_every: int = 500
    seed: int = 1337
    #: Autocast precision of the training step: "fp32" (none) or "bf16" (GPUs and CPUs with native
    #: bf16; on AVX2-only CPUs it is emulated and far slower than fp32).
    precision: str = "fp32"
    #: Channels-last (NDHWC) memory layout for the networks and batches: faster cuDNN kernels on
    #: recent GPUs, no gain on the CPU.
    channels_last: bool = False
    #: Recipe-specific weights and constants (see each recipe's DEFAULTS).
    loss: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}.")
        if not 0 < self.labelled_per_batch <= self.batch_size:
            raise InputError("labelled_per_batch must be between 1 and batch_size.")
        if self.steps < 1 or self.validate_every < 1 or self.checkpoint_every < 1:
            raise InputError("steps, validate_every and checkpoint_every must be positive.")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision {self.precision!r} is not one of fp32, bf16.")
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise InputError(f"patch_size {self.patch_size} must be three sizes of at least 8 voxels.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    values = dict(values)
    if cls is TrainingConfig and "data" in values:
        values["data"] = _build(DataConfig, values["data"], f"{where} data")
    for name in ("patch_size", "phantom_shape"):
        if name in values:
            values[name] = tuple(values[name])
    return cls(**values)


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainingConfig:
    config = _build(TrainingConfig, values, where)
    config.check()
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Read a JSON config; ``overrides`` (e.g. the recipe from the command line) win."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the training config: {error}") from error
    return config_from_dict({**values, **(overrides or {})}, str(path))
