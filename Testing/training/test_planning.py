"""Experiment planning (``asdseg plan``, and ``asdseg train --dataset`` using the plan): the
fingerprint, nnU-Net's spacing rule, the patch and batch search under a memory budget, CT
normalisation, and the plan kept beside the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.cli import main
from asdseg.errors import InputError
from asdseg.phantoms import write_synthetic_pelvis_dataset
from asdseg.planning import fingerprint
from asdseg.planning.experiment_plan import (
    REFERENCE_VOXELS,
    MemoryLine,
    largest_batch,
    make_plan,
    patch_candidates,
    round_up,
    target_spacing,
)
from asdseg.planning.fingerprint import (
    CaseFingerprint,
    DatasetFingerprint,
    cached_fingerprint,
    write_fingerprint,
)
from asdseg.planning.memory_trial import TrialResult, TrialSettings
from asdseg.planning.pooling import planned_strides, with_strides
from asdseg.planning.run_plan import apply_plan
from asdseg.preprocessing.transforms import normalize_intensity
from asdseg.strides import size_divisor
from asdseg.training.config import config_from_dict

NETWORK = {"name": "vnet", "params": {"num_classes": 4, "base_filters": 4, "dropout": 0.0}}


def fingerprint_of(shapes_spacings: list[tuple[tuple, tuple]], modality: str = "T2") -> DatasetFingerprint:
    cases = tuple(
        CaseFingerprint(f"case{index}", shape, spacing, (1, 0, 0, 0, 1, 0, 0, 0, 1), True, {"1": 10.0})
        for index, (shape, spacing) in enumerate(shapes_spacings)
    )
    statistics = {"mean": 40.0, "std": 60.0, "percentile_00_5": -80.0, "percentile_99_5": 210.0}
    return DatasetFingerprint("/data", modality, cases, statistics, "signature")


def la_like() -> DatasetFingerprint:
    """LA 2018's 80 cropped cases: about 195 x 143 x 88 voxels of 0.625 mm."""
    shapes = [(195 + 5 * (index % 5), 143, 88) for index in range(80)]
    return fingerprint_of([(shape, (0.625, 0.625, 0.625)) for shape in shapes])


class MachineOfKnownMemory:
    """A trial for :func:`make_plan`'s search: a step's peak is 500 MB plus ``per_voxel`` MB per
    voxel of the batch (a machine whose memory is known), so which plan fits is known."""

    def __init__(self, per_voxel: float = 0.001) -> None:
        self.per_voxel, self.sizes = per_voxel, []

    def __call__(self, settings: TrialSettings) -> TrialResult:
        voxels = float(np.prod(settings.patch_size)) * settings.batch_size
        self.sizes.append((settings.patch_size, settings.batch_size))
        return TrialResult(settings, 500.0, 500.0 + self.per_voxel * voxels, 1.0, 0.0)


def test_spacing_is_the_median_and_thick_slices_take_their_tenth_percentile() -> None:
    isotropic = fingerprint_of([((100, 100, 80), (1.0, 1.0, 1.0)), ((100, 100, 80), (1.2, 1.2, 1.2))] * 2)
    assert target_spacing(isotropic) == (1.1, 1.1, 1.1)
    # Pelvic MR: 0.6 mm in plane, 3 to 4.5 mm slices, few of them: z keeps the 10th percentile.
    thick = fingerprint_of([((320, 320, 28), (0.6, 0.6, 3.0 + 0.5 * index)) for index in range(4)])
    assert target_spacing(thick)[:2] == (0.6, 0.6)
    assert target_spacing(thick)[2] == pytest.approx(np.percentile([3.0, 3.5, 4.0, 4.5], 10), abs=1e-3)
    # Twice as coarse is not anisotropic: the median.
    toy = fingerprint_of([((56, 56, 32), (1.0, 1.0, 2.0))] * 6)
    assert target_spacing(toy) == (1.0, 1.0, 2.0)


def test_thick_slices_are_halved_only_once_the_in_plane_voxels_have_grown_to_their_size() -> None:
    assert planned_strides((0.625,) * 3, (195, 143, 88), 4) == ((2, 2, 2),) * 4  # LA: the default
    # The toy set (1 x 1 x 2 mm): z waits one level; x and y stop at 7 voxels, z at 8 goes on.
    assert planned_strides((1.0, 1.0, 2.0), (56, 56, 32), 4) == ((2, 2, 1), (2, 2, 2), (2, 2, 2), (1, 1, 2))
    # Pelvic MR, 0.6 mm in plane and 3 mm slices: z is halved only at the two coarsest levels.
    pelvic = planned_strides((0.6, 0.6, 3.0), (320, 320, 28), 4)
    assert [level[2] for level in pelvic] == [1, 1, 2, 2] and all(level[:2] == (2, 2) for level in pelvic)
    assert size_divisor(pelvic) == (16, 16, 4)
    network = {"name": "vnet", "params": {"num_classes": 2}}
    assert with_strides(network, ((2, 2, 2),) * 4) is network  # isotropic plans name no strides
    assert with_strides(network, pelvic)["params"]["strides"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]


