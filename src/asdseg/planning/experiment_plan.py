"""Experiment planning as nnU-Net v2 does it, from a dataset's fingerprint and this machine:
the spacing cases are trained at, the patch and batch, the networks' pooling, the intensity
normalisation and foreground oversampling, with the peak memory and step time a run will need.

The rules:

- spacing: the median of the labelled cases' spacings; where one axis is more than three times
  coarser than the others and has fewer than a third of their voxels (thick slices), that axis
  takes the 10th percentile of its spacings instead (nnU-Net's rule for anisotropic data);
- pooling: which of the network's levels halve which axis, nnU-Net's rule
  (:mod:`asdseg.planning.pooling`): every level halves every axis of isotropic data, thick
  slices are halved only once the in-plane voxels have grown to their size;
- patch: the median shape of the cases at that spacing, each axis rounded up to a multiple of
  what the pooling halves it by (16 for four halvings) and to at least 16 voxels, then the axis
  that is longest in mm shortened by that multiple at a time until the patch has no more voxels
  than the papers' 112 x 112 x 80 (the context the recipes were tuned at) and the run fits the
  memory budget;
- batch: 4 patches, down to 2 where a batch of 4 does not fit or would hold over 5 % of the
  dataset's voxels; half of them labelled for the semi-supervised recipes (SASSNet, ASDNet),
  all of them for the others;
- normalisation: z-score per case for MR; for CT, clipping to the 0.5th and 99.5th
  percentiles of the foreground intensities, then the z-score of the foreground's mean and
  standard deviation over the dataset (nnU-Net's CTNormalization);
- memory: a trial (:mod:`asdseg.planning.memory_trial`) measures a small patch's step; the
  patch is chosen on the line through it and the memory before the step, then the chosen
  plan's own step is measured. On a CPU the cases in memory (float32 images, int16 labels,
  as training holds them) count against the same budget; on a GPU they stay in host memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from asdseg.errors import InputError
from asdseg.networks import downsamplings
from asdseg.planning.fingerprint import DatasetFingerprint
from asdseg.planning.memory_trial import TrialResult, TrialSettings, measure
from asdseg.planning.pooling import planned_strides, with_strides
from asdseg.strides import halvings_per_axis, level_strides, size_divisor

PLAN_FILE = "plan.json"
#: The shortest patch side: the SDM discriminator's four strided convs need 16 voxels.
MIN_PATCH_SIDE = 16
REFERENCE_PATCH = (112, 112, 80)
REFERENCE_VOXELS = int(np.prod(REFERENCE_PATCH))
BATCH_SIZES = (4, 2)
SEMI_SUPERVISED_RECIPES = ("sassnet", "asdnet")
#: nnU-Net's cap: a batch holds at most this share of the dataset's voxels.
BATCH_SHARE = 0.05
ANISOTROPY = 3.0
FOREGROUND_PROBABILITY = 0.33
#: Of the free memory, what a plan may use: the rest is left to the system and other programs.
SAFETY = 0.8
#: Of the step's budget, what the chosen step's measured trial may take: whole runs peaked up to
#: 4 % above their trial (the tiny set at a 1 GB budget: 1058 MB against 1015 MB planned, past
#: the budget the plan was made for).
HEADROOM = 0.95
#: The small patch the memory line is measured at.
TRIAL_PATCH = (48, 48, 32)
BYTES_PER_VOXEL = {"image": 4, "label": 2}  #: float32 images, int16 labels (training.data)


@dataclass
class TrainingPlan:
    recipe: str
    device: str
    precision: str
    spacing: tuple[float, float, float]
    #: The median shape of the cases resampled to ``spacing`` (voxels).
    median_shape: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    batch_size: int
    labelled_per_batch: int
    pooling_per_axis: tuple[int, int, int]
    normalization: str
    #: For CT: {"clip": [low, high], "mean": m, "std": s}; None for per-case z-score.
    intensity: dict[str, Any] | None
    foreground_probability: float
    memory_budget_mb: float
    #: MB of the cases training holds in memory.
    data_mb: float
    #: MB at the peak of a run: measured step plus the data (CPU), or the step alone (GPU).
    expected_peak_mb: float
    expected_step_s: float
    notes: list[str] = field(default_factory=list)
    #: The segmenter the plan was measured with: the one asked for, with the pooling's
    #: ``strides`` where a level keeps an axis (empty in plans made before pooling per axis).
    network: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_values(self) -> dict[str, Any]:
        """The training config settings this plan decides."""
        data: dict[str, Any] = {"spacing": list(self.spacing), "normalization": self.normalization}
        if self.intensity is not None:
            data["intensity"] = self.intensity
        planned: dict[str, Any] = {"network": self.network} if self.network else {}
        return {
            **planned,
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "labelled_per_batch": self.labelled_per_batch,
            "foreground_probability": self.foreground_probability,
            "data": data,
        }


def target_spacing(fingerprint: DatasetFingerprint) -> tuple[float, float, float]:
    cases = fingerprint.labelled or list(fingerprint.cases)
    spacings = np.array([case.spacing for case in cases], dtype=float)
    shapes = np.array([case.shape for case in cases], dtype=float)
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != worst]
    thick = target[worst] > ANISOTROPY * max(target[others])
    few_slices = median_shape[worst] * ANISOTROPY < min(median_shape[others])
    if thick and few_slices:
        target[worst] = max(float(np.percentile(spacings[:, worst], 10)), max(target[others]) + 1e-5)
    return tuple(round(float(value), 4) for value in target)


def spacing_note(fingerprint: DatasetFingerprint, spacing: tuple[float, float, float]) -> str:
    cases = fingerprint.labelled or list(fingerprint.cases)
    median = tuple(round(float(value), 4) for value in np.median([case.spacing for case in cases], axis=0))
    if median == spacing:
        return f"spacing {list(spacing)} mm: the median of {len(cases)} cases'"
    return (
        f"spacing {list(spacing)} mm: the median of {len(cases)} cases' ({list(median)}) but for the thick "
        "slices' axis, which takes the 10th percentile of its spacings"
    )


def resampled_shapes(fingerprint: DatasetFingerprint, spacing: tuple[float, float, float]) -> np.ndarray:
    return np.array(
        [
            np.maximum(np.round(np.multiply(case.shape, case.spacing) / spacing), 1)
            for case in fingerprint.cases
        ]
    )


def data_megabytes(fingerprint: DatasetFingerprint, spacing: tuple[float, float, float]) -> float:
    """MB of every case on the training grid: its image as float32 and its label as int16."""
    per_voxel = [
        BYTES_PER_VOXEL["image"] + (BYTES_PER_VOXEL["label"] if case.labelled else 0)
        for case in fingerprint.cases
    ]
    voxels = resampled_shapes(fingerprint, spacing).prod(axis=1)
    return float(np.dot(voxels, per_voxel)) / 2**20


def round_up(size: float, divisor: int = 16) -> int:
    """``size`` rounded up to a multiple of ``divisor`` (a power of 2 up to 16), at least
    :data:`MIN_PATCH_SIDE`."""
    return max(MIN_PATCH_SIDE, math.ceil(size / divisor) * divisor)


def shorten(
    patch: tuple[int, ...], spacing: tuple[float, ...], divisor: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The patch with its longest axis in mm (of those that can lose ``divisor`` voxels and keep
    :data:`MIN_PATCH_SIDE`) that many voxels shorter; None when no axis can."""
    axes = [axis for axis in range(3) if patch[axis] - divisor[axis] >= MIN_PATCH_SIDE]
    if not axes:
        return None
    longest = max(axes, key=lambda axis: (patch[axis] * spacing[axis], patch[axis], -axis))
    return tuple(size - divisor[axis] if axis == longest else size for axis, size in enumerate(patch))


