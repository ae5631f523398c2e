"""Volume nodes <-> SimpleITK images, keeping the geometry.

Slicer stores geometry in RAS, ITK (and every file the engine writes) in LPS: the two differ by
a sign flip of the first two axes, applied to the origin and to the direction matrix.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_matrix(volume_node: slicer.vtkMRMLVolumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def _direction_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(3)] for row in range(3)])


def array_from_image_data(image_data: vtk.vtkImageData) -> np.ndarray:
    """A copy of the voxels as a (k, j, i[, components]) array, the order SimpleITK uses."""
    shape = tuple(reversed(image_data.GetDimensions()))
    components = image_data.GetNumberOfScalarComponents()
    if components > 1:
        shape = (*shape, components)
    return numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(shape).copy()


def image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """A single-component ``vtkImageData`` holding a copy of a (k, j, i) array."""
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*reversed(array.shape))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image_data.GetPointData().SetScalars(scalars)
    return image_data


def image_from_volume_node(volume_node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """The node's voxels as a SimpleITK image with the same spacing, origin and direction."""
    image = sitk.GetImageFromArray(
        array_from_image_data(volume_node.GetImageData()),
        isVector=volume_node.GetImageData().GetNumberOfScalarComponents() > 1,
    )
    image.SetSpacing(volume_node.GetSpacing())
    image.SetOrigin(tuple(_RAS_FROM_LPS @ np.asarray(volume_node.GetOrigin())))
    image.SetDirection(tuple((_RAS_FROM_LPS @ _direction_ras(volume_node)).ravel()))
    return image


def update_volume_node_from_image(volume_node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> None:
    """Replace the node's voxels and geometry with ``image``'s (a scalar 3D image)."""
    direction_ras = _RAS_FROM_LPS @ np.asarray(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction_ras[row, column])
    volume_node.SetSpacing(image.GetSpacing())
    volume_node.SetOrigin(tuple(_RAS_FROM_LPS @ np.asarray(image.GetOrigin())))
    volume_node.SetIJKToRASDirectionMatrix(matrix)
    volume_node.SetAndObserveImageData(image_data_from_array(sitk.GetArrayFromImage(image)))


def oriented_image_from_array(
    array: np.ndarray, like: slicer.vtkMRMLVolumeNode
) -> slicer.vtkOrientedImageData:
    """A (k, j, i) array on ``like``'s voxel grid as oriented image data, the form segments
    are stored in."""
    oriented = slicer.vtkOrientedImageData()
    oriented.ShallowCopy(image_data_from_array(array))
    oriented.SetImageToWorldMatrix(ijk_to_ras_matrix(like))
    return oriented


def slice_under_view(
    volume_node: slicer.vtkMRMLScalarVolumeNode, slice_node: slicer.vtkMRMLSliceNode
) -> int | None:
    """The slice ``index`` of the volume the view shows, or None when the view is not on one of
    the volume's slices (turned to another plane, or outside the volume)."""
    slice_to_ras = slice_node.GetSliceToRAS()
    centre = [slice_to_ras.GetElement(row, 3) for row in range(3)]
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        from_world = vtk.vtkGeneralTransform()
        transform.GetTransformFromWorld(from_world)
        centre = from_world.TransformPoint(centre)
    ijk = ras_to_ijk.MultiplyPoint((*centre, 1.0))
    normal_ijk = ras_to_ijk.MultiplyPoint((*[slice_to_ras.GetElement(row, 2) for row in range(3)], 0.0))
    if abs(normal_ijk[2]) < 0.999 * np.linalg.norm(normal_ijk[:3]):
        return None
    index = round(ijk[2])
    inside = abs(ijk[2] - index) < 0.25 and 0 <= index < volume_node.GetImageData().GetDimensions()[2]
    return index if inside else None
