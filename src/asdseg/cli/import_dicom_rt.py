"""``asdseg import-dicom-rt``: a case added to an nnU-Net dataset from a DICOM series and its RT
structure set."""

from __future__ import annotations

import argparse
import sys

from asdseg.cli.arguments import structure_pair


def add_parser(commands: argparse._SubParsersAction) -> None:
    dicom_rt = commands.add_parser(
        "import-dicom-rt",
        help="add a case to an nnU-Net dataset from a DICOM series and its RT structure set (needs pydicom)",
    )
    dicom_rt.add_argument("--series", required=True, help="the folder of the DICOM image series")
    dicom_rt.add_argument("--rtstruct", required=True, help="the RTSTRUCT file drawn on that series")
    dicom_rt.add_argument(
        "--dataset", required=True, help="the nnU-Net v2 dataset folder (its dataset.json names the labels)"
    )
    dicom_rt.add_argument("--case", required=True, help="the new case's name, e.g. pelvis_001")
    dicom_rt.add_argument(
        "--structure",
        type=structure_pair,
        action="append",
        default=[],
        metavar="LABEL=STRUCTURE",
        help="which structure a label comes from, where the names differ (default: the label's own name, "
        "ignoring case); repeat per label",
    )
    dicom_rt.set_defaults(handler=command_import_dicom_rt)


def command_import_dicom_rt(args: argparse.Namespace) -> int:
    from asdseg.io.dicom_rt import import_rtstruct

    imported = import_rtstruct(args.series, args.rtstruct, args.dataset, args.case, dict(args.structure))
    for label, structure in imported.structures.items():
        print(f"{label}: structure {structure!r}, {imported.voxels[label]} voxels")
    for structure, points in imported.clipped_points.items():
        print(
            f"warning: structure {structure!r}: {points} contour point(s) lie outside the series' image; "
            "the label ends at the image's edge there.",
            file=sys.stderr,
        )
    if imported.overlapping_voxels:
        print(
            f"{imported.overlapping_voxels} voxels lie in more than one structure; each went to the label "
            "listed later in dataset.json."
        )
    print(f"wrote {imported.image} and {imported.label}")
    return 0
