"""The real Slicer core (``slicer-core`` from PyPI), set up the way a Slicer application does it.

The sequence follows trame-slicer's ``SlicerApp``: a scene with the default crosshair, the
application logic with its colour logic and default colour tables, the Colors, Volumes,
Segmentations and Markups module logics registered under their module names (Markups registers
the ROI's storage node, so a saved ROI loads back), the default slice orientation presets, and a
slice logic per view of the conventional layout (which creates the slice and slice-composite
nodes the overlays are shown in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

SLICE_VIEWS = ("Red", "Yellow", "Green")


@dataclass
class SlicerCore:
    scene: slicer.vtkMRMLScene
    application_logic: slicer.vtkSlicerApplicationLogic
    volumes_logic: slicer.vtkSlicerVolumesLogic
    module_logics: list = field(default_factory=list)

    def node_ids(self) -> list[str]:
        """IDs of every node in the scene, to check that an operation left it unchanged."""
        return [self.scene.GetNthNode(index).GetID() for index in range(self.scene.GetNumberOfNodes())]


def _register(core: SlicerCore, name: str, logic: vtk.vtkObject) -> None:
    logic.SetMRMLApplicationLogic(core.application_logic)
    logic.SetMRMLScene(core.scene)
    core.application_logic.SetModuleLogic(name, logic)
    core.module_logics.append(logic)


def start_slicer_core() -> SlicerCore:
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)

    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    application_logic.GetColorLogic().SetMRMLScene(scene)
    application_logic.GetColorLogic().AddDefaultColorNodes()
    application_logic.SetSliceLogics(vtk.vtkCollection())
    application_logic.SetViewLogics(vtk.vtkCollection())

    core = SlicerCore(scene, application_logic, slicer.vtkSlicerVolumesLogic())
    application_logic.SetModuleLogic("Colors", application_logic.GetColorLogic())
    _register(core, "Volumes", core.volumes_logic)
    _register(core, "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
    _register(core, "Markups", slicer.vtkSlicerMarkupsLogic())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    for view in SLICE_VIEWS:
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLApplicationLogic(application_logic)
        slice_logic.SetMRMLScene(scene)
        slice_logic.AddSliceNode(view)
        application_logic.GetSliceLogics().AddItem(slice_logic)
        core.module_logics.append(slice_logic)
    return core


def roi_around_voxels(scene, volume_node, first, last) -> slicer.vtkMRMLMarkupsROINode:
    """An ROI node whose faces pass through the centres of voxels ``first`` and ``last``, in the
    volume's own RAS frame (the phantom's axes are the RAS axes up to sign and order)."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    corners = np.array([ijk_to_ras.MultiplyPoint((*corner, 1))[:3] for corner in (first, last)])
    roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    roi_node.SetCenterWorld(*corners.mean(axis=0))
    roi_node.SetSizeWorld(*np.abs(corners[1] - corners[0]))
    return roi_node
