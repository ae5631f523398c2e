"""Confidence and signed-distance overlays: their colour tables, windows and slice-view layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

#: Overlay kinds a user can choose; "none" hides the foreground layer.
OVERLAY_KINDS = ("none", "confidence", "sdm")


@dataclass(frozen=True)
class OverlayStyle:
    """How one kind of map is shown: a colour ramp through (position, RGB) anchors and the
    window that maps the data onto the ramp."""

    color_table_name: str
    anchors: tuple[tuple[float, tuple[int, int, int]], ...]
    description: str


#: Confidence: red where the model is unsure, through yellow, to blue where it is sure, so the
#: eye goes to the voxels worth checking.
CONFIDENCE_STYLE = OverlayStyle(
    "ASDSeg confidence",
    ((0.0, (215, 25, 28)), (0.5, (253, 174, 97)), (0.75, (255, 255, 191)), (1.0, (44, 123, 182))),
    "confidence 0 (red, unsure) to 1 (blue, sure)",
)
#: Signed distance: negative inside the organ (blue), zero on its surface (white), positive
#: outside (red).
SDM_STYLE = OverlayStyle(
    "ASDSeg signed distance",
    ((0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43))),
    "signed distance: inside (blue), surface (white), outside (red)",
)
STYLES = {"confidence": CONFIDENCE_STYLE, "sdm": SDM_STYLE}

_TABLE_SIZE = 256


def color_table_node(scene: slicer.vtkMRMLScene, style: OverlayStyle) -> slicer.vtkMRMLColorTableNode:
    """The scene's colour table for ``style``, created once and reused by every overlay."""
    existing = scene.GetFirstNode(style.color_table_name, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    positions = np.array([position for position, _ in style.anchors])
    colors = np.array([color for _, color in style.anchors], dtype=float) / 255.0
    samples = np.linspace(0.0, 1.0, _TABLE_SIZE)
    ramp = np.stack([np.interp(samples, positions, colors[:, channel]) for channel in range(3)], axis=1)
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", style.color_table_name)
    node.SetTypeToUser()
    node.SetNumberOfColors(_TABLE_SIZE)
    node.SetDescription(style.description)
    for index, (red, green, blue) in enumerate(ramp):
        node.SetColor(index, f"{samples[index]:.3f}", red, green, blue, 1.0)
    return node


def style_overlay_node(
    volume_node: slicer.vtkMRMLScalarVolumeNode, kind: str, window: tuple[float, float]
) -> None:
    """Give a confidence or SDM volume its colour table and a fixed window."""
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_table_node(volume_node.GetScene(), STYLES[kind]).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)


def sdm_window(sdm: np.ndarray) -> tuple[float, float]:
    """Symmetric around 0 so that the surface is always white."""
    extent = float(np.max(np.abs(sdm))) if sdm.size else 0.0
    extent = max(extent, 1e-3)
    return -extent, extent


def show_in_slice_views(
    scene: slicer.vtkMRMLScene,
    background: slicer.vtkMRMLVolumeNode | None,
    foreground: slicer.vtkMRMLVolumeNode | None,
    opacity: float,
) -> None:
    """Show ``background`` with ``foreground`` (or nothing) over it in every slice view."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)
