"""Choosing the torch device and the autocast precision for inference and training."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from asdseg.errors import DeviceError

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_available() -> bool:
    """True only when a usable CUDA GPU is present; a CUDA build on a GPU-less machine says
    False instead of raising."""
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except (RuntimeError, AssertionError):
        return False


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except RuntimeError:
        return False


def describe_available_devices() -> str:
    """One line for the UI: which accelerators torch can use here."""
    if cuda_available():
        return f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    if mps_available():
        return "Apple GPU (MPS)"
    return "no GPU found; using the CPU"


def select_device(choice: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit choice that is not available
    raises :class:`DeviceError` with what is available instead."""
    choice = choice.lower()
    if choice == "auto":
        if cuda_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice in ("cuda", "gpu") or choice.startswith("cuda:"):
        if not cuda_available():
            raise DeviceError(
                f"device {choice!r} was asked for but no CUDA GPU is usable "
                f"({describe_available_devices()}). Use --device cpu or auto."
            )
        return torch.device("cuda" if choice == "gpu" else choice)
    if choice == "mps":
        if not mps_available():
            raise DeviceError("device 'mps' was asked for but is not available; use cpu or auto.")
        return torch.device("mps")
    raise DeviceError(f"unknown device {choice!r}; choose auto, cpu, cuda or mps.")


def cpu_has_native_bf16() -> bool:
    """True when torch's CPU kernels compute bf16 in hardware (AVX512-BF16 or AMX). Elsewhere
    (AVX2-only CPUs, or ``ATEN_CPU_CAPABILITY=avx2``) bf16 is emulated: measured 53x slower
    than fp32 for a VNet window on an AMD EPYC (Zen 3) with torch 2.13."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def auto_precision(device: torch.device) -> str:
    """The fastest precision that is not emulated on ``device``: bf16 on GPUs with native bf16
    (compute capability 8.0 or newer), fp16 on older tensor-core GPUs (7.x), bf16 on CPUs with
    native bf16, fp32 everywhere else (Apple MPS included)."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16" if major == 7 else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def auto_training_precision(device: torch.device) -> str:
    """``auto`` for training: :func:`auto_precision`, but fp32 where that is fp16 (7.x GPUs):
    fp16 gradients underflow without loss scaling, which the recipes do not do."""
    precision = auto_precision(device)
    return "fp32" if precision == "fp16" else precision


def precision_warning(device: torch.device, precision: str) -> str | None:
    """What to tell a user who asked for a precision that ``device`` only emulates."""
    if device.type != "cpu":
        return None
    if precision == "fp16":
        return (
            "fp16 on a CPU is emulated and far slower than bf16 or fp32 (12x slower than bf16 on an "
            "AMD EPYC); use --precision auto."
        )
    if precision == "bf16" and not cpu_has_native_bf16():
        return (
            "this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated, about 50x slower "
            "than fp32; use --precision auto."
        )
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (fp32 means none; auto: :func:`auto_precision`) on
    ``device``'s type."""
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16.")
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])
