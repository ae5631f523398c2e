"""What a fine-tuning round exports: BatchNorm statistics re-estimated on the fine-tuning volumes
(AdaBN: the exact average over the sampled patches, weights untouched) and the weights averaged
over the final steps (SWA)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_finetune import sparse_phantom
from torch import nn

from asdseg.active.finetune import FineTuneSettings, fine_tune, model_grid_case
from asdseg.registry import load_network
from asdseg.registry.model_card import ModelCard
from asdseg.training.batchnorm_statistics import patch_fill, reestimate_batchnorm_statistics
from asdseg.training.data import Case
from asdseg.training.weight_averaging import FinalWeightAverage


def test_statistics_are_the_plain_average_over_the_patches() -> None:
    """A constant volume through a 1x1x1 convolution of weight 2 gives 2 x value at every voxel:
    the mean must be exactly that (a moving average from the initial 0 would fall short) and
    the variance 0, whatever the number of batches."""
    convolution = nn.Conv3d(1, 1, 1)
    nn.init.constant_(convolution.weight, 2.0)
    nn.init.zeros_(convolution.bias)
    network = nn.Sequential(convolution, nn.BatchNorm3d(1))
    weights = {name: value.clone() for name, value in network.named_parameters()}
    case = Case("constant", np.full((12, 12, 10), 3.0, dtype=np.float32), np.zeros((12, 12, 10), np.int64))
    reestimate_batchnorm_statistics(network, [case], (8, 8, 8), 7, 2, torch.device("cpu"))
    layer = network[1]
    assert torch.allclose(layer.running_mean, torch.tensor([6.0]))
    assert torch.allclose(layer.running_var, torch.tensor([0.0]))
    assert layer.momentum == 0.1, "the layer's own momentum is restored"
    assert not network.training
    assert all(torch.equal(value, weights[name]) for name, value in network.named_parameters())


def test_statistics_estimated_in_bf16_stay_float32_and_near_the_fp32_ones() -> None:
    """A round in bf16 re-estimates under bf16 autocast (half the time where bf16 is native)."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.BatchNorm3d(4))
    volume = np.random.default_rng(0).normal(1.0, 3.0, (16, 16, 16)).astype(np.float32)
    statistics = {}
    for precision in ("fp32", "bf16"):
        estimated = copy.deepcopy(network)
        reestimate_batchnorm_statistics(
            estimated, [Case("c", volume, None)], (16, 16, 16), 3, 2, torch.device("cpu"), 0, precision
        )
        layers = (estimated[1], estimated[3])
        statistics[precision] = [(layer.running_mean, layer.running_var) for layer in layers]
    for (mean, variance), (bf16_mean, bf16_variance) in zip(
        statistics["fp32"], statistics["bf16"], strict=True
    ):
        assert bf16_mean.dtype == bf16_variance.dtype == torch.float32
        assert torch.allclose(bf16_mean, mean, rtol=0.05, atol=0.02) and torch.allclose(
            bf16_variance, variance, rtol=0.05
        )
        assert not torch.allclose(bf16_variance, torch.ones_like(variance)), "re-estimated, not left at reset"


def test_volumes_filling_less_than_half_a_patch_leave_the_statistics_as_they_were() -> None:
    network = nn.Sequential(nn.Conv3d(1, 1, 1), nn.BatchNorm3d(1))
    before = {name: value.clone() for name, value in network.state_dict().items()}
    thin = Case("thin", np.full((12, 12, 3), 3.0, dtype=np.float32), np.zeros((12, 12, 3), np.int64))
    assert patch_fill(thin.image.shape, (8, 8, 8)) == 3 / 8
    reestimate_batchnorm_statistics(network, [thin], (8, 8, 8), 3, 2, torch.device("cpu"))
    assert all(torch.equal(value, before[name]) for name, value in network.state_dict().items())
    assert not network.training
    thicker = Case("thicker", np.full((12, 12, 6), 3.0, dtype=np.float32), np.zeros((12, 12, 6), np.int64))
    reestimate_batchnorm_statistics(network, [thin, thicker], (8, 8, 8), 3, 2, torch.device("cpu"))
    assert not torch.equal(network[1].running_mean, before["1.running_mean"]), "6 of 8 slices count"


def test_a_fine_tuned_model_ships_re_estimated_statistics(tiny_model: ModelCard, tmp_path: Path) -> None:
    """The same round with and without re-estimation: the same weights, other statistics."""
    image, _label, sparse = sparse_phantom(1)
    case = model_grid_case(image, sparse, tiny_model, "case")
    settings = FineTuneSettings(steps=3, learning_rate=0.01, batchnorm_statistics_batches=0)
    kept = fine_tune(tiny_model, [case], tmp_path / "kept", settings, device="cpu")
    settings = replace(settings, batchnorm_statistics_batches=4)
    adapted = fine_tune(tiny_model, [case], tmp_path / "adapted", settings, device="cpu")
    kept_state = load_network(kept.model).state_dict()
    adapted_state = load_network(adapted.model).state_dict()
    statistics = {name for name in kept_state if "running_" in name}
    assert statistics
    for name, value in kept_state.items():
        if name in statistics:
            assert not torch.equal(value, adapted_state[name]), f"{name} was not re-estimated"
        elif "num_batches" not in name:
            assert torch.equal(value, adapted_state[name]), f"{name} changed"


def test_the_final_weights_are_averaged_over_the_steps_after_the_start() -> None:
    network = nn.Linear(1, 1, bias=False)
    average = FinalWeightAverage(network, start_step=1)
    for step, weight in enumerate((10.0, 2.0, 4.0), start=1):
        nn.init.constant_(network.weight, weight)
        average.update(network, step)
    assert average.steps_averaged == 2, "step 1 is before the start"
    resumed = FinalWeightAverage(nn.Linear(1, 1, bias=False), start_step=1)
    resumed.load_state_dict(average.state_dict())
    resumed.apply(network)
    assert network.weight.item() == pytest.approx(3.0)