def patch_candidates(
    start: tuple[int, ...], spacing: tuple[float, ...], divisor: tuple[int, ...] = (16, 16, 16)
) -> list[tuple[int, ...]]:
    """From ``start`` down to the smallest patch, each shorter than the one before by one
    ``divisor`` step, from the first with no more voxels than :data:`REFERENCE_VOXELS`."""
    candidates, patch = [], tuple(start)
    while patch is not None:
        if int(np.prod(patch)) <= REFERENCE_VOXELS:
            candidates.append(patch)
        patch = shorten(patch, spacing, divisor)
    return candidates


def normalisation(fingerprint: DatasetFingerprint) -> tuple[str, dict[str, Any] | None]:
    if not fingerprint.is_ct:
        return "zscore", None
    statistics = fingerprint.foreground_intensity
    if not statistics:
        raise InputError(
            f"{fingerprint.root}: CT without any labelled foreground voxels cannot be normalised."
        )
    return "ct", {
        "clip": [statistics["percentile_00_5"], statistics["percentile_99_5"]],
        "mean": statistics["mean"],
        "std": max(statistics["std"], 1e-8),
    }


@dataclass(frozen=True)
class MemoryLine:
    """Peak MB of a step against patch voxels times batch, through two measured points."""

    before_mb: float
    per_voxel_mb: float

    def peak(self, patch: tuple[int, ...], batch: int) -> float:
        return self.before_mb + self.per_voxel_mb * float(np.prod(patch)) * batch

    @classmethod
    def from_trial(cls, trial: TrialResult) -> MemoryLine:
        """Through the memory before the step and the step's peak: above the truth for larger
        patches (part of a step's peak does not grow with the patch)."""
        voxels = float(np.prod(trial.settings.patch_size)) * trial.settings.batch_size
        return cls(trial.before_mb, max(_step_peak(trial) - trial.before_mb, 0.0) / voxels)

    @classmethod
    def through(cls, first: TrialResult, second: TrialResult) -> MemoryLine:
        """Through the peaks of two steps at different sizes."""
        sizes = [
            float(np.prod(trial.settings.patch_size)) * trial.settings.batch_size for trial in (first, second)
        ]
        if sizes[0] == sizes[1]:
            return cls.from_trial(second)
        slope = max((_step_peak(second) - _step_peak(first)) / (sizes[1] - sizes[0]), 0.0)
        return cls(_step_peak(second) - slope * sizes[1], slope)


