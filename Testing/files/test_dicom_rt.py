"""DICOM series + RT structure set -> a case of an nnU-Net dataset, on a synthetic non-square
MR series whose RTSTRUCT contours are written by hand in patient coordinates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.cli import main
from asdseg.io.datasets import check_dataset, read_dataset

pydicom = pytest.importorskip("pydicom", reason="DICOM RT import needs pydicom (pip install -e .[test])")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

ROWS, COLUMNS, SLICES = 24, 20, 10
#: (row spacing, column spacing) as DICOM's PixelSpacing, and the slice distance, in mm.
PIXEL_SPACING, SLICE_SPACING = (1.5, 1.0), 2.5
ORIGIN = (-12.0, 30.0, -40.0)
MR_IMAGE, RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.481.3"
#: Structure name -> (first slice, last slice, first row, last row, first column, last column).
BOXES = {"Bladder": (2, 6, 3, 10, 4, 15), "CTV Prostate": (4, 8, 13, 20, 6, 11)}
#: A second contour inside the bladder on one slice: a hole (slice, rows, columns).
HOLE = (4, 5, 7, 8, 10)


def _file_dataset(sop_class: str, sop_instance: str, study: str, series: str, frame: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, sop_instance
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, frame
    dataset.PatientName, dataset.PatientID, dataset.StudyDate, dataset.StudyTime = (
        "Phantom^Pelvis",
        "P1",
        "20260101",
        "1200",
    )
    dataset.StudyID, dataset.SeriesNumber = "1", 1
    return dataset


def write_series(folder: Path) -> tuple[list[str], str, str, np.ndarray]:
    """A 10-slice axial MR series (24 rows x 20 columns); returns its SOP instance UIDs, study
    and frame-of-reference UIDs, and the voxels as a (slice, row, column) array."""
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    voxels = np.random.default_rng(0).integers(0, 1000, (SLICES, ROWS, COLUMNS)).astype(np.uint16)
    uids = []
    for index in range(SLICES):
        uid = generate_uid()
        dataset = _file_dataset(MR_IMAGE, uid, study, series, frame)
        dataset.Modality, dataset.InstanceNumber = "MR", index + 1
        dataset.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + index * SLICE_SPACING]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.PixelSpacing, dataset.SliceThickness = list(PIXEL_SPACING), SLICE_SPACING
        dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = ROWS, COLUMNS, 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = (
            16,
            16,
            15,
            0,
        )
        dataset.PixelData = voxels[index].tobytes()
        # Written out of order: the importer must sort the slices by position.
        dataset.save_as(folder / f"slice_{(index * 7) % SLICES:02d}.dcm", enforce_file_format=True)
        uids.append(uid)
    return uids, study, frame, voxels


def box_contour(index: int, rows: tuple[int, int], columns: tuple[int, int], uid: str) -> Dataset:
    """A closed planar contour on slice ``index`` around the voxels of the given rows and
    columns (through the outer corners of the edge voxels, in patient coordinates)."""
    z = ORIGIN[2] + index * SLICE_SPACING
    corners = [
        (columns[0] - 0.5, rows[0] - 0.5),
        (columns[1] + 0.5, rows[0] - 0.5),
        (columns[1] + 0.5, rows[1] + 0.5),
        (columns[0] - 0.5, rows[1] + 0.5),
    ]
    points = []
    for column, row in corners:
        points += [ORIGIN[0] + column * PIXEL_SPACING[1], ORIGIN[1] + row * PIXEL_SPACING[0], z]
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = MR_IMAGE, uid
    contour = Dataset()
    contour.ContourImageSequence = Sequence([image])
    contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(corners)
    contour.ContourData = points
    return contour


def box_contours(box: tuple[int, ...], uids: list[str], hole: tuple[int, ...] | None) -> Sequence:
    """One contour per slice of the box, and the hole's contour inside it."""
    first_slice, last_slice, first_row, last_row, first_column, last_column = box
    contours = [
        box_contour(index, (first_row, last_row), (first_column, last_column), uids[index])
        for index in range(first_slice, last_slice + 1)
    ]
    if hole is not None:
        contours.append(box_contour(hole[0], hole[1:3], hole[3:5], uids[hole[0]]))
    return Sequence(contours)


