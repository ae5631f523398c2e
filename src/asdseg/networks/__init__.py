"""Networks, built by name from a model card's ``architecture`` entry.

Every network's ``forward`` returns a dict of named outputs: ``logits`` (always), ``sdm``
(signed distance map in [-1, 1], one channel per foreground class) and ``confidence`` (per-voxel
confidence in [0, 1]) when the network has them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from asdseg.networks.confidence import VNetWithConfidence
from asdseg.networks.vnet import VNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"vnet": VNet, "vnet-confidence": VNetWithConfidence}


def build_network(name: str, params: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate the architecture ``name`` with keyword ``params``."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](**(params or {}))