def test_the_patch_is_no_larger_than_the_padded_median_shape_and_divisible_by_the_pooling() -> None:
    toy_strides = planned_strides((1.0, 1.0, 2.0), (56, 56, 32), 4)
    divisor = size_divisor(toy_strides)
    toy_start = tuple(round_up(size, factor) for size, factor in zip((56, 56, 32), divisor, strict=True))
    assert toy_start == (56, 56, 32), "no padding: each axis is a multiple of what its levels halve"
    assert patch_candidates(toy_start, (1.0, 1.0, 2.0), divisor)[0] == (56, 56, 32)
    assert tuple(round_up(size) for size in (56, 56, 32)) == (64, 64, 32)  # halving every axis 4 times
    la_start = tuple(round_up(size) for size in (195, 143, 88))
    first = patch_candidates(la_start, (0.625,) * 3)[0]
    assert all(size % 16 == 0 and size <= limit for size, limit in zip(first, la_start, strict=True))
    assert np.prod(first) <= REFERENCE_VOXELS
    # Near the papers' 112 x 112 x 80: within a sixth of its voxels, every axis within 16.
    assert abs(np.prod(first) - REFERENCE_VOXELS) <= REFERENCE_VOXELS / 6
    assert all(
        abs(size - paper) <= 16 for size, paper in zip(sorted(first), sorted((112, 112, 80)), strict=True)
    )


def test_a_batch_holds_at_most_five_percent_of_a_dataset_but_never_fewer_than_two_patches() -> None:
    assert largest_batch((64, 64, 32), 6 * 56 * 56 * 32) == 2
    assert largest_batch((96, 96, 96), 80 * 195 * 143 * 88) == 4


def test_on_a_machine_that_holds_it_la_gets_a_patch_near_the_papers_at_batch_4() -> None:
    plan, _ = make_plan(
        la_like(), "sassnet", NETWORK, "cpu", "fp32", memory_gb=16, trial=MachineOfKnownMemory()
    )
    assert plan.batch_size == 4 and plan.spacing == (0.625, 0.625, 0.625)
    assert np.prod(plan.patch_size) >= 0.8 * REFERENCE_VOXELS
    assert plan.expected_peak_mb <= 16 * 1024


def test_a_small_budget_scales_the_patch_and_batch_down_and_a_tiny_one_is_refused() -> None:
    machine = MachineOfKnownMemory()
    plan, line = make_plan(la_like(), "sassnet", NETWORK, "cpu", "fp32", memory_gb=3, trial=machine)
    assert plan.expected_peak_mb <= 3 * 1024
    assert np.prod(plan.patch_size) * plan.batch_size < REFERENCE_VOXELS * 4
    assert line.peak(plan.patch_size, plan.batch_size) <= 3 * 1024 - plan.data_mb
    with pytest.raises(InputError, match=r"memory budget is 1\.0 GB"):
        make_plan(la_like(), "sassnet", NETWORK, "cpu", "fp32", memory_gb=1, trial=MachineOfKnownMemory())


def test_a_users_patch_and_batch_win_but_not_beyond_the_budget() -> None:
    plan, line = make_plan(
        la_like(), "sassnet", NETWORK, "cpu", "fp32", memory_gb=4, trial=MachineOfKnownMemory()
    )
    values = {"recipe": "sassnet", "data": {"spacing": [1.0, 1.0, 1.0]}}
    planned = apply_plan(values, {}, plan, line)
    assert planned["patch_size"] == list(plan.patch_size) and planned["batch_size"] == plan.batch_size
    assert planned["data"]["spacing"] == list(plan.spacing)  # the dataset's median spacing gave way
    given = {"patch_size": [64, 64, 32], "batch_size": 2, "data": {"spacing": [1.0, 1.0, 1.0]}}
    chosen = apply_plan({**values, **given}, given, plan, line)
    assert chosen["patch_size"] == [64, 64, 32] and chosen["data"]["spacing"] == [1.0, 1.0, 1.0]
    assert chosen["labelled_per_batch"] == 1
    too_large = {"patch_size": [320, 320, 160], "batch_size": 4}
    with pytest.raises(InputError, match=r"patch_size \[320, 320, 160\] at batch_size 4 needs about"):
        apply_plan({**values, **too_large}, too_large, plan, line)


def test_ct_is_clipped_to_foreground_percentiles_and_normalised_with_the_datasets_statistics() -> None:
    plan, _ = make_plan(
        fingerprint_of([((64, 64, 48), (1.0, 1.0, 1.0))] * 4, modality="CT"),
        "supervised",
        NETWORK,
        "cpu",
        "fp32",
        memory_gb=8,
        trial=MachineOfKnownMemory(),
    )
    assert plan.normalization == "ct"
    assert plan.intensity == {"clip": [-80.0, 210.0], "mean": 40.0, "std": 60.0}
    hounsfield = np.array([-1000.0, 40.0, 100.0, 3000.0])
    assert normalize_intensity(hounsfield, "ct", plan.intensity).tolist() == pytest.approx(
        [-2.0, 0.0, 1.0, 2.833333]
    )
    with pytest.raises(InputError, match="intensity"):
        config_from_dict({"data": {"normalization": "ct"}})


