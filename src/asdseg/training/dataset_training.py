"""``asdseg train --dataset``: a training run on a dataset folder (:mod:`asdseg.io.datasets`).

The dataset decides the labels (names from dataset.json, colours and codes where a name is
recognised) and the number of classes; the split is chosen by counts or read from a splits file
and kept by case name in the run's config (``data.split``) and in ``split.json``; the dataset's
licence and provenance go into the model card.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asdseg.errors import InputError
from asdseg.io.datasets import UNLABELLED_FOLDER, Dataset, check_dataset, read_dataset
from asdseg.io.json_files import read_json, write_json
from asdseg.training.config import DEFAULT_NETWORKS, DataConfig

PARTS = ("labelled", "unlabelled", "validation")
SPLIT_FILE = "split.json"


def default_counts(cases: int) -> tuple[int, int]:
    """Labelled and validation counts when neither flags nor config give them: a fifth of the
    cases (at least one, where there are two) held out, every other case labelled."""
    validation = max(1, round(cases / 5)) if cases >= 2 else 0
    return cases - validation, validation


def split_by_counts(
    dataset: Dataset, labelled: int, validation: int, unlabelled: int | None = None
) -> dict[str, list[str]]:
    """Of the cases with a label (by name), the first ``labelled`` labelled, the last
    ``validation`` held out, the ones between unlabelled, followed by the images of
    imagesUnlabelled (at most ``unlabelled`` in all)."""
    names = dataset.labelled_names
    between = len(names) - labelled - validation
    spare = [*names[labelled : len(names) - validation], *dataset.unlabelled_names]
    if labelled < 1 or between < 0 or (unlabelled or 0) > len(spare):
        wanted = f"{labelled} labelled, {validation} validation" + (
            f" and {unlabelled} unlabelled" if unlabelled else ""
        )
        extra = f" and {len(dataset.unlabelled_names)} unlabelled images" if dataset.unlabelled_names else ""
        raise InputError(
            f"{dataset.root}: {len(names)} cases with labels{extra} cannot give {wanted} cases (at least "
            "1 labelled); lower --labelled / --validation / --unlabelled or add cases."
        )
    return {
        "labelled": names[:labelled],
        "unlabelled": spare if unlabelled is None else spare[:unlabelled],
        "validation": names[len(names) - validation :],
    }


def read_split_file(path: str | Path, dataset: Dataset) -> dict[str, list[str]]:
    """A split by case name: ``{"labelled": [...], "unlabelled": [...], "validation": [...]}``,
    or nnU-Net's ``splits_final.json`` (its first fold: ``train`` labelled, ``val`` validation)."""
    path = Path(path)
    split = read_json(path, "splits", "split file")
    if isinstance(split, list):
        split = {"labelled": split[0]["train"], "validation": split[0].get("val", [])}
    split = {part: split.get(part, []) for part in PARTS}
    listed = [name for part in PARTS for name in split[part]]
    unknown = sorted(set(listed) - set(dataset.names))
    twice = sorted({name for name in listed if listed.count(name) > 1})
    without_label = sorted(set(split["labelled"] + split["validation"]) & set(dataset.unlabelled_names))
    if unknown or twice or without_label or not split["labelled"]:
        problems = [f"cases not in the dataset: {', '.join(unknown)}"] if unknown else []
        problems += [f"cases in more than one part: {', '.join(twice)}"] if twice else []
        problems += (
            [f"images of {UNLABELLED_FOLDER} (no label) can only be unlabelled: {', '.join(without_label)}"]
            if without_label
            else []
        )
        problems += ["no labelled case"] if not split["labelled"] else []
        raise InputError(f"--splits {path}: {'; '.join(problems)}.")
    return split


