"""The plan of one run: made once and kept beside the run as ``plan.json`` (with the dataset's
``fingerprint.json``), and applied to its training config, where a setting the user gave wins.

Nothing is written until the run starts (or ``asdseg plan`` keeps it): a refused run leaves no
folder behind. A plan is made again when the data, the recipe, the network, the device, the
precision or the memory budget asked for differ from the kept one's. A setting the config or a
flag gives (patch size, batch size, spacing, normalisation, foreground oversampling, the
network's strides) wins over the plan's; a patch and batch that would not fit the memory budget
are refused, with what they need, before any training.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asdseg.errors import InputError
from asdseg.io.json_files import write_json
from asdseg.planning.experiment_plan import PLAN_FILE, MemoryLine, TrainingPlan, labelled_patches, make_plan
from asdseg.planning.fingerprint import DatasetFingerprint, cached_fingerprint, write_fingerprint
from asdseg.progress import ProgressCallback

#: Settings a plan decides: top-level ones and those of ``data``.
PLANNED = ("patch_size", "batch_size", "labelled_per_batch", "foreground_probability")
PLANNED_DATA = ("spacing", "normalization", "intensity")


def recipe_network(dataset: str | Path, recipe: str) -> dict[str, Any]:
    """The recipe's own segmenter with one class per label of ``dataset`` (two for the LA 2018
    layout, which has no dataset.json)."""
    from asdseg.io.datasets import is_dataset_folder, read_dataset
    from asdseg.training.config import DEFAULT_NETWORKS

    network = copy.deepcopy(DEFAULT_NETWORKS[recipe])
    network["params"]["num_classes"] = len(read_dataset(dataset).labels) if is_dataset_folder(dataset) else 2
    return network


def resolved_device_and_precision(device: str, precision: str) -> tuple[str, str]:
    """The device ``device`` picks here ("cpu", "cuda"...) and the precision ``precision`` is
    on it for training ("auto": bf16 where native, else fp32)."""
    from asdseg.devices import auto_training_precision, select_device

    chosen = select_device(device)
    return str(chosen), auto_training_precision(chosen) if precision == "auto" else precision


def request_of(plan: dict[str, Any]) -> dict[str, Any]:
    return {key: plan[key] for key in ("signature", "recipe", "network", "device", "precision", "memory_gb")}


def read_plan(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # damaged: planned again


@dataclass(frozen=True)
class RunPlan:
    plan: TrainingPlan
    line: MemoryLine
    #: What plan.json holds: the request it was made for, the plan and its memory line.
    contents: dict[str, Any]
    fingerprint: DatasetFingerprint

    def keep(self, folder: str | Path) -> Path:
        """Write plan.json and fingerprint.json into ``folder`` (a run's, once it starts)."""
        write_fingerprint(folder, self.fingerprint)
        write_json(Path(folder) / PLAN_FILE, self.contents, indent=1)
        return Path(folder) / PLAN_FILE


def plan_run(
    dataset: str | Path,
    folder: str | Path,
    recipe: str,
    network: dict[str, Any],
    device: str,
    precision: str,
    memory_gb: float | None = None,
    report: Callable[[str], None] = print,
    progress: ProgressCallback | None = None,
) -> RunPlan:
    """The plan for a run in ``folder`` on ``dataset``: the one kept there where it was made
    for the same request, else a new one. Nothing is written (:meth:`RunPlan.keep`)."""
    fingerprint = cached_fingerprint(dataset, folder, progress)
    request = {
        "signature": fingerprint.signature,
        "recipe": recipe,
        "network": network,
        "device": device,
        "precision": precision,
        "memory_gb": memory_gb,
    }
    kept = read_plan(folder)
    if kept is not None and request_of(kept) == json.loads(json.dumps(request)):
        plan = TrainingPlan(**{**kept["plan"], **_tuples(kept["plan"])})
        return RunPlan(plan, MemoryLine(**kept["memory_line"]), kept, fingerprint)
    plan, line = make_plan(fingerprint, recipe, network, device, precision, memory_gb, report=report)
    return RunPlan(plan, line, {**request, "plan": plan.to_dict(), "memory_line": vars(line)}, fingerprint)


def _tuples(plan: dict[str, Any]) -> dict[str, tuple]:
    keys = ("spacing", "median_shape", "patch_size", "pooling_per_axis")
    return {key: tuple(plan[key]) for key in keys}


def apply_plan(
    values: dict[str, Any], given: dict[str, Any], plan: TrainingPlan, line: MemoryLine
) -> dict[str, Any]:
    """``values`` (a run's config settings) with the plan's settings wherever ``given`` (the
    settings the user's config and flags gave) has none. A patch and batch the user gave are
    checked against the plan's memory budget."""
    values = copy.deepcopy(values)
    planned = plan.config_values()
    given_data = given.get("data") if isinstance(given.get("data"), dict) else {}
    for key in PLANNED:
        if key not in given:
            values[key] = planned[key]
    if "batch_size" in given and "labelled_per_batch" not in given:
        values["labelled_per_batch"] = labelled_patches(
            values.get("recipe", "supervised"), int(values["batch_size"])
        )
    given_network = given.get("network") if isinstance(given.get("network"), dict) else {}
    if "network" in planned and "strides" not in given_network.get("params", {}):
        values["network"] = planned["network"]  # the network asked for, with the plan's pooling
    data = values.setdefault("data", {})
    for key in PLANNED_DATA:
        if key not in given_data and key in planned["data"]:
            data[key] = planned["data"][key]
    check_budget(values, plan, line)
    return values


def check_budget(values: dict[str, Any], plan: TrainingPlan, line: MemoryLine) -> None:
    patch, batch = tuple(values["patch_size"]), int(values["batch_size"])
    if (patch, batch) == (tuple(plan.patch_size), plan.batch_size):
        return
    data_mb = 0.0 if plan.device.startswith("cuda") else plan.data_mb
    need = line.peak(patch, batch) + data_mb
    if need > plan.memory_budget_mb:
        raise InputError(
            f"patch_size {list(patch)} at batch_size {batch} needs about {need / 1024:.1f} GB (measured "
            f"on this machine), more than the memory budget of {plan.memory_budget_mb / 1024:.1f} GB; the "
            f"plan's {list(plan.patch_size)} at batch {plan.batch_size} fits. Use a smaller patch or batch, "
            "or leave them out of the config."
        )
