"""Training configuration: one JSON file per run, every field with the papers' default."""

import copy
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import jsonschema

from asdseg.errors import InputError
from asdseg.io.json_files import check_json, read_json
from asdseg.registry.model_card import card_schema
from asdseg.strides import patch_divisor

#: fp16 is left out: it needs loss scaling, and on a CPU it is slower than bf16.
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")
RECIPES = ("supervised", "asdnet", "sassnet", "dan", "attention-unet")
#: Recipes only ``asdseg finetune`` runs (on a released model's whole network), not ``train``.
FINE_TUNING_RECIPES = ("sparse-finetune",)

#: Each recipe's segmenter as in its paper: the ``network`` of a config that names none.
DEFAULT_NETWORKS: dict[str, dict[str, Any]] = {
    "supervised": {"name": "vnet", "params": {"num_classes": 2}},
    "sassnet": {"name": "vnet", "params": {"num_classes": 2, "sdm_head": True}},
    "asdnet": {"name": "svnet", "params": {"num_classes": 2}},
    "dan": {"name": "enhanced-unet", "params": {"num_classes": 2}},
    "attention-unet": {"name": "attention-unet", "params": {"num_classes": 2}},
}
#: The segmenters each recipe's losses can train (None: any): SASSNet needs an SDM head, DAN the
#: enhanced U-Net's deep supervision, the attention recipe the attention maps.
RECIPE_ARCHITECTURES: dict[str, Optional[tuple[str, ...]]] = {
    "supervised": None,
    "sassnet": ("vnet", "svnet"),
    "asdnet": ("vnet", "svnet"),
    "dan": ("enhanced-unet",),
    "attention-unet": ("attention-unet",),
    "sparse-finetune": None,
}


