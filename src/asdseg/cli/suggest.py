"""``asdseg suggest``: rank a volume's slices to label next, with any model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from asdseg.active.slice_scores import SECOND_OPINIONS
from asdseg.active.strategies import DEFAULT_STRATEGY
from asdseg.active.strategies import STRATEGIES as STRATEGY_NAMES
from asdseg.cli.arguments import (
    add_roi_arguments,
    check_image_output,
    check_text_output,
    non_negative_int,
    positive_int,
)
from asdseg.cli.console import progress_reporter, warn
from asdseg.io.image_io import read_image
from asdseg.io.output_paths import check_output_paths

if TYPE_CHECKING:
    import SimpleITK as sitk

    from asdseg.active.suggest import SliceSuggestion
    from asdseg.preprocessing.roi import RegionOfInterest
    from asdseg.registry.model_card import ModelCard


def add_parser(commands: argparse._SubParsersAction) -> None:
    suggest = commands.add_parser("suggest", help="rank a volume's slices to label next (any model)")
    suggest.add_argument("-i", "--image", required=True, help="the volume to rank the slices of")
    suggest.add_argument("--model", required=True, help="model name, or a model folder")
    suggest.add_argument("--labels", help="its sparse labels; their labelled slices are not suggested again")
    suggest.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGY_NAMES))
    suggest.add_argument(
        "--second-opinion",
        choices=list(SECOND_OPINIONS),
        help="what the prediction is compared with to score slices: the attention maps, the SDM head, "
        "the confidence map or mirroring (default: the model's own second head, else mirroring)",
    )
    suggest.add_argument("-k", "--budget", type=positive_int, default=5, help="how many slices to suggest")
    suggest.add_argument(
        "--min-area", type=non_negative_int, default=10, help="ignore specks smaller than this (voxels)"
    )
    suggest.add_argument("--output", help="also write every slice's scores and the suggestion as JSON")
    suggest.add_argument(
        "--segmentation",
        metavar="PATH",
        help="also write the model's label map on the image's grid, with its label sidecars (what "
        "ActiveAnnotate pre-fills the suggested slices with)",
    )
    suggest.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_roi_arguments(suggest)
    suggest.add_argument("--progress", default="bar", choices=["bar", "json"])
    suggest.set_defaults(handler=command_suggest)


def command_suggest(args: argparse.Namespace) -> int:
    from asdseg.active.second_opinion import check_second_opinion
    from asdseg.active.sparse_labels import read_sparse_labels_of
    from asdseg.active.suggestion_report import format_suggestions, suggestion_record, write_suggestions
    from asdseg.inference.segment import write_result
    from asdseg.preprocessing.roi import checked_region
    from asdseg.registry import find_model

    card = find_model(args.model)
    if args.second_opinion is not None:
        check_second_opinion(card, args.second_opinion)
    _check_outputs(args, card)
    image = read_image(args.image)
    roi, shown = checked_region(image, args.roi, args.roi_space, card)
    for warning in shown:
        warn(warning)
    labelled = read_sparse_labels_of(image, args.labels, args.image).labelled_slices if args.labels else set()
    suggestion = _suggest(args, card, image, labelled, roi)
    record = suggestion_record(suggestion, args.strategy, labelled)
    print(format_suggestions(record))
    if args.output:
        write_suggestions(record, args.output)
        print(f"wrote {args.output}")
    if args.segmentation:
        for path in write_result(suggestion.segmentation, args.segmentation):
            print(f"wrote {path}")
    return 0


def _check_outputs(args: argparse.Namespace, card: ModelCard) -> None:
    """``--output`` and ``--segmentation`` (with its sidecars), checked before any work."""
    from asdseg.inference.segment import planned_outputs

    check_image_output(args.segmentation, "--segmentation")
    outputs = [("--output", args.output)] if args.output else []
    if args.segmentation:
        outputs += [("--segmentation", path) for _, path in planned_outputs(card.labels, args.segmentation)]
    if outputs:
        check_output_paths(outputs, [args.image, *([args.labels] if args.labels else [])])
    check_text_output(args.output, "--output", ".json", "suggestion")


def _suggest(
    args: argparse.Namespace,
    card: ModelCard,
    image: sitk.Image,
    labelled: set[int],
    roi: RegionOfInterest | None,
) -> SliceSuggestion:
    """The model's suggestion for ``image``, with ``--progress``'s reporter."""
    from asdseg.active.suggest import suggest_slices
    from asdseg.inference.segment import SegmentationOptions
    from asdseg.registry import load_network

    update, close = progress_reporter(args.progress, "segmenting")
    try:
        return suggest_slices(
            image,
            card,
            load_network(card),
            labelled,
            args.strategy,
            args.budget,
            SegmentationOptions(device=args.device, roi=roi),
            args.min_area,
            progress=update,
            second_opinion=args.second_opinion,
        )
    finally:
        close()
