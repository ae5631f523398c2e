"""Networks, built by name from a model card's ``architecture`` entry.

Every network's ``forward`` returns a dict of named outputs: ``logits`` (always), ``sdm``
(signed distance map in [-1, 1], one channel per foreground class) and ``confidence`` (per-voxel
confidence in [0, 1]) when the network has them; ``deep_supervision`` (coarser logits, training
mode only) and ``attention_logits`` / ``attention_map`` (attention U-Net) for the recipes and
the active-learning loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from asdseg.networks.attention_unet import AttentionUNet3D
from asdseg.networks.confidence import vnet_with_confidence
from asdseg.networks.enhanced_unet import EnhancedUNet, enhanced_unet_with_confidence
from asdseg.networks.vnet import VNet, svnet

#: Segmentation networks a model card can name. The discriminator and the confidence networks
#: used only in training are built by the training recipes themselves.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "vnet": VNet,
    "svnet": svnet,
    "vnet-confidence": vnet_with_confidence,
    "enhanced-unet": EnhancedUNet,
    "enhanced-unet-confidence": enhanced_unet_with_confidence,
    "attention-unet": AttentionUNet3D,
}


def build_network(name: str, params: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate the architecture ``name`` with keyword ``params``."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](**(params or {}))


def downsamplings(architecture: dict[str, Any]) -> int:
    """How many levels the segmenter of ``architecture`` (a card's or config's entry) has below
    its input, read from the network itself (built without weights)."""
    import torch

    with torch.device("meta"):
        network = build_network(architecture["name"], architecture.get("params", {}))
    return len(getattr(network, "segmenter", network).strides)


def architecture_outputs(architecture: dict[str, Any]) -> dict[str, bool]:
    """The model card's ``outputs`` entry for an ``architecture`` entry: an SDM when the
    network has an SDM head, a confidence map when it carries a confidence network."""
    return {
        "sdm": bool(architecture.get("params", {}).get("sdm_head")),
        "confidence": architecture["name"].endswith("-confidence"),
    }