def test_the_memory_line_through_two_steps_predicts_a_third() -> None:
    machine = MachineOfKnownMemory(per_voxel=0.002)
    small = machine(TrialSettings("supervised", NETWORK, (32, 32, 32), 2, 1, "fp32", "cpu"))
    large = machine(TrialSettings("supervised", NETWORK, (64, 64, 64), 4, 2, "fp32", "cpu"))
    line = MemoryLine.through(small, large)
    assert line.peak((96, 96, 64), 2) == pytest.approx(500 + 0.002 * 96 * 96 * 64 * 2)


@pytest.fixture
def pelvis(tmp_path: Path) -> Path:
    return write_synthetic_pelvis_dataset(
        tmp_path / "pelvis", cases=4, shape=(40, 40, 24), spacing=(1.0, 1.0, 2.0)
    )


def test_the_fingerprint_is_read_once_and_again_when_a_file_changes(
    pelvis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    first = cached_fingerprint(pelvis, run)
    assert [case.shape for case in first.cases] == [(40, 40, 24)] * 4
    assert first.modality == "T2" and set(first.cases[0].organ_ml) == {"1", "2", "3"}
    assert first.cases[0].organ_ml["1"] > 0 and first.foreground_intensity["std"] > 0
    assert not run.exists()  # nothing is written until a run keeps it
    write_fingerprint(run, first)
    with monkeypatch.context() as patched:
        patched.setattr(fingerprint, "compute_fingerprint", lambda *_: pytest.fail("read again"))
        assert cached_fingerprint(pelvis, run) == first
    image = pelvis / "imagesTr" / "synthpelvis_000_0000.nii.gz"
    label = pelvis / "labelsTr" / "synthpelvis_000.nii.gz"
    sitk.WriteImage(sitk.Image([48, 40, 24], sitk.sitkUInt8) + 1, str(label))
    with pytest.raises(InputError, match=r"synthpelvis_000: its label .* is not on its image.s grid"):
        cached_fingerprint(pelvis, run)
    sitk.WriteImage(sitk.Image([48, 40, 24], sitk.sitkFloat32) + 1.0, str(image))
    assert cached_fingerprint(pelvis, run).cases[0].shape == (48, 40, 24)


def test_asdseg_plan_measures_a_real_step_and_train_runs_on_the_plan(
    pelvis: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"network": {"name": "vnet", "params": {"base_filters": 4}}, "validate_every": 100})
    )
    arguments = [
        "--dataset",
        str(pelvis),
        "--output-dir",
        str(run),
        "--device",
        "cpu",
        "--config",
        str(config),
    ]
    assert main(["plan", *arguments, "--recipe", "supervised", "--memory-gb", "6"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((run / "plan.json").read_text())["plan"]
    # The 40 x 40 x 24 median shape as it is: the plan's network halves x and y three times and
    # z (2 mm, twice the in-plane spacing) twice.
    assert plan["patch_size"] == [40, 40, 24]
    assert plan["pooling_per_axis"] == [3, 3, 2]
    assert plan["batch_size"] == 2  # four small cases: a batch of 4 would hold a fifth of them
    assert 300 < plan["expected_peak_mb"] < 6 * 1024 and plan["expected_step_s"] > 0
    assert "patch: 40 x 40 x 24" in printed and "GB at peak" in printed
    planned = (run / "plan.json").read_text()
    assert main(["train", *arguments, "--steps", "2", "--memory-gb", "6", "--recipe", "supervised"]) == 0
    assert "trial at" not in capsys.readouterr().out  # the kept plan, not measured again
    assert (run / "plan.json").read_text() == planned
    trained = json.loads((run / "config.json").read_text())
    assert trained["patch_size"] == [40, 40, 24] and trained["batch_size"] == 2
    assert trained["network"]["params"]["strides"] == [[2, 2, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]]
    assert trained["network"]["params"]["base_filters"] == 4, "the config's network, with the plan's strides"
    assert trained["data"]["spacing"] == [1.0, 1.0, 2.0]
    # The model keeps its strides: it segments a whole case of 40 x 40 x 24 (no multiple of 16).
    image = sorted((pelvis / "imagesTr").glob("*.nii.gz"))[0]
    output = tmp_path / "segmented.nii.gz"
    arguments = ["-i", str(image), "-o", str(output), "--model", str(run / "model"), "--device", "cpu"]
    assert main(["segment", *arguments]) == 0
    assert sitk.ReadImage(str(output)).GetSize() == sitk.ReadImage(str(image)).GetSize()
