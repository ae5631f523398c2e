"""Which levels of a network halve which axis: nnU-Net v2's rule (``get_pool_and_conv_props``)
for the spacing cases are trained at and their median shape.

Going down level by level, an axis is halved while its voxels are less than twice as long as
the finest axis's at that level, and while it still has at least 2 x :data:`MIN_FEATURE_MAP`
voxels. Thick slices (2 mm against 1 mm in plane) are so kept as they are at the first level
and halved with the other axes once the in-plane voxels have grown to their size; a short axis
stops halving before it shrinks to a few voxels. An isotropic set such as LA 2018 is halved on
every axis at every level, as the recipes' networks do by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asdseg.strides import Strides

#: The fewest voxels an axis keeps at the bottom of the network (nnU-Net's default).
MIN_FEATURE_MAP = 4


def planned_strides(spacing: Sequence[float], shape: Sequence[float], levels: int) -> Strides:
    """One (x, y, z) factor of 1 or 2 per level, finest first, for ``levels`` down-samplings of
    a ``shape`` (voxels) of ``spacing`` (mm)."""
    sizes, lengths, strides = [float(size) for size in shape], [float(mm) for mm in spacing], []
    for _ in range(levels):
        finest = min(lengths)
        level = tuple(
            2 if lengths[axis] < 2 * finest and sizes[axis] >= 2 * MIN_FEATURE_MAP else 1 for axis in range(3)
        )
        strides.append(level)
        sizes = [size / factor for size, factor in zip(sizes, level)]
        lengths = [mm * factor for mm, factor in zip(lengths, level)]
    return tuple(strides)


def with_strides(network: dict[str, Any], strides: Strides) -> dict[str, Any]:
    """``network`` (a config's ``network`` entry) built with ``strides``; unchanged where every
    level halves every axis (the networks' default, so such plans name no strides)."""
    if all(level == (2, 2, 2) for level in strides):
        return network
    params = {**network.get("params", {}), "strides": [list(level) for level in strides]}
    return {**network, "params": params}
