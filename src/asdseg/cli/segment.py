"""``asdseg segment``: one volume, or several (files or a folder) with the model loaded once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from asdseg.cli.arguments import add_roi_arguments, check_image_output, positive_int, window_overlap
from asdseg.cli.console import progress_reporter, warn, warn_about_precision
from asdseg.errors import AsdsegError, InputError
from asdseg.io.image_io import read_image
from asdseg.io.output_paths import check_output_paths
from asdseg.registry.catalogue import DEFAULT_MODEL

if TYPE_CHECKING:
    import SimpleITK as sitk

    from asdseg.inference.batch import Segmenter
    from asdseg.preprocessing.roi import RegionOfInterest
    from asdseg.registry.model_card import ModelCard


def add_parser(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment a volume with an installed model")
    segment.add_argument(
        "-i",
        "--input",
        required=True,
        nargs="+",
        help="input volume (.nii, .nii.gz, .nrrd, .mha); or several, or a folder of them, segmented "
        "with the model loaded once",
    )
    segment.add_argument(
        "-o",
        "--output",
        required=True,
        help="label map to write (sidecars go beside it); with several inputs, a folder that gets "
        "<case><suffix> per volume (so do --confidence, --sdm and --probabilities)",
    )
    segment.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model name or model folder (see 'asdseg models list')",
    )
    segment.add_argument("--confidence", help="also write the voxel-wise confidence map here")
    segment.add_argument("--sdm", help="also write the signed distance map here")
    segment.add_argument(
        "--probabilities", help="also write the class probabilities here (one component per label)"
    )
    segment.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    segment.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 or fp16 on GPUs that have it, bf16 on CPUs with native bf16 (AVX512-BF16, "
        "AMX), else fp32 (bf16 is emulated and far slower on other CPUs)",
    )
    segment.add_argument(
        "--overlap", type=window_overlap, help="window overlap in [0, 1) (default: model card)"
    )
    segment.add_argument(
        "--no-mirroring",
        action="store_true",
        help="skip the test-time mirroring the model card asks for (faster, e.g. 4x with mirroring "
        "in x and y, usually a little less accurate)",
    )
    segment.add_argument("--batch-size", type=positive_int, default=1, help="windows per forward pass")
    segment.add_argument(
        "--largest-component", action="store_true", help="keep the largest component per label"
    )
    segment.add_argument("--allow-anisotropic", action="store_true", help="accept very thick slices")
    add_roi_arguments(segment)
    segment.add_argument(
        "--progress",
        default="bar",
        choices=["bar", "json"],
        help="a terminal progress bar, or JSON lines on stdout for a parent process",
    )
    segment.set_defaults(handler=command_segment)


def command_segment(args: argparse.Namespace) -> int:
    from asdseg.inference.batch import is_batch
    from asdseg.registry import find_model

    card = find_model(args.model)
    if args.confidence and not card.has_confidence:
        raise InputError(f"model {card.name!r} has no confidence network; drop --confidence.")
    if args.sdm and not card.has_sdm:
        raise InputError(f"model {card.name!r} has no signed-distance-map head; drop --sdm.")
    if is_batch(args.input):
        return _segment_volumes(args, card)
    return _segment_volume(args, card)


def _segment_volume(args: argparse.Namespace, card: ModelCard) -> int:
    """One ``-i`` file: every output option names a file."""
    from asdseg.preprocessing.roi import checked_region

    (source,) = args.input
    outputs = _map_outputs(args)
    for option, path in outputs:
        check_image_output(path, option)
    _check_segment_outputs(card, [source], [outputs])
    image = read_image(source)
    _check_output_geometry(image, source, outputs)
    roi, shown = checked_region(image, args.roi, args.roi_space, card)
    for warning in shown:
        warn(warning)
    _segment(_segmenter(args, card, roi), args.progress, image, source, outputs, shown)
    return 0


def _segment_volumes(args: argparse.Namespace, card: ModelCard) -> int:
    """``-i`` with several files or a folder: every output option names a folder, the model is
    loaded once, and a volume that fails is reported and skipped rather than ending the run."""
    from asdseg.inference.batch import batch_cases, check_output_folder

    if args.roi is not None:
        raise InputError("--roi is for one volume; segment volumes that need an ROI one at a time.")
    folders = [(option, check_output_folder(path, option)) for option, path in _map_outputs(args)]
    cases = batch_cases(args.input)
    outputs = [[(option, case.output(folder)) for option, folder in folders] for case in cases]
    _check_segment_outputs(card, [case.image for case in cases], outputs)
    started = time.monotonic()
    segmenter = _segmenter(args, card, None)
    failed = []
    for number, (case, case_outputs) in enumerate(zip(cases, outputs), start=1):
        print(f"[{number}/{len(cases)}] {case.name}", flush=True)
        try:
            image = read_image(case.image)
            _check_output_geometry(image, case.image, case_outputs)
            _segment(segmenter, args.progress, image, case.image, case_outputs, [])
        except AsdsegError as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(case.name)
    seconds = time.monotonic() - started
    done = len(cases) - len(failed)
    print(
        f"segmented {done} of {len(cases)} volumes in {seconds:.1f} s "
        f"({seconds / len(cases):.1f} s per volume)"
    )
    if failed:
        print(f"error: {len(failed)} volume(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def _map_outputs(args: argparse.Namespace) -> list[tuple[str, str | Path]]:
    """The label map and the optional maps asked for, each with its option."""
    paths = {
        "-o": args.output,
        "--confidence": args.confidence,
        "--sdm": args.sdm,
        "--probabilities": args.probabilities,
    }
    return [(option, path) for option, path in paths.items() if path is not None]


def _check_segment_outputs(
    card: ModelCard, inputs: list, outputs: list[list[tuple[str, str | Path]]]
) -> None:
    """Every file each volume's outputs would write (sidecars included), checked before any work."""
    from asdseg.inference.segment import planned_outputs

    planned = []
    for volume_outputs in outputs:
        paths = dict(volume_outputs)
        planned += planned_outputs(
            card.labels,
            paths["-o"],
            paths.get("--confidence"),
            paths.get("--sdm"),
            paths.get("--probabilities"),
        )
    check_output_paths(planned, inputs)


