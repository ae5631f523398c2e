"""Sliding-window inference: window accounting, padding, precision, device choice, cancel."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from asdseg.background import engine_environment
from asdseg.devices import (
    auto_precision,
    auto_training_precision,
    autocast,
    cuda_available,
    describe_available_devices,
    select_device,
)
from asdseg.errors import CancelledError
from asdseg.inference.sliding_window import WindowSettings, blend_windows, predict_volume, window_count
from asdseg.networks import build_network
from asdseg.progress import CancelToken

from conftest import IntensityClassifier

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape", [(40, 33, 20), (16, 16, 16), (50, 16, 17)])
def test_progress_counts_every_window(shape: tuple[int, int, int]) -> None:
    settings = WindowSettings(patch_size=(16, 16, 16), overlap=0.5, batch_size=3)
    calls = []
    predict_volume(
        IntensityClassifier(),
        np.random.randn(*shape),
        settings,
        CPU,
        progress=lambda done, total, _: calls.append((done, total)),
    )
    total = window_count(shape, settings)
    assert calls[-1] == (total, total)
    assert len(calls) == -(-total // 3)


def test_blended_outputs_equal_a_pointwise_network_everywhere() -> None:
    volume = np.random.default_rng(0).normal(size=(37, 29, 21)).astype(np.float32)
    for blend in ("gaussian", "constant"):
        settings = WindowSettings(patch_size=(16, 16, 16), overlap=0.25, blend=blend)
        outputs = predict_volume(IntensityClassifier(), volume, settings, CPU)
        expected = torch.softmax(torch.from_numpy(np.stack([-volume, volume])) * 10, 0).numpy()
        np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(outputs["sdm"][0], -np.tanh(volume), atol=1e-5)
        np.testing.assert_allclose(outputs["confidence"], 1 / (1 + np.exp(-np.abs(volume))), atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "overlap", "batch_size"),
    [
        ((40, 33, 16), 0.5, 1),
        ((23, 16, 9), 0.25, 3),
        ((10, 7, 5), 0.5, 2),
        # 30 s of MONAI's windows at 0.9 overlap: the other layouts reach the same code.
        pytest.param((50, 20, 31), 0.9, 4, marks=pytest.mark.slow),
    ],
)
def test_windows_are_laid_out_and_blended_as_monai_does(
    shape: tuple[int, int, int], overlap: float, batch_size: int, blend: str
) -> None:
    """The product's own sliding window (kept out of MONAI for start-up time) against MONAI's
    ``sliding_window_inference``, with a network whose output depends on each window's
    position and content, so that any difference in layout, weights or padding shows."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    network = build_network("vnet", {"num_classes": 3, "base_filters": 2, "sdm_head": True}).eval()
    settings = WindowSettings((16, 16, 16), overlap=overlap, blend=blend, batch_size=batch_size)
    image = torch.randn((1, 1, *shape))

    def predictor(windows: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = network(windows)
        return {"probabilities": torch.softmax(outputs["logits"], dim=1), "sdm": outputs["sdm"]}

    with torch.inference_mode():
        ours = blend_windows(image, settings, predictor)
        theirs = sliding_window_inference(
            image, (16, 16, 16), batch_size, predictor, overlap=overlap, mode=blend
        )
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].shape == theirs[name].shape == (1, ours[name].shape[1], *shape)
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("architecture", "outputs"),
    [
        ("vnet", ("probabilities", "sdm")),
        ("vnet-confidence", ("probabilities", "sdm", "confidence")),
        ("attention-unet", ("probabilities", "attention_probabilities")),
    ],
)
def test_mirroring_averages_the_predictions_of_the_flipped_volumes(
    architecture: str, outputs: tuple[str, ...]
) -> None:
    """An untrained network is not flip-equivariant, so every mirrored output differs from the
    plain one and must equal the mean of the flipped volumes' outputs, each flipped back (one
    window); progress still counts windows, not passes."""
    torch.manual_seed(0)
    params = {"num_classes": 2, "base_filters": 2 if architecture != "attention-unet" else 4}
    if architecture != "attention-unet":
        params["sdm_head"] = True
    network = build_network(architecture, params).eval()
    volume = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    plain = WindowSettings((16, 16, 16))
    calls = []
    mirrored = predict_volume(
        network,
        volume,
        WindowSettings((16, 16, 16), mirror_axes=(0, 1)),
        CPU,
        progress=lambda done, total, _: calls.append((done, total)),
    )
    assert calls == [(1, 1)] and set(mirrored) == set(outputs)
    flipped_back = []
    for axes in [(), (0,), (1,), (0, 1)]:
        predicted = predict_volume(network, np.flip(volume, axes) if axes else volume, plain, CPU)
        flipped_back.append(
            {
                name: np.flip(array, tuple(a + (array.ndim - 3) for a in axes))
                for name, array in predicted.items()
            }
        )
    for name in outputs:
        expected = np.mean([predicted[name] for predicted in flipped_back], axis=0)
        np.testing.assert_allclose(mirrored[name], expected, atol=1e-5)
        assert np.abs(mirrored[name] - flipped_back[0][name]).max() > 1e-5, name


def test_mirroring_passes_and_refused_axes() -> None:
    assert WindowSettings((16, 16, 16)).flips() == [()]
    assert WindowSettings((16, 16, 16), mirror_axes=(0, 1)).flips() == [(), (2,), (3,), (2, 3)]
    assert len(WindowSettings((16, 16, 16), mirror_axes=(0, 1, 2)).flips()) == 8
    for axes in [(0, 0), (3,), (-1,)]:
        with pytest.raises(ValueError, match="mirror axes"):
            WindowSettings((16, 16, 16), mirror_axes=axes)


