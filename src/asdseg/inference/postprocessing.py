"""Post-processing of label maps: keep the largest connected component of each label
(SASSNet's "NMS" step), which removes false-positive islands away from the organ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class ComponentReport:
    """What largest-component filtering did to one label."""

    value: int
    components: int
    voxels_before: int
    voxels_after: int

    @property
    def empty(self) -> bool:
        return self.voxels_before == 0


def keep_largest_component(
    label_map: np.ndarray, values: Iterable[int], fully_connected: bool = True
) -> tuple[np.ndarray, list[ComponentReport]]:
    """Keep only the largest 3D connected component of each label in ``values``; voxels of
    dropped components become background (0). A label absent from the map is reported as
    empty and left absent.
    """
    filtered = label_map.copy()
    reports = []
    for value in values:
        mask = label_map == value
        voxels = int(mask.sum())
        if voxels == 0:
            reports.append(ComponentReport(value, 0, 0, 0))
            continue
        components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), fully_connected)
        # A copy, not a view: the relabelled image is a temporary that is freed right away.
        relabelled = sitk.GetArrayFromImage(sitk.RelabelComponent(components, sortByObjectSize=True))
        largest = relabelled == 1
        filtered[mask & ~largest] = 0
        reports.append(ComponentReport(value, int(relabelled.max()), voxels, int(largest.sum())))
    return filtered, reports
