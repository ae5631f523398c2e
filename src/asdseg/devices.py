"""Choosing the torch device and the autocast precision for inference and training."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "bf16", "fp16"]

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
    raises ValueError with what is available instead."""
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
            raise ValueError(
                f"device {choice!r} was asked for but no CUDA GPU is usable "
                f"({describe_available_devices()}). Use --device cpu or auto."
            )
        return torch.device("cuda" if choice == "gpu" else choice)
    if choice == "mps":
        if not mps_available():
            raise ValueError("device 'mps' was asked for but is not available; use cpu or auto.")
        return torch.device("mps")
    raise ValueError(f"unknown device {choice!r}; choose auto, cpu, cuda or mps.")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (fp32 means none) on ``device``'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16.")
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])
