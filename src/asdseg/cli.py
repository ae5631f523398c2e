"""The ``asdseg`` command line: segment, evaluate, models, demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from asdseg.errors import AsdsegError, InputError
from asdseg.image_io import SUPPORTED_SUFFIXES, image_suffix, read_image


def _check_output_path(path: str | None, option: str) -> None:
    if path is not None and image_suffix(path) not in SUPPORTED_SUFFIXES:
        raise InputError(f"{option} {path}: use an image suffix ({', '.join(SUPPORTED_SUFFIXES)}).")


def command_segment(args: argparse.Namespace) -> int:
    from asdseg.progress import json_progress, tqdm_progress
    from asdseg.registry import find_model, load_network
    from asdseg.segment import SegmentationOptions, segment_image, write_result
    from asdseg.validation import DEFAULT_MAX_ANISOTROPY

    outputs = (
        (args.output, "-o"),
        (args.confidence, "--confidence"),
        (args.sdm, "--sdm"),
        (args.probabilities, "--probabilities"),
    )
    for path, option in outputs:
        _check_output_path(path, option)
    card = find_model(args.model)
    if args.confidence and not card.has_confidence:
        raise InputError(f"model {card.name!r} has no confidence network; drop --confidence.")
    if args.sdm and not card.has_sdm:
        raise InputError(f"model {card.name!r} has no signed-distance-map head; drop --sdm.")
    image = read_image(args.input)
    network = load_network(card)
    options = SegmentationOptions(
        device=args.device,
        precision=args.precision,
        overlap=args.overlap,
        batch_size=args.batch_size,
        largest_component=args.largest_component,
        max_anisotropy=None if args.allow_anisotropic else DEFAULT_MAX_ANISOTROPY,
    )
    if args.progress == "json":
        update, close = json_progress(), lambda: None
    else:
        update, close = tqdm_progress("segmenting")
    try:
        result = segment_image(image, card, network, options, source=args.input, progress=update)
    finally:
        close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for report in result.component_reports:
        if report.components > 1:
            print(
                f"largest component of label {report.value}: kept {report.voxels_after} of "
                f"{report.voxels_before} voxels ({report.components} components)"
            )
    for path in write_result(result, args.output, args.confidence, args.sdm, args.probabilities):
        print(f"wrote {path}")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from asdseg.evaluation import evaluate_files, format_table, write_csv

    if len(args.pred) != len(args.ref):
        raise InputError(
            f"{len(args.pred)} predictions but {len(args.ref)} references; give one --ref per --pred."
        )
    values = [int(v) for v in args.labels.split(",")] if args.labels else None
    rows = evaluate_files(list(zip(map(Path, args.pred), map(Path, args.ref), strict=True)), values)
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


def command_models(args: argparse.Namespace) -> int:
    from asdseg.registry import available_models, find_model, install_model

    if args.action == "list":
        models = available_models()
        if not models:
            print("no models installed; 'asdseg demo' installs the phantom demo model.")
        for name, card in sorted(models.items()):
            print(f"{name:<20} {card.data['task']:<16} {card.data['description']}")
    elif args.action == "show":
        card = find_model(args.name)
        print(card.summary() if not args.json else json.dumps(card.data, indent=2))
    else:
        card = install_model(args.card, args.weights)
        print(f"installed {card.name} into {card.directory}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    from asdseg.training.config import config_from_dict, load_config
    from asdseg.training.trainer import Trainer

    overrides = {"recipe": args.recipe} if args.recipe else {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    config = load_config(args.config, overrides) if args.config else config_from_dict(overrides)
    trainer = Trainer(config, args.output_dir, device=args.device)
    if args.resume:
        trainer.resume()
        print(f"resuming {config.recipe} at step {trainer.step}")
    result = trainer.run()
    if not trainer.context.is_main:
        return 0
    print(f"wrote {result.output_dir / 'log.csv'} and {result.output_dir / 'curves.png'}")
    if result.model is not None:
        print(f"trained model: {result.model.directory} (install with asdseg models install)")
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from asdseg.demo import run_demo

    run_demo(Path(args.output_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asdseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a volume with an installed model")
    segment.add_argument("-i", "--input", required=True, help="input volume (.nii, .nii.gz, .nrrd, .mha)")
    segment.add_argument("-o", "--output", required=True, help="label map to write (sidecars go beside it)")
    segment.add_argument("--model", required=True, help="model name (see 'asdseg models list')")
    segment.add_argument("--confidence", help="also write the voxel-wise confidence map here")
    segment.add_argument("--sdm", help="also write the signed distance map here")
    segment.add_argument(
        "--probabilities", help="also write the class probabilities here (one component per label)"
    )
    segment.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    segment.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    segment.add_argument("--overlap", type=float, help="window overlap in [0, 1) (default: model card)")
    segment.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    segment.add_argument(
        "--largest-component", action="store_true", help="keep the largest component per label"
    )
    segment.add_argument("--allow-anisotropic", action="store_true", help="accept very thick slices")
    segment.add_argument(
        "--progress",
        default="bar",
        choices=["bar", "json"],
        help="a terminal progress bar, or JSON lines on stdout for a parent process",
    )
    segment.set_defaults(handler=command_segment)

    evaluate = commands.add_parser("evaluate", help="Dice, Jaccard, ASD, HD95 of predictions vs references")
    evaluate.add_argument("--pred", nargs="+", required=True, help="predicted label maps")
    evaluate.add_argument("--ref", nargs="+", required=True, help="reference label maps, same order")
    evaluate.add_argument("--labels", help="comma-separated label values (default: all non-zero present)")
    evaluate.add_argument("--csv", help="also write the table as CSV")
    evaluate.set_defaults(handler=command_evaluate)

    models = commands.add_parser("models", help="list, show or install models")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list installed and shipped models")
    show = actions.add_parser("show", help="show a model card")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the whole card as JSON")
    install = actions.add_parser("install", help="install a model from a card (and weights) file")
    install.add_argument("card", help="model card JSON")
    install.add_argument("--weights", help="weights file (default: the file the card names, beside it)")
    models.set_defaults(handler=command_models)

    train = commands.add_parser("train", help="train a model with one of the papers' recipes")
    train.add_argument(
        "--recipe",
        choices=["supervised", "asdnet", "sassnet", "dan", "attention-unet"],
        help="overrides the config's",
    )
    train.add_argument(
        "--config", help="JSON training config (default: every setting's default, on phantoms)"
    )
    train.add_argument(
        "--output-dir", required=True, help="checkpoint, log.csv, curves.png and the model go here"
    )
    train.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    train.add_argument("--steps", type=int, help="overrides the config's number of steps")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    train.set_defaults(handler=command_train)

    demo = commands.add_parser("demo", help="the main job: segment a default input and evaluate it")
    demo.add_argument("--output-dir", default="demo_output", help="where to write the results")
    demo.set_defaults(handler=command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except AsdsegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
