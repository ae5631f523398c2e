"""Every argument type and shared option of the command line, in one place: range-checked numbers,
label values, ``LABEL=STRUCTURE`` pairs, the ``--roi`` options and the output-file checks. A bad
value is refused with the option's name before any work (argparse prints it and exits 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from asdseg.errors import InputError
from asdseg.io.image_io import SUPPORTED_SUFFIXES, image_suffix

#: ``--as-new-version`` of ``models install`` and ``release``.
AS_NEW_VERSION_HELP = (
    "allow a shipped model's name (refused without it): the new model, whose version must differ from "
    "the shipped one's, is then used wherever that name is asked for, and 'asdseg models' says so; "
    "remove its folder from your model folder to go back to the shipped one"
)


#: ``asdseg train``'s and ``asdseg plan``'s recipes (those of asdseg.training.config.RECIPES).
RECIPE_CHOICES = ("supervised", "asdnet", "sassnet", "dan", "attention-unet")


def number_option(
    convert: Callable[[str], float], accept: Callable[[float], bool], requirement: str
) -> Callable[[str], float]:
    """An argparse ``type`` that converts and range-checks, so a bad value is refused with the
    option's name before any work (argparse prints it and exits 2)."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; it must be {requirement}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range; it must be {requirement}")
        return value

    return parse


positive_int = number_option(int, lambda value: value >= 1, "a whole number of at least 1")
non_negative_int = number_option(int, lambda value: value >= 0, "a whole number of at least 0")
window_overlap = number_option(float, lambda value: 0.0 <= value < 1.0, "in [0, 1), e.g. 0.5")
positive_float = number_option(
    float, lambda value: math.isfinite(value) and value > 0, "a positive finite number, e.g. 0.005"
)
memory_gigabytes = number_option(
    float, lambda value: math.isfinite(value) and value >= 0.1, "at least 0.1 (GB), e.g. 8"
)
finite_float = number_option(float, math.isfinite, "a finite number, e.g. -12.5 or 1.5e-05")


def label_values(text: str) -> list[int]:
    """``--labels 1,2``: label values, each a whole number in 1..65535."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated label values, e.g. 1,2") from None
    if any(not 1 <= value <= 65535 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: label values are whole numbers from 1 to 65535")
    return values


def structure_pair(text: str) -> tuple[str, str]:
    """``LABEL=STRUCTURE`` from the command line (the structure name may hold spaces and '=')."""
    label, separator, structure = text.partition("=")
    if not separator or not label.strip() or not structure.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=STRUCTURE, e.g. prostate=CTV_Prostate")
    return label.strip(), structure.strip()


def add_roi_arguments(parser: argparse.ArgumentParser, per_image: bool = False) -> None:
    """``--roi`` (once, or with ``per_image`` once per ``--image``) and ``--roi-space``."""
    what = (
        "train only inside this box (once for every --image, or once per --image in their order)"
        if per_image
        else "segment only inside this box"
    )
    parser.add_argument(
        "--roi",
        nargs=6,
        type=finite_float,
        action="append" if per_image else "store",
        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
        help=f"{what}, given by its minimum and maximum corners; the rest of the outputs is "
        "background. Physical coordinates in mm, LPS by default (the world frame of ITK, SimpleITK "
        "and NIfTI read through ITK); see --roi-space. Boxes reaching past the volume are clipped",
    )
    parser.add_argument(
        "--roi-space",
        choices=["lps", "ras", "voxel"],
        help="how --roi is given: LPS mm (default), RAS mm (the coordinates 3D Slicer shows), or "
        "the first and last voxel index (0-based, both included) along the image's i, j, k axes",
    )


def check_roi_space(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--roi-space`` without ``--roi`` (exit 2), then default it to LPS. It has no parser
    default, so that ``--roi-space`` alone can be told from no option at all."""
    if not hasattr(args, "roi_space"):
        return
    if args.roi_space is not None and args.roi is None:
        # Without the top-level usage, which names no --roi-space: the command's own line.
        parser.exit(
            2,
            f"asdseg {args.command}: error: --roi-space does nothing without --roi; give --roi X0 Y0 Z0 "
            "X1 Y1 Z1 or leave it out\n",
        )
    args.roi_space = args.roi_space or "lps"


def check_text_output(path: str | None, option: str, suffix: str, what: str) -> None:
    """Refuse an output option whose file name does not end in ``suffix`` (a .nii.gz that would
    hold JSON or CSV)."""
    if path is not None and not path.lower().endswith(suffix):
        raise InputError(
            f"{option} {path}: the {what} is written as {suffix[1:].upper()}; give a {suffix} file name."
        )


def check_image_output(path: str | None, option: str) -> None:
    """Refuse an output option naming a file without an image suffix."""
    if path is not None and image_suffix(path) not in SUPPORTED_SUFFIXES:
        raise InputError(f"{option} {path}: use an image suffix ({', '.join(SUPPORTED_SUFFIXES)}).")