def test_volume_smaller_than_patch_is_padded_and_cropped_back() -> None:
    network = build_network("vnet", {"num_classes": 2, "base_filters": 2, "sdm_head": True})
    outputs = predict_volume(network, np.random.randn(10, 7, 5), WindowSettings((16, 16, 16)), CPU)
    assert outputs["probabilities"].shape == (2, 10, 7, 5)
    assert outputs["sdm"].shape == (1, 10, 7, 5)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=0), 1.0, atol=1e-5)


def test_the_cpus_channels_last_layout_computes_what_the_network_computes_and_leaves_it_trainable() -> None:
    """Windows run channels-last on the CPU (faster oneDNN convolutions); the prediction is the
    network's own, and a caller's inference mode (the demo's held-out check between training
    rounds) does not turn the network's weights into tensors that cannot be trained."""
    torch.manual_seed(0)
    network = build_network("vnet", {"num_classes": 2, "base_filters": 4}).eval()
    volume = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(volume)[None, None])["logits"], 1)[0].numpy()
    with torch.inference_mode():
        outputs = predict_volume(network, volume, WindowSettings((16, 16, 16)), CPU)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    network.train()
    network(torch.randn(2, 1, 16, 16, 16))["logits"].sum().backward()
    assert all(parameter.grad is not None for parameter in network.parameters())


def test_bf16_autocast_runs_and_agrees_with_fp32() -> None:
    torch.manual_seed(0)
    network = build_network("vnet", {"num_classes": 2, "base_filters": 4})
    volume = np.random.randn(24, 24, 20)
    fp32 = predict_volume(network, volume, WindowSettings((16, 16, 16)), CPU)
    bf16 = predict_volume(network, volume, WindowSettings((16, 16, 16), precision="bf16"), CPU)
    assert bf16["probabilities"].dtype == np.float32
    assert np.abs(fp32["probabilities"] - bf16["probabilities"]).max() < 0.1


def test_auto_precision_is_what_autocast_runs() -> None:
    torch.manual_seed(0)
    network = build_network("vnet", {"num_classes": 2, "base_filters": 4})
    volume = np.random.randn(24, 24, 20)
    auto = predict_volume(network, volume, WindowSettings((16, 16, 16), precision="auto"), CPU)
    chosen = predict_volume(network, volume, WindowSettings((16, 16, 16), precision=auto_precision(CPU)), CPU)
    np.testing.assert_array_equal(auto["probabilities"], chosen["probabilities"])


def test_auto_precision_is_fp32_where_bf16_is_emulated() -> None:
    """With torch's CPU kernels held to AVX2 (as on an AVX2-only CPU) bf16 would be emulated."""
    code = "import torch, asdseg.devices as d; print(d.auto_precision(torch.device('cpu')))"
    environment = {**engine_environment(), "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)
    assert result.stdout.strip() == "fp32", result.stderr


@pytest.mark.parametrize(
    ("capability", "inference", "training"), [((7, 5), "fp16", "fp32"), ((8, 0), "bf16", "bf16")]
)
def test_training_never_picks_fp16_where_inference_would(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], inference: str, training: str
) -> None:
    """A 7.x GPU segments in fp16, but trains in fp32: no recipe scales its loss for fp16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = torch.device("cuda")
    assert (auto_precision(gpu), auto_training_precision(gpu)) == (inference, training)


def test_cancel_stops_before_the_next_window() -> None:
    token = CancelToken()
    seen = []

    def progress(done: int, total: int, _: str) -> None:
        seen.append(done)
        token.cancel()

    with pytest.raises(CancelledError, match=r"cancelled"):
        predict_volume(
            IntensityClassifier(),
            np.random.randn(48, 48, 16),
            WindowSettings((16, 16, 16)),
            CPU,
            progress=progress,
            cancel=token,
        )
    assert seen == [1]


def test_device_selection_never_crashes_without_a_gpu() -> None:
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert select_device("cpu") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA GPU is usable"):
            select_device("cuda")
    with pytest.raises(ValueError, match=r"unknown device"):
        select_device("tpu")
    with pytest.raises(ValueError, match=r"unknown precision"):
        autocast(CPU, "fp8")


@pytest.mark.parametrize("bad", [{"overlap": 1.0}, {"blend": "max"}, {"batch_size": 0}])
def test_window_settings_refuse_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        WindowSettings(patch_size=(16, 16, 16), **bad)


def test_a_cuda_build_without_a_usable_gpu_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA builds raise from torch.cuda when the driver is missing or broken; device
    detection must say so and pick the CPU instead of failing."""

    def broken_driver() -> bool:
        raise RuntimeError("Found no NVIDIA driver on your system.")

    monkeypatch.setattr(torch.cuda, "is_available", broken_driver)
    assert not cuda_available()
    assert "CPU" in describe_available_devices()
    assert select_device("auto").type in ("cpu", "mps")
    with pytest.raises(ValueError, match="no CUDA GPU is usable"):
        select_device("cuda")


def test_an_emulated_precision_gets_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from asdseg import devices

    cpu = torch.device("cpu")
    assert "fp16 on a CPU is emulated" in devices.precision_warning(cpu, "fp16")
    assert devices.precision_warning(cpu, "fp32") is None
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert "bf16 is emulated" in devices.precision_warning(cpu, "bf16")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.precision_warning(cpu, "bf16") is None
