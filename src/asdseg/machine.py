"""What machine a figure was measured on: CPU model and the vector-instruction flags that pick
torch's CPU kernels, the GPU, and the torch build. Every benchmark records this beside its figures,
because CPUs differ between this project's machines and its users' (AVX2-only or AVX-512 with
native bf16) and the same code runs at very different speeds on them."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

#: The CPU flags that decide which kernels torch and oneDNN run (and whether bf16 is native).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def describe_machine() -> dict[str, Any]:
    """CPU model, core count, kernel flags, torch's chosen CPU capability, GPU and versions."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    description: dict[str, Any] = {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "cpu_kernel_flags": [flag for flag in KERNEL_FLAGS if flag in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "torch": str(torch.__version__),  # a TorchVersion, which checkpoints cannot unpickle safely
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        description["gpu"] = {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return description


def machine_line(description: dict[str, Any] | None = None) -> str:
    """One line for a table caption: 'AMD EPYC (2 cores; avx2 fma) ... torch 2.13.0'."""
    description = description or describe_machine()
    flags = " ".join(description["cpu_kernel_flags"]) or "no AVX2"
    line = f"{description['cpu_model']} ({description['cpu_cores']} cores; {flags})"
    if description["gpu"]:
        line += f", {description['gpu']['name']}"
    return f"{line}, torch {description['torch']}"