def dataset_config_values(
    values: dict[str, Any],
    dataset: Dataset,
    split: dict[str, list[str]],
    spacing: tuple[float, float, float],
    licence: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """``values`` (a config's settings) for a run on ``dataset``: its labels, a network with one
    class per label (the recipe's own unless the config names one), the split, the ``spacing``
    the cases are resampled to (unless the config gives one) and what the card says about the
    data. ``licence`` and ``source`` are the user's: the data's licence (it wins over
    dataset.json's) and where the data came from."""
    values = copy.deepcopy(values)
    if not isinstance(values.get("data", {}), dict):
        raise InputError(f"config data: expected a JSON object of settings, got {values['data']!r}.")
    values["labels"] = [label.to_dict() for label in dataset.labels]
    network = values.get("network")
    if not network:
        recipe = values.get("recipe", "supervised")
        values["network"] = copy.deepcopy(DEFAULT_NETWORKS.get(recipe, DEFAULT_NETWORKS["supervised"]))
        values["network"]["params"]["num_classes"] = len(dataset.labels)
    elif isinstance(network, dict) and isinstance(network.setdefault("params", {}), dict):
        network["params"].setdefault("num_classes", len(dataset.labels))  # a malformed one: the check says so
    provenance = {**dataset.info, "layout": dataset.layout, "channel": dataset.channel}
    provenance["cases"] = len(dataset.cases)
    if licence:
        provenance["licence"] = licence
    if source:
        provenance["source"] = source
    values["data"] = {
        "spacing": list(spacing),
        **values.get("data", {}),
        "root": str(dataset.root.resolve()),
        "labelled": len(split["labelled"]),
        "validation": len(split["validation"]),
        "split": split,
        "provenance": provenance,
    }
    return values


def choose_split(
    dataset: Dataset,
    configured: dict[str, Any],
    labelled: int | None = None,
    validation: int | None = None,
    unlabelled: int | None = None,
) -> dict[str, list[str]]:
    """The split by counts: each of the labelled and validation counts given here, else the one
    in ``configured`` (a config's ``data`` settings), else :func:`default_counts`'s."""
    chosen = dict(zip(("labelled", "validation"), default_counts(len(dataset.labelled_names))))
    given = {"labelled": labelled, "validation": validation}
    for part in chosen:
        if given[part] is not None:
            chosen[part] = given[part]
        elif isinstance(configured.get(part), int):
            chosen[part] = configured[part]
    return split_by_counts(dataset, chosen["labelled"], chosen["validation"], unlabelled)


def dataset_run_values(
    values: dict[str, Any],
    dataset_dir: str | Path,
    warn: Callable[[str], None],
    split_file: str | Path | None = None,
    labelled: int | None = None,
    validation: int | None = None,
    unlabelled: int | None = None,
    licence: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """``values`` (a config's settings) for a run on the dataset folder ``dataset_dir``: the
    folder read and checked case by case, the split chosen (``split_file``, else the counts, see
    :func:`choose_split`), all before any training. A dataset whose licence neither dataset.json
    nor ``licence`` states is passed to ``warn``."""
    dataset = read_dataset(dataset_dir)
    if split_file:
        split = read_split_file(split_file, dataset)
    else:
        configured = values.get("data") if isinstance(values.get("data"), dict) else {}
        split = choose_split(dataset, configured, labelled, validation, unlabelled)
    spacing = check_dataset(dataset)
    if not (licence or dataset.info.get("licence")):
        warn("dataset.json states no licence; the model card will say so. Pass --data-licence.")
    return dataset_config_values(values, dataset, split, spacing, licence, source)


def write_split(output_dir: str | Path, split: dict[str, list[str]]) -> Path:
    """``split.json`` in the run folder, in the form ``--splits`` reads back."""
    path = Path(output_dir) / SPLIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, split)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def dataset_card(card: dict[str, Any], recipe: str, data: DataConfig) -> dict[str, Any]:
    """The trainer's card of a run on a dataset folder, with what it segments, the data's
    licence and provenance, and the split by case name; other cards are returned as they are."""
    info = data.provenance
    if not info:
        return card
    name = info.get("name") or Path(str(data.root)).name
    organs = [label["name"] for label in card["labels"] if label["value"] != 0]
    licence = info.get("licence") or "not stated in dataset.json or by --data-licence"
    described = f": {info['description']}" if info.get("description") else ""
    training = {
        **card["training"],
        "data": f"{name} ({info['layout']} layout, {info['cases']} cases, {info['channel']}){described}",
        "protocol": (
            f"{len(data.split['labelled'])} labelled, {len(data.split['unlabelled'])} unlabelled and "
            f"{len(data.split['validation'])} validation cases (training.split), recipe {recipe}"
        ),
        "split": data.split,
        "data_licence": licence,
    }
    training.update({f"data_{key}": info[key] for key in ("reference", "release", "source") if info.get(key)})
    return {
        **card,
        "name": _slug(f"{name}-{recipe}") or card["name"],
        "description": f"Segments {', '.join(organs)}; trained by asdseg train --recipe {recipe} on {name}.",
        "task": _slug("-".join(organs)) or card["task"],
        "modality": f"{info['channel']} images like those of {name}; any spacing (resampled to the card's)",
        "license": (
            f"The weights derive from {name}, whose licence is: {licence}. Use and share them only as "
            "that licence allows. Not validated for clinical use."
        ),
        "training": training,
    }
