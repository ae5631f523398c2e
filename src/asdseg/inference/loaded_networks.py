"""Networks for inference, kept loaded between jobs in the warm engine.

A command run on its own loads its model once and exits. The warm engine
(:mod:`asdseg.engine_server`) runs many commands in one process, so it turns on
:func:`keep_networks_loaded`: the most recently used models stay in memory, at most ``capacity``
of them (the least recently used is dropped first), so that a second Segment skips reading and
checking the weights while memory stays bounded. A model is known by its folder and its weights'
SHA-256, so a model re-released under the same name is loaded afresh.

Only inference uses this: the networks are put in eval mode and never trained, so sharing them
between jobs is safe. Fine-tuning loads its own copy.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from asdseg.registry.model_card import ModelCard

if TYPE_CHECKING:
    from torch import nn

_loaded: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
_capacity = 0


def keep_networks_loaded(capacity: int) -> None:
    """Keep up to ``capacity`` networks loaded between calls of :func:`inference_network` (0:
    load every time, the default of a process that runs one command)."""
    global _capacity
    if capacity < 0:
        raise ValueError(f"capacity must be 0 or more, not {capacity}")
    _capacity = capacity
    _evict_beyond(capacity)


def inference_network(card: ModelCard) -> nn.Module:
    """``card``'s network in eval mode: the one kept from an earlier job if there is one,
    else loaded (checksum verified, :func:`asdseg.registry.load_network`)."""
    from asdseg.registry import load_network

    key = (str(card.directory.resolve()), card.weights_sha256)
    if key in _loaded:
        _loaded.move_to_end(key)
        return _loaded[key].eval()
    network = load_network(card)
    if _capacity > 0:
        _loaded[key] = network
        _evict_beyond(_capacity)
    return network


def loaded_count() -> int:
    """How many networks are kept loaded now."""
    return len(_loaded)


def _evict_beyond(capacity: int) -> None:
    while len(_loaded) > capacity:
        _loaded.popitem(last=False)