def _check_output_geometry(
    image: sitk.Image, source: str | Path, outputs: list[tuple[str, str | Path]]
) -> None:
    from asdseg.preprocessing.input_checks import check_output_geometry

    check_output_geometry(image, source, [path for _, path in outputs])


def _segmenter(args: argparse.Namespace, card: ModelCard, roi: RegionOfInterest | None) -> Segmenter:
    """The model loaded once, with the options of the command line."""
    from asdseg.devices import select_device
    from asdseg.inference.batch import Segmenter
    from asdseg.inference.segment import SegmentationOptions
    from asdseg.preprocessing.input_checks import DEFAULT_MAX_ANISOTROPY

    device = select_device(args.device)
    warn_about_precision(device, args.precision)
    options = SegmentationOptions(
        device=args.device,
        precision=args.precision,
        overlap=args.overlap,
        mirror_axes=() if args.no_mirroring else None,
        batch_size=args.batch_size,
        largest_component=args.largest_component,
        max_anisotropy=None if args.allow_anisotropic else DEFAULT_MAX_ANISOTROPY,
        roi=roi,
    )
    return Segmenter(card, options)


def _segment(
    segmenter: Segmenter,
    progress: str,
    image: sitk.Image,
    source: str | Path,
    outputs: list[tuple[str, str | Path]],
    shown: list[str],
) -> None:
    """Segment ``image`` and write the outputs, printing what the user should know (the
    warnings not ``shown`` already)."""
    from asdseg.inference.segment import write_result

    update, close = progress_reporter(progress, "segmenting")
    try:
        result = segmenter.segment(image, source, progress=update)
    finally:
        close()
    for warning in result.warnings:
        if warning not in shown:
            warn(warning)
    for report in result.component_reports:
        if report.components > 1:
            print(
                f"largest component of label {report.value}: kept {report.voxels_after} of "
                f"{report.voxels_before} voxels ({report.components} components)"
            )
    paths = dict(outputs)
    written = write_result(
        result, paths["-o"], paths.get("--confidence"), paths.get("--sdm"), paths.get("--probabilities")
    )
    for path in written:
        print(f"wrote {path}")