def write_rtstruct(path: Path, uids: list[str], study: str, frame: str, boxes: dict) -> None:
    dataset = _file_dataset(RT_STRUCTURE_SET, generate_uid(), study, generate_uid(), frame)
    dataset.Modality, dataset.StructureSetLabel = "RTSTRUCT", "pelvis"
    reference = Dataset()
    reference.FrameOfReferenceUID = frame
    dataset.ReferencedFrameOfReferenceSequence = Sequence([reference])
    rois, roi_contours, observations = [], [], []
    for number, (name, box) in enumerate(boxes.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = number, [255, 0, 0]
        roi_contour.ContourSequence = box_contours(box, uids, HOLE if name == "Bladder" else None)
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = "ORGAN"
        observations.append(observation)
    dataset.StructureSetROISequence = Sequence(rois)
    dataset.ROIContourSequence = Sequence(roi_contours)
    dataset.RTROIObservationsSequence = Sequence(observations)
    dataset.save_as(path, enforce_file_format=True)


@pytest.fixture
def dicom_case(tmp_path: Path) -> dict:
    uids, study, frame, voxels = write_series(tmp_path / "series")
    write_rtstruct(tmp_path / "rtstruct.dcm", uids, study, frame, BOXES)
    dataset = tmp_path / "Dataset001_Pelvis"
    dataset.mkdir()
    description = {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "bladder": 1, "prostate": 2},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    (dataset / "dataset.json").write_text(json.dumps(description))
    return {
        "root": tmp_path,
        "dataset": dataset,
        "voxels": voxels,
        "uids": uids,
        "study": study,
        "frame": frame,
    }


def run_import(case: dict, *extra: str, name: str = "pelvis_001") -> int:
    root = case["root"]
    arguments = ["--series", str(root / "series"), "--rtstruct", str(root / "rtstruct.dcm")]
    return main(["import-dicom-rt", *arguments, "--dataset", str(case["dataset"]), "--case", name, *extra])


def expected_label_map() -> np.ndarray:
    expected = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    for value, (first_slice, last_slice, first_row, last_row, first_column, last_column) in enumerate(
        BOXES.values(), start=1
    ):
        expected[first_slice : last_slice + 1, first_row : last_row + 1, first_column : last_column + 1] = (
            value
        )
    hole_slice, first_row, last_row, first_column, last_column = HOLE
    expected[hole_slice, first_row : last_row + 1, first_column : last_column + 1] = 0
    return expected


def test_a_structure_set_becomes_a_case_on_the_series_grid(dicom_case: dict, capsys) -> None:
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 0
    assert "bladder: structure 'Bladder'" in capsys.readouterr().out
    dataset = dicom_case["dataset"]
    image = sitk.ReadImage(str(dataset / "imagesTr" / "pelvis_001_0000.nii.gz"))
    label = sitk.ReadImage(str(dataset / "labelsTr" / "pelvis_001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), dicom_case["voxels"])  # sorted by position
    assert image.GetSpacing() == pytest.approx((PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_SPACING))
    assert image.GetOrigin() == pytest.approx(ORIGIN)
    assert np.array_equal(sitk.GetArrayFromImage(label), expected_label_map())
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    parsed = read_dataset(dataset)
    assert parsed.names == ["pelvis_001"]
    check_dataset(parsed)  # geometry and label values as training will read them


def test_an_unmatched_label_names_the_structures_and_writes_nothing(dicom_case: dict, capsys) -> None:
    before = (dicom_case["dataset"] / "dataset.json").read_text()
    assert run_import(dicom_case) == 2
    error = capsys.readouterr().err
    assert "no structure for prostate; the structure set has Bladder, CTV Prostate" in error
    assert '--structure prostate="Bladder"' in error
    assert sorted(path.name for path in dicom_case["dataset"].iterdir()) == ["dataset.json"]
    assert (dicom_case["dataset"] / "dataset.json").read_text() == before


def test_an_existing_case_is_refused_and_left_as_it_was(dicom_case: dict, capsys) -> None:
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 0
    label_path = dicom_case["dataset"] / "labelsTr" / "pelvis_001.nii.gz"
    written = label_path.read_bytes()
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 2
    assert "case 'pelvis_001' exists already" in capsys.readouterr().err
    assert label_path.read_bytes() == written
    assert json.loads((dicom_case["dataset"] / "dataset.json").read_text())["numTraining"] == 1


def test_a_mapping_to_a_label_the_dataset_lacks_is_refused(dicom_case: dict, capsys) -> None:
    assert run_import(dicom_case, "--structure", "liver=Bladder") == 2
    assert "--structure names label(s) liver, which dataset.json does not have" in capsys.readouterr().err


def test_a_mapping_without_a_structure_is_a_usage_error(dicom_case: dict, capsys) -> None:
    with pytest.raises(SystemExit):
        run_import(dicom_case, "--structure", "prostate")
    assert "give LABEL=STRUCTURE" in capsys.readouterr().err


def test_contours_of_another_frame_of_reference_are_refused(dicom_case: dict, capsys) -> None:
    uids, study, _, _ = write_series(dicom_case["root"] / "other_series")
    write_rtstruct(dicom_case["root"] / "rtstruct.dcm", uids, study, generate_uid(), BOXES)
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 2
    assert "they do not belong together" in capsys.readouterr().err
    assert sorted(path.name for path in dicom_case["dataset"].iterdir()) == ["dataset.json"]


def _cut_slice(series: Path) -> None:
    """Slice 3 (file slice_01.dcm: files are written out of order) cut in half."""
    path = series / "slice_01.dcm"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_middle_slice(series: Path) -> None:
    (series / "slice_01.dcm").unlink()


def _not_dicom(series: Path) -> None:
    (series / "slice_99.dcm").write_bytes(b"\0" * 50)


BROKEN_SERIES = {
    "a slice cut in half": (_cut_slice, "slice_01.dcm"),
    "a slice missing in the middle": (_drop_middle_slice, "not evenly spaced"),
    "a file that is not DICOM": (_not_dicom, "slice_99.dcm is not readable DICOM"),
}


@pytest.mark.parametrize("problem", sorted(BROKEN_SERIES))
def test_a_series_missing_a_slice_is_refused_and_writes_nothing(
    problem: str, dicom_case: dict, capsys
) -> None:
    damage, message = BROKEN_SERIES[problem]
    damage(dicom_case["root"] / "series")
    before = (dicom_case["dataset"] / "dataset.json").read_text()
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert sorted(path.name for path in dicom_case["dataset"].iterdir()) == ["dataset.json"]
    assert (dicom_case["dataset"] / "dataset.json").read_text() == before


def test_contour_points_outside_the_image_are_counted(dicom_case: dict, capsys) -> None:
    """The bladder box widened past the last column on its 5 slices: 2 corners each lie outside."""
    wide = {**BOXES, "Bladder": (2, 6, 3, 10, 4, COLUMNS + 3)}
    case = dicom_case
    write_rtstruct(case["root"] / "rtstruct.dcm", case["uids"], case["study"], case["frame"], wide)
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 0
    assert "structure 'Bladder': 10 contour point(s) lie outside the series' image" in capsys.readouterr().err


def _rtstruct_with_contour(case: dict, change) -> None:
    """The case's structure set with ``change`` applied to the bladder's first contour."""
    path = case["root"] / "rtstruct.dcm"
    write_rtstruct(path, case["uids"], case["study"], case["frame"], BOXES)
    dataset = pydicom.dcmread(path)
    change(dataset.ROIContourSequence[0].ContourSequence[0])
    dataset.save_as(path, enforce_file_format=True)


def _eleven_numbers(contour) -> None:
    contour.ContourData = list(contour.ContourData)[:11]


def _a_nan_coordinate(contour) -> None:
    contour.ContourData = ["nan", *list(contour.ContourData)[1:]]


def _no_points(contour) -> None:
    del contour.ContourData


def _moved_far_away(contour) -> None:
    contour.ContourData = [
        value + 1000.0 if index % 3 == 0 else value for index, value in enumerate(contour.ContourData)
    ]


BROKEN_CONTOURS = {
    "11 coordinates": (_eleven_numbers, "holds 11 value(s)"),
    "a NaN coordinate": (_a_nan_coordinate, "no usable ContourData"),
    "no ContourData": (_no_points, "holds 0 value(s)"),
    "a contour wholly outside the image": (_moved_far_away, "lies wholly outside"),
}


@pytest.mark.parametrize("problem", sorted(BROKEN_CONTOURS))
def test_a_malformed_or_misplaced_contour_is_refused_and_writes_nothing(
    problem: str, dicom_case: dict, capsys
) -> None:
    change, message = BROKEN_CONTOURS[problem]
    _rtstruct_with_contour(dicom_case, change)
    assert run_import(dicom_case, "--structure", "prostate=CTV Prostate") == 2
    error = capsys.readouterr().err
    assert message in error and "Bladder" in error and "Traceback" not in error
    assert sorted(path.name for path in dicom_case["dataset"].iterdir()) == ["dataset.json"]
