"""Reading and writing volumes with their geometry (spacing, origin, direction) kept.

Arrays handed to the rest of the engine are in image index order (x, y, z), the order of
SimpleITK's index and of NIfTI, so that patch sizes and spacings read the same everywhere.
"""

from __future__ import annotations

import errno
import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.io.atomic_write import atomic_path, recover_folder, write_errors_named

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Characters Windows refuses in a file name; Slicer's node names often hold ':' and '/'.
UNSAFE_NAME_CHARACTERS = frozenset('<>:"/\\|?*')
#: Device names Windows reserves, whatever the extension.
RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))]
)


def check_file_name(path: str | Path) -> None:
    """Refuse an output whose file name would fail, or land somewhere else, on one of the
    systems the Slicer modules run on: Windows' forbidden characters, control characters, a
    name ending in a space or a dot, or a reserved device name. Spaces and non-ASCII letters
    are fine."""
    name = Path(path).name
    unsafe = sorted(
        {character for character in name if character in UNSAFE_NAME_CHARACTERS or ord(character) < 32}
    )
    if unsafe:
        shown = " ".join(repr(character) for character in unsafe)
        raise InputError(f"{name!r}: a file name cannot hold {shown}; rename the output.")
    if not name.strip(" .") or name != name.rstrip(" .") or name.split(".")[0].upper() in RESERVED_NAMES:
        raise InputError(f"{name!r} is not a usable file name on every system; rename the output.")


def image_suffix(path: str | Path) -> str:
    """The image-format suffix of ``path`` (``.nii.gz`` counts as one suffix)."""
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D scalar image, with a clear :class:`InputError` for anything unusable."""
    path = Path(path)
    recover_folder(path.parent)  # a write killed midway is completed before anything reads it
    if not path.exists():
        raise InputError(f"{path}: file not found. Check the path and try again.")
    if not path.is_file():
        raise InputError(f"{path}: is not a file.")
    if image_suffix(path) not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}.")
    if image_suffix(path) in (".nii", ".nii.gz"):
        check_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
        # Force the whole pixel buffer to be decoded now, so that a truncated file fails here.
        sitk.GetArrayViewFromImage(image)
    except RuntimeError as error:
        raise InputError(
            f"{path}: not a readable image (truncated or corrupt file?). Reader said: {itk_reason(error)}"
        ) from error
    check_volume_shape(image, path)
    return as_3d(image)


def itk_reason(error: RuntimeError) -> str:
    """ITK's own sentence from a SimpleITK exception, without the source location and object
    address. Its trailing "Reason:" line repeats a stale errno ("No such file or directory" for a
    file that is there but cut short), so it is used only when ITK says nothing else."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    said = [re.sub(r"^ITK ERROR: [^:]*: ", "", line) for line in lines if line.startswith("ITK ERROR")]
    return said[-1] if said else (lines[-1] if lines else "unknown reason")


#: NIfTI's codes for floating-point voxels, whose NaN and Inf ITK would read as 0.
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
#: Bytes read at a time; a multiple of every voxel size.
CHUNK_BYTES = 1 << 22


def check_nifti(path: Path, finite: bool = True) -> None:
    """Refuse a NIfTI file that is shorter than its header says (ITK reads the missing voxels as
    zeros, and its writer only prints a warning when it could not write them all), and with
    ``finite`` one holding NaN or infinite voxels (ITK's reader replaces them with 0, which
    would hide a broken export). ITK reads the header; the voxels are checked in one pass over
    the file, decompressed to its end for .nii.gz (where gzip's checksum finds a cut or
    corrupt stream). No nibabel: its import was a quarter of a second of every start."""
    offset, voxels, bitpix, datatype = _nifti_header(path)
    expected = offset + voxels * bitpix // 8
    dtype = NIFTI_FLOAT_TYPES.get(datatype) if finite else None
    stored, not_finite = _scan_voxels(path, offset, expected, dtype)
    if stored < expected:
        raise InputError(
            f"{path}: truncated: its header describes {expected} bytes but the file holds {stored}. "
            "Copy or export the file again."
        )
    if not_finite:
        raise InputError(
            f"{path}: {not_finite} voxels are NaN or infinite. Replace them (e.g. with the minimum "
            "intensity) before segmenting."
        )


