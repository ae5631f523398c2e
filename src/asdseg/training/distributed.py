"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc_per_node N -m asdseg train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; each
process then samples its own patches, the segmenter is wrapped in DistributedDataParallel, and
the auxiliary networks (discriminator, confidence network), which the recipes call several times
per step, get their gradients averaged explicitly. Only rank 0 validates and writes files.
NCCL is used on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from asdseg.devices import cuda_available
from asdseg.errors import AsdsegError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistributedContext:
    """The process group torchrun asked for, or a single-process context without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda_available() else "gloo")
    return DistributedContext(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def end_distributed() -> None:
    """Destroy the process group, if one was started, before the process exits: gloo's worker
    threads left running into interpreter shutdown can abort the process (SIGABRT, "terminate
    called without an active exception") after training has succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(context: DistributedContext, choice: str) -> torch.device | None:
    """Each process's own GPU under torchrun; None to let the caller choose otherwise."""
    if context.enabled and cuda_available() and choice in ("auto", "cuda"):
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    return None


def average_gradients(parameters) -> None:
    world_size = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world_size


def check_replicas_agree(network: nn.Module) -> None:
    """Raise when the processes' copies of ``network`` have drifted apart (they must not)."""
    with torch.no_grad():
        checksum = torch.stack([parameter.double().sum() for parameter in network.parameters()]).sum()
    checksums = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(checksums, checksum)
    if not all(torch.isclose(value, checksums[0], rtol=1e-9) for value in checksums):
        raise AsdsegError(f"the processes' networks differ after training: {[float(c) for c in checksums]}")