def _step_peak(trial: TrialResult) -> float:
    return trial.peak_mb - trial.trial_data_mb


def available_memory_mb(device: str) -> float:
    """Free memory of ``device``: the GPU's free memory, else the host's available memory."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free / 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")) / 2**20


def trial_line(trial: TrialResult) -> str:
    settings = trial.settings
    return (
        f"trial at {list(settings.patch_size)}, batch {settings.batch_size}: peak {trial.peak_mb:.0f} MB, "
        f"{trial.step_s:.2f} s per step"
    )


def _trial_settings(
    recipe: str, network: dict[str, Any], patch: tuple[int, ...], batch: int, precision: str, device: str
) -> TrialSettings:
    return TrialSettings(
        recipe, network, tuple(patch), batch, labelled_patches(recipe, batch), precision, device
    )


def labelled_patches(recipe: str, batch: int) -> int:
    """Of a batch, the labelled patches: half for the semi-supervised recipes (the rest come
    from unlabelled cases), all for the others (which train on the labelled ones only)."""
    return max(1, batch // 2) if recipe in SEMI_SUPERVISED_RECIPES else batch


def largest_batch(patch: tuple[int, ...], dataset_voxels: float) -> int:
    """The recipes' batch, capped as nnU-Net caps it: a batch holds at most 5 % of the
    dataset's voxels (so a tiny set is not seen whole in every step), and never fewer than 2
    patches (BatchNorm)."""
    limit = int(BATCH_SHARE * dataset_voxels / float(np.prod(patch)))
    return max(BATCH_SIZES[-1], min(BATCH_SIZES[0], limit))


def choose_patch_and_batch(
    candidates: list[tuple[int, ...]], line: MemoryLine, budget_mb: float, dataset_voxels: float
) -> tuple[tuple[int, ...], int] | None:
    """The largest candidate patch that fits, at batch 4 where it fits and
    :func:`largest_batch` allows it, else at batch 2 (nnU-Net also favours the patch's context
    over the batch); None if none does."""
    for patch in candidates:
        for batch in BATCH_SIZES:
            if batch <= largest_batch(patch, dataset_voxels) and line.peak(patch, batch) <= budget_mb:
                return patch, batch
    return None


def refuse(what: str, need_mb: float, budget_mb: float) -> InputError:
    return InputError(
        f"{what} needs about {need_mb / 1024:.1f} GB but the memory budget is {budget_mb / 1024:.1f} GB. "
        "Free memory, pass a larger --memory-gb if the machine has it, or train on fewer cases or at a "
        "coarser spacing (data.spacing in a config)."
    )


def memory_budget_mb(device: str, memory_gb: float | None) -> float:
    return memory_gb * 1024 if memory_gb is not None else SAFETY * available_memory_mb(device)


def make_plan(
    fingerprint: DatasetFingerprint,
    recipe: str,
    network: dict[str, Any],
    device: str,
    precision: str,
    memory_gb: float | None = None,
    trial: Callable[[TrialSettings], TrialResult] = measure,
    report: Callable[[str], None] = lambda line: None,
) -> tuple[TrainingPlan, MemoryLine]:
    """The plan for ``recipe`` (its segmenter ``network``) on ``device`` (resolved, e.g. "cpu")
    at ``precision`` (resolved), within ``memory_gb`` (default: :data:`SAFETY` of the free
    memory), and the memory line it was chosen on. ``trial`` measures a step; ``report`` is
    told each measurement."""
    budget = memory_budget_mb(device, memory_gb)
    on_gpu = device.startswith("cuda")
    spacing = target_spacing(fingerprint)
    shapes = resampled_shapes(fingerprint, spacing)
    median = tuple(int(value) for value in np.median(shapes, axis=0))
    data_mb = data_megabytes(fingerprint, spacing)
    dataset_voxels = float(shapes.prod(axis=1).sum())
    notes = [spacing_note(fingerprint, spacing)]
    host_budget = SAFETY * available_memory_mb("cpu") if on_gpu else budget
    if data_mb > host_budget:
        raise refuse(
            f"holding the {len(fingerprint.cases)} cases at {list(spacing)} mm", data_mb, host_budget
        )
    step_budget = budget if on_gpu else budget - data_mb
    given_strides = network.get("params", {}).get("strides")
    levels = downsamplings(network)
    strides = (
        level_strides(given_strides, levels) if given_strides else planned_strides(spacing, median, levels)
    )
    divisor = size_divisor(strides)
    network = with_strides(network, strides)
    start = tuple(round_up(size, factor) for size, factor in zip(median, divisor))
    candidates = patch_candidates(start, spacing, divisor)
    largest = candidates[0]
    small = tuple(min(size, trial_size) for size, trial_size in zip(start, TRIAL_PATCH))
    measured = trial(_trial_settings(recipe, network, small, 2, precision, device))
    report(trial_line(measured))
    line = MemoryLine.from_trial(measured)
    for _ in range(3):
        chosen = choose_patch_and_batch(candidates, line, HEADROOM * step_budget, dataset_voxels)
        if chosen is None:
            smallest = candidates[-1]
            raise refuse(
                f"{recipe}'s training step at patch {list(smallest)}, batch 2",
                line.peak(smallest, 2),
                step_budget,
            )
        patch, batch = chosen
        settings = _trial_settings(recipe, network, patch, batch, precision, device)
        if settings != measured.settings:  # a small dataset's plan is the small trial itself
            previous, measured = measured, trial(settings)
            report(trial_line(measured))
            line = MemoryLine.through(previous, measured)
        if _step_peak(measured) <= HEADROOM * step_budget:
            break
        candidates = [
            candidate for candidate in candidates if np.prod(candidate) < np.prod(patch)
        ] or candidates[-1:]
    else:
        raise refuse(
            f"{recipe}'s training step at patch {list(patch)}, batch {batch}",
            _step_peak(measured),
            step_budget,
        )
    if start != patch:
        why = "the papers' 112 x 112 x 80 voxels"
        if patch != largest:
            why += " and then to the memory budget"
        notes.append(
            f"patch {list(patch)}: the median shape {list(median)} padded to {list(start)}, cut to {why}"
        )
    if batch < BATCH_SIZES[0]:
        notes.append(
            f"batch {batch}: a batch of {BATCH_SIZES[0]} would not fit, or would hold over 5 % of the data"
        )
    normalization, intensity = normalisation(fingerprint)
    plan = TrainingPlan(
        recipe=recipe,
        device=device,
        precision=precision,
        spacing=spacing,
        median_shape=median,
        patch_size=tuple(patch),
        batch_size=batch,
        labelled_per_batch=labelled_patches(recipe, batch),
        pooling_per_axis=halvings_per_axis(strides),
        normalization=normalization,
        intensity=intensity,
        foreground_probability=FOREGROUND_PROBABILITY,
        memory_budget_mb=round(budget, 1),
        data_mb=round(data_mb, 1),
        expected_peak_mb=round(_step_peak(measured) + (0.0 if on_gpu else data_mb), 1),
        expected_step_s=round(measured.step_s, 3),
        notes=notes,
        network=network,
    )
    return plan, line