def _nifti_header(path: Path) -> tuple[int, int, int, int]:
    """(voxel data offset, voxels, bits per voxel, datatype code) from ITK's NIfTI header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NiftiImageIO")
    try:
        reader.ReadImageInformation()
        header = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
        dimensions = [int(header[f"dim[{axis}]"]) for axis in range(1, int(header["dim[0]"]) + 1)]
        bitpix, datatype = int(header["bitpix"]), int(header["datatype"])
    except (RuntimeError, KeyError, ValueError) as error:
        reason = itk_reason(error) if isinstance(error, RuntimeError) else f"no {error} in its header"
        raise InputError(f"{path}: not a readable image (not NIfTI: {reason}).") from error
    # The voxels follow the 348-byte header and 4-byte extension flag at the least (ITK writes a
    # vox_offset of 0 into single-file NIfTI).
    offset = max(int(float(header.get("vox_offset", "0"))), 352)
    return offset, int(np.prod(dimensions, dtype=np.int64)), bitpix, datatype


def _scan_voxels(path: Path, start: int, end: int, dtype: str | None) -> tuple[int, int]:
    """The bytes ``path`` holds (decompressed for .gz) and, with a numpy ``dtype``, how many of
    the values between byte ``start`` and ``end`` are not finite."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    position, not_finite, pending = 0, 0, b""
    try:
        with opener(path, "rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                if dtype is not None:
                    if position == 0:
                        dtype = _byte_order(chunk) + dtype
                    inside = pending + chunk[max(start - position, 0) : max(end - position, 0)]
                    usable = len(inside) - len(inside) % int(dtype[-1])
                    values = np.frombuffer(inside[:usable], dtype=dtype)
                    not_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
                    pending = inside[usable:]
                position += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(
            f"{path}: not a readable image: the compressed data is truncated or corrupt ({error}). "
            "Copy or export the file again."
        ) from error
    return position, not_finite


def _byte_order(first_bytes: bytes) -> str:
    """numpy's byte order of a NIfTI file: its header's first field (348, or 540 for NIfTI-2)
    reads right in the file's order."""
    size = int.from_bytes(first_bytes[:4], "little")
    return "<" if size in (348, 540) else ">"


def check_volume_shape(image: sitk.Image, source: str | Path) -> None:
    """Refuse images that are not single-channel real-valued 3D volumes."""
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(
            f"{source}: has complex voxels (e.g. raw k-space or phase data); a real-valued magnitude "
            "image is needed. Export the magnitude image instead."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{source}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a single-channel (scalar) volume is needed. Split the channels first."
        )
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4 and size[3] == 1:
        return
    if dimension != 3:
        raise InputError(
            f"{source}: is a {dimension}D image of size {size}; a 3D volume is needed. "
            + (
                "Extract one time point / channel first."
                if dimension > 3
                else "Load the whole series as one 3D volume."
            )
        )
    if min(size) < 2:
        raise InputError(
            f"{source}: has size {size}, i.e. a single slice; a 3D volume with at least 2 "
            "voxels along every axis is needed."
        )


def as_3d(image: sitk.Image) -> sitk.Image:
    """Drop a trailing length-1 fourth axis (some writers store 3D volumes as 4D)."""
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        return sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
    return image


def image_to_array(image: sitk.Image, dtype: type = np.float32) -> np.ndarray:
    """Voxel array in (x, y, z) index order."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=dtype)


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Image from an (x, y, z) array with exactly the geometry of ``reference``."""
    if tuple(array.shape) != tuple(reference.GetSize()):
        raise ValueError(f"array shape {array.shape} does not match image size {reference.GetSize()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(reference)
    return image


def save_image(image: sitk.Image, temporary: Path, target: Path, compress: bool = True) -> None:
    """Write ``image`` into ``temporary`` (the atomic stand-in for ``target``); a failed write is
    an :class:`OSError` naming ``target``. ITK's NIfTI writer only prints a warning when the disk
    is full, so a NIfTI file is checked to be whole before it may replace ``target``."""
    with write_errors_named(target):
        sitk.WriteImage(image, str(temporary), useCompression=compress)
    if image_suffix(target) in (".nii", ".nii.gz"):
        try:
            check_nifti(temporary, finite=False)
        except InputError as error:
            raise OSError(
                errno.EIO,
                "the file was cut short while being written (a full disk or a file-size limit?)",
                str(target),
            ) from error


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write ``image`` atomically: either the whole new file is at ``path`` or nothing changed."""
    with atomic_path(path) as temporary:
        save_image(image, temporary, Path(path), compress)


#: How far two voxel grids may differ (mm, or direction cosines) and still be one grid.
GRID_TOLERANCE = 1e-4
GRID_PROPERTIES = ("size", "spacing", "origin", "direction")


def grid_of(image: sitk.Image) -> dict[str, tuple]:
    """An image's voxel grid, keyed as :func:`grid_difference` compares it."""
    return {
        "size": image.GetSize(),
        "spacing": image.GetSpacing(),
        "origin": image.GetOrigin(),
        "direction": image.GetDirection(),
    }


def grid_difference(first: dict[str, tuple], second: dict[str, tuple]) -> str | None:
    """The first of size, spacing, origin and direction in which two grids (:func:`grid_of`, or
    a header read alike) differ by more than :data:`GRID_TOLERANCE`; None when they are one."""
    for key in GRID_PROPERTIES:
        same_length = len(first[key]) == len(second[key])
        if not (same_length and np.allclose(first[key], second[key], rtol=0.0, atol=GRID_TOLERANCE)):
            return key
    return None


def same_geometry(first: sitk.Image, second: sitk.Image, tolerance: float = 1e-6) -> bool:
    """True when both images have the same size, spacing, origin and direction."""
    return (
        first.GetSize() == second.GetSize()
        and np.allclose(first.GetSpacing(), second.GetSpacing(), atol=tolerance)
        and np.allclose(first.GetOrigin(), second.GetOrigin(), atol=tolerance)
        and np.allclose(first.GetDirection(), second.GetDirection(), atol=tolerance)
    )