@dataclass
class DataConfig:
    """Where the cases come from. ``root`` is a folder with ``train/<case>/{image,label}.nii.gz``
    and a ``train.list`` (the LA 2018 layout) or a dataset folder (``dataset.json``: the nnU-Net
    v2 or Decathlon layout, :mod:`asdseg.io.datasets`); without it, synthetic phantoms are generated."""

    root: Optional[str] = None
    labelled: int = 16
    validation: int = 8
    #: Cases used in all (labelled + unlabelled + validation); None = every listed case.
    cases: Optional[int] = None
    #: Integer factor the volumes are downsampled by before training (the compact CPU setting).
    downsample: int = 1
    normalization: str = "zscore"
    #: For ``normalization`` "ct": {"clip": [low, high], "mean": m, "std": s}, the training
    #: data's foreground statistics (``asdseg plan`` measures them).
    intensity: Optional[dict[str, Any]] = None
    #: Spacing (mm) every case is resampled to before training; None = each as stored.
    spacing: Optional[tuple[float, float, float]] = None
    phantom_shape: tuple[int, int, int] = (48, 48, 40)
    #: The cases of each part (labelled, unlabelled, validation) by name; None = by the counts.
    split: Optional[dict[str, list[str]]] = None
    #: What dataset.json and the user say about the data (licence, reference...), for the card.
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    recipe: str = "supervised"
    data: DataConfig = field(default_factory=DataConfig)
    #: Empty: the recipe's own (:data:`DEFAULT_NETWORKS`).
    network: dict[str, Any] = field(default_factory=dict)
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
    #: Autocast precision of the training step: "fp32" (none), "bf16" (GPUs and CPUs with native
    #: bf16; on AVX2-only CPUs it is emulated and far slower than fp32) or "auto" (bf16 where it is
    #: native, fp32 elsewhere; the run records which it used).
    precision: str = "fp32"
    #: Channels-last (NDHWC) memory layout for the networks and batches: the same arithmetic, and
    #: oneDNN's CPU convolutions run faster on it: la-sassnet-72's training step (96 x 96 x 64,
    #: batch 2) 2.02x in fp32, 1.54x in bf16 and 1.55x with AVX2 kernels on a 2-core AMD EPYC
    #: (benchmarks/results/memory_layout.json). cuDNN has channels-last kernels too (unmeasured).
    channels_last: bool = True
    #: Recipe-specific weights and constants (see each recipe's DEFAULTS).
    loss: dict[str, Any] = field(default_factory=dict)
    #: A released model (an installed name or a model folder) whose weights the run starts from
    #: instead of random ones: to train a shipped model for more steps, or on a site's own cases.
    #: Its architecture must be the one this run exports.
    init_from: Optional[str] = None
    #: After the last step, the BatchNorm statistics of the exported network are re-estimated
    #: over this many batches of random patches of the training volumes (AdaBN; fine-tuning on a
    #: new site's slices sets it, :mod:`asdseg.training.batchnorm_statistics`); 0 keeps them.
    batchnorm_statistics_batches: int = 0
    #: The exported network gets the average of its weights over the steps after this one (SWA,
    #: :mod:`asdseg.training.weight_averaging`; fine-tuning averages its final low-rate steps);
    #: None exports the last step's weights.
    average_weights_after: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.network:
            self.network = copy.deepcopy(DEFAULT_NETWORKS.get(self.recipe, DEFAULT_NETWORKS["supervised"]))

    def check(self) -> None:
        if self.recipe not in RECIPES + FINE_TUNING_RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}.")
        self.check_network()
        if not 0 < self.labelled_per_batch <= self.batch_size:
            raise InputError("labelled_per_batch must be between 1 and batch_size.")
        positive = {"learning_rate": self.learning_rate, "lr_decay_factor": self.lr_decay_factor}
        non_negative = {"momentum": self.momentum, "weight_decay": self.weight_decay}
        bad = [name for name, value in positive.items() if not (math.isfinite(value) and value > 0)]
        bad += [name for name, value in non_negative.items() if not (math.isfinite(value) and value >= 0)]
        if bad:
            raise InputError(
                f"{', '.join(bad)}: must be finite, learning_rate and lr_decay_factor above 0, momentum "
                "and weight_decay at least 0."
            )
        if self.steps < 1 or self.validate_every < 1 or self.checkpoint_every < 1:
            raise InputError("steps, validate_every and checkpoint_every must be positive.")
        if self.precision not in TRAINING_PRECISIONS:
            raise InputError(f"precision {self.precision!r} is not one of {', '.join(TRAINING_PRECISIONS)}.")
        spacing = self.data.spacing
        if spacing is not None and not all(math.isfinite(value) and value > 0 for value in spacing):
            raise InputError(f"data.spacing {list(spacing)} must be three positive sizes in mm.")
        divisor = patch_divisor(self.network.get("params", {}))
        sizes = zip(self.patch_size, divisor)
        if len(self.patch_size) != 3 or any(size < 16 or size % factor for size, factor in sizes):
            multiples = "multiples of 16" if divisor == (16, 16, 16) else f"multiples of {list(divisor)}"
            raise InputError(
                f"patch_size {list(self.patch_size)} must be three {multiples}, at least 16 (the network's "
                "levels shrink each axis by that much), e.g. [112, 112, 80]."
            )

    def check_network(self) -> None:
        """Refuse a segmenter the recipe's losses cannot train, or that cannot be built, before
        any data is loaded."""
        from asdseg.registry import network_from_architecture  # torch, only once a run is set up

        name, params = self.network.get("name"), self.network.get("params", {})
        allowed = RECIPE_ARCHITECTURES[self.recipe]
        if allowed is not None and name not in allowed:
            raise InputError(
                f"recipe {self.recipe!r} cannot train network {name!r}; use {' or '.join(allowed)} "
                "(or leave out network for the recipe's default)."
            )
        network_from_architecture(self.network, "network")
        if self.recipe == "sassnet" and not params.get("sdm_head"):
            raise InputError('recipe "sassnet" needs network.params.sdm_head = true.')
        if not isinstance(params.get("num_classes"), int) or params["num_classes"] < 2:
            raise InputError("network.params.num_classes must be an integer of at least 2.")
        # The card's $defs come along: a label's terminology refers to them.
        labels_schema = {**card_schema()["properties"]["labels"], "$defs": card_schema()["$defs"]}
        try:
            jsonschema.validate(self.labels, labels_schema)
        except jsonschema.ValidationError as error:
            raise InputError(f"labels: {error.message} (each label needs value, name and color).") from error
        if len(self.labels) != params["num_classes"]:
            raise InputError(
                f"labels lists {len(self.labels)} labels but network.params.num_classes is "
                f"{params['num_classes']}; give one label per class."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``Optional[X]`` and, from Python 3.10 on, ``X | None``. No ``from __future__ import
#: annotations`` here: the field types are read at run time, which Python 3.9 (Slicer 5.8) can
#: only do for ``Optional`` / ``Union`` spelt out.
UNION_TYPES = tuple(kind for kind in (typing.Union, getattr(types, "UnionType", None)) if kind is not None)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's type (ints count as floats, bools as
    neither, lists as tuples)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in UNION_TYPES:
        return any(_matches(value, argument) for argument in arguments)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(arguments)
            and all(_matches(item, argument) for item, argument in zip(value, arguments))
        )
    if origin is list:
        return isinstance(value, list) and all(_matches(item, arguments[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    return str(hint) if typing.get_args(hint) else getattr(hint, "__name__", str(hint))


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"{where}: expected a JSON object of settings, got {values!r}.")
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    values = dict(values)
    if cls is TrainingConfig and "data" in values:
        values["data"] = _build(DataConfig, values["data"], f"{where} data")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name != "data" and not _matches(value, hints[name]):
            raise InputError(
                f"{where}: setting {name!r} is {value!r} ({type(value).__name__}); it must be "
                f"{_type_name(hints[name])}."
            )
    for name in ("patch_size", "phantom_shape", "spacing"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    return cls(**values)


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainingConfig:
    """The config ``values`` describe, checked; an error names ``where`` (the file) first."""
    check_json(values, "training_config", where, "training config")
    config = _build(TrainingConfig, values, where)
    try:
        config.check()
    except InputError as error:
        raise InputError(f"{where}: {error}") from error
    return config


def load_config(path: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> TrainingConfig:
    """Read a JSON config; ``overrides`` (e.g. the recipe from the command line) win."""
    return config_from_dict({**read_config_values(path), **(overrides or {})}, str(path))


def read_config_values(path: Union[str, Path]) -> dict[str, Any]:
    """The settings of a JSON config file, not yet checked."""
    return read_json(path, "training_config", "training config")
