"""Per-axis down-sampling: by how much each level of a network shrinks each axis.

nnU-Net halves a thick-sliced axis fewer times than the in-plane ones, so that every level sees
voxels of about the same size in mm along each axis and a patch need not be padded to a multiple
of 16 slices (:func:`asdseg.planning.pooling.planned_strides` makes that choice). A network
takes ``strides``: one (x, y, z) factor of 1 or 2 per level, finest level first. None halves
every axis at every level, as every shipped model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: One (x, y, z) down-sampling factor per level, finest first.
Strides = tuple[tuple[int, int, int], ...]


def level_strides(strides: Sequence[Sequence[int]] | None, levels: int, exact: bool = True) -> Strides:
    """``strides`` as tuples, checked, for a network with ``levels`` down-samplings: exactly that
    many entries with ``exact``, else its first ``levels`` (a confidence network follows the
    first levels of its segmenter's). None: 2 on every axis at every level."""
    if strides is None:
        return ((2, 2, 2),) * levels
    checked = tuple(tuple(int(factor) for factor in level) for level in strides)
    too_few = len(checked) != levels if exact else len(checked) < levels
    if too_few or any(len(level) != 3 or set(level) - {1, 2} for level in checked):
        wanted = f"{levels}" if exact else f"at least {levels}"
        raise ValueError(
            f"strides must give {wanted} levels of three factors, each 1 or 2; got {list(strides)}"
        )
    return checked[:levels]


def size_divisor(strides: Strides) -> tuple[int, int, int]:
    """What each axis of an input must be a multiple of: the product of its factors."""
    divisor = [1, 1, 1]
    for level in strides:
        divisor = [size * factor for size, factor in zip(divisor, level)]
    return (divisor[0], divisor[1], divisor[2])


def patch_divisor(params: dict[str, Any]) -> tuple[int, int, int]:
    """What each axis of a patch must be a multiple of for a network built with ``params``: the
    product of its ``strides``, or 16 where it names none (four levels, each halving every axis:
    the most any recipe's network has)."""
    strides = params.get("strides")
    if not strides:
        return (16, 16, 16)
    return size_divisor(tuple((int(x), int(y), int(z)) for x, y, z in strides))


def halvings_per_axis(strides: Strides) -> tuple[int, int, int]:
    """How many levels halve each axis."""
    counts = [sum(level[axis] == 2 for level in strides) for axis in range(3)]
    return (counts[0], counts[1], counts[2])
