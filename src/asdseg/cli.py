"""The ``asdseg`` command line: segment, evaluate, models, train, suggest, finetune, devices, demo."""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asdseg.active.slice_scores import SECOND_OPINIONS
from asdseg.active.strategies import DEFAULT_STRATEGY
from asdseg.active.strategies import STRATEGIES as STRATEGY_NAMES
from asdseg.errors import AsdsegError, InputError
from asdseg.io.image_io import SUPPORTED_SUFFIXES, image_suffix, read_image
from asdseg.io.output_paths import check_output_dir, check_output_paths

if TYPE_CHECKING:
    import SimpleITK as sitk
    import torch

    from asdseg.preprocessing.roi import RegionOfInterest
    from asdseg.preprocessing.transforms import CropBox
    from asdseg.registry.model_card import ModelCard

#: Exit status of a run stopped by Ctrl-C (128 + SIGINT) or SIGTERM (128 + SIGTERM).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporary files) runs."""


def _check_output_path(path: str | None, option: str) -> None:
    if path is not None and image_suffix(path) not in SUPPORTED_SUFFIXES:
        raise InputError(f"{option} {path}: use an image suffix ({', '.join(SUPPORTED_SUFFIXES)}).")


def _region_of_interest(
    args: argparse.Namespace, image: sitk.Image, card: ModelCard
) -> tuple[RegionOfInterest | None, list[str]]:
    """The ``--roi`` box (None without it), checked against the image before any work, and the
    warnings about the region to segment (clipping, too large a field of view), printed at once
    rather than after a long run."""
    from asdseg.preprocessing.roi import RegionOfInterest, segmentation_region

    roi = RegionOfInterest.from_values(args.roi, args.roi_space) if args.roi is not None else None
    warnings = segmentation_region(image, roi, card)[1]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return roi, warnings


def _warn_about_precision(device: torch.device, precision: str) -> None:
    from asdseg.devices import precision_warning

    warning = precision_warning(device, precision)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _add_roi_arguments(parser: argparse.ArgumentParser, per_image: bool = False) -> None:
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


def _number_option(
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


positive_int = _number_option(int, lambda value: value >= 1, "a whole number of at least 1")
non_negative_int = _number_option(int, lambda value: value >= 0, "a whole number of at least 0")
window_overlap = _number_option(float, lambda value: 0.0 <= value < 1.0, "in [0, 1), e.g. 0.5")
positive_float = _number_option(
    float, lambda value: math.isfinite(value) and value > 0, "a positive finite number, e.g. 0.005"
)
finite_float = _number_option(float, math.isfinite, "a finite number, e.g. -12.5 or 1.5e-05")

#: Every way to write a negative number, the engine's own (-1.5e-05) and -inf included.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, taking every negative number (:data:`NEGATIVE_NUMBER`) for a value.
    argparse's own rule knows only -1 and -1.5, and reads -inf as -i with the value nf, so it
    refused ROI corners the engine prints. No option of asdseg looks like a number."""

    def _parse_optional(self, arg_string: str) -> Any:
        return None if NEGATIVE_NUMBER.match(arg_string) else super()._parse_optional(arg_string)


def label_values(text: str) -> list[int]:
    """``--labels 1,2``: label values, each a whole number in 1..65535."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated label values, e.g. 1,2") from None
    if any(not 1 <= value <= 65535 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: label values are whole numbers from 1 to 65535")
    return values


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
    (source,) = args.input
    outputs = _map_outputs(args)
    for option, path in outputs:
        _check_output_path(path, option)
    _check_segment_outputs(card, [source], [outputs])
    image = read_image(source)
    _check_output_geometry(image, source, outputs)
    roi, shown = _region_of_interest(args, image, card)
    segmenter = _Segmenter(args, card, roi)
    segmenter.segment(image, source, outputs, shown)
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


class _Segmenter:
    """The model loaded once, with the options of the command line, for one volume or many."""

    def __init__(self, args: argparse.Namespace, card: ModelCard, roi: RegionOfInterest | None) -> None:
        from asdseg.devices import select_device
        from asdseg.inference.segment import SegmentationOptions
        from asdseg.preprocessing.input_checks import DEFAULT_MAX_ANISOTROPY
        from asdseg.registry import load_network

        try:
            device = select_device(args.device)
        except ValueError as error:
            raise InputError(f"--device {args.device}: {error}") from error
        _warn_about_precision(device, args.precision)
        self.card, self.network, self.progress = card, load_network(card), args.progress
        self.options = SegmentationOptions(
            device=args.device,
            precision=args.precision,
            overlap=args.overlap,
            mirror_axes=() if args.no_mirroring else None,
            batch_size=args.batch_size,
            largest_component=args.largest_component,
            max_anisotropy=None if args.allow_anisotropic else DEFAULT_MAX_ANISOTROPY,
            roi=roi,
        )

    def segment(
        self, image: sitk.Image, source: str | Path, outputs: list[tuple[str, str | Path]], shown: list[str]
    ) -> None:
        """Segment ``image`` and write the outputs, printing what the user should know."""
        from asdseg.inference.segment import segment_image, write_result
        from asdseg.progress import json_progress, tqdm_progress

        if self.progress == "json":
            update, close = json_progress(), lambda: None
        else:
            update, close = tqdm_progress("segmenting")
        try:
            result = segment_image(
                image, self.card, self.network, self.options, source=source, progress=update
            )
        finally:
            close()
        for warning in result.warnings:
            if warning not in shown:
                print(f"warning: {warning}", file=sys.stderr)
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


def _segment_volumes(args: argparse.Namespace, card: ModelCard) -> int:
    """``-i`` with several files or a folder: every output option names a folder, the model is
    loaded once, and a volume that fails is reported and skipped rather than ending the run."""
    import time

    from asdseg.inference.batch import batch_cases, check_output_folder

    if args.roi is not None:
        raise InputError("--roi is for one volume; segment volumes that need an ROI one at a time.")
    folders = [(option, check_output_folder(path, option)) for option, path in _map_outputs(args)]
    cases = batch_cases(args.input)
    outputs = [[(option, case.output(folder)) for option, folder in folders] for case in cases]
    _check_segment_outputs(card, [case.image for case in cases], outputs)
    started = time.monotonic()
    segmenter = _Segmenter(args, card, None)
    failed = []
    for number, (case, case_outputs) in enumerate(zip(cases, outputs), start=1):
        print(f"[{number}/{len(cases)}] {case.name}", flush=True)
        try:
            image = read_image(case.image)
            _check_output_geometry(image, case.image, case_outputs)
            segmenter.segment(image, case.image, case_outputs, [])
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


def command_evaluate(args: argparse.Namespace) -> int:
    from asdseg.evaluation.evaluate_predictions import evaluate_files, format_table, write_csv

    if len(args.pred) != len(args.ref):
        raise InputError(
            f"{len(args.pred)} predictions but {len(args.ref)} references; give one --ref per --pred."
        )
    if args.csv:
        check_output_paths([("--csv", args.csv)], [*args.pred, *args.ref])
    rows = evaluate_files(list(zip(map(Path, args.pred), map(Path, args.ref))), args.labels)
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


def _model_source(card: ModelCard) -> str:
    """Where a model comes from, and whether its weights still have to be downloaded."""
    from asdseg.registry import model_origin, weights_location

    origin = model_origin(card)
    return origin if weights_location(card).is_file() else f"{origin}, download on first use"


def _install_model(args: argparse.Namespace) -> None:
    """``models install``: a card file is installed into the user's folder; a model's name
    fetches its weights from the card's download source, if they are not here yet."""
    from asdseg.registry import find_model, install_model, load_network, weights_location

    if args.model.endswith(".json") or Path(args.model).exists():
        card = install_model(args.model, args.weights, args.as_new_version)
        print(f"installed {card.name} (v{card.data['version']}) into {card.directory}")
        return
    given = [option for option in ("weights", "as_new_version") if getattr(args, option)]
    if given:
        options = ", ".join(f"--{option.replace('_', '-')}" for option in given)
        raise InputError(f"{options}: only with a model card file, not with a model's name ({args.model}).")
    card = find_model(args.model)
    present = weights_location(card).is_file()
    load_network(card)  # downloads them on first use, checks them and loads them
    verb = "already here" if present else "downloaded"
    print(f"{card.name} (v{card.data['version']}): weights {verb}, {weights_location(card)}")


def command_models(args: argparse.Namespace) -> int:
    from asdseg.registry import available_models, find_model

    if args.action == "list":
        models = available_models()
        if not models:
            print("no models installed; 'asdseg demo' installs the phantom demo model.")
        for name, card in sorted(models.items()):
            version, task = f"v{card.data['version']}", card.data["task"]
            print(f"{name:<20} {version:<6} {_model_source(card):<12} {task:<16} {card.data['description']}")
    elif args.action == "show":
        card = find_model(args.name)
        if args.json:
            print(json.dumps(card.data, indent=2))
        else:
            print(f"{card.summary()}\n  from: {_model_source(card)} ({card.directory})")
    else:
        _install_model(args)
    return 0


#: ``asdseg train`` options that only mean something with ``--dataset``; the counts of a split.
SPLIT_COUNTS = ("labelled", "validation", "unlabelled")
DATASET_OPTIONS = (*SPLIT_COUNTS, "splits", "data_licence", "data_source")


def dataset_run_values(args: argparse.Namespace, values: dict) -> dict:
    """The config settings for ``--dataset``: the folder read and checked case by case, the
    split chosen (flags, splits file, the config's counts or a fifth held out), all before any
    training."""
    from asdseg.io.datasets import check_dataset, read_dataset
    from asdseg.training.dataset_training import (
        dataset_config_values,
        default_counts,
        read_split_file,
        split_by_counts,
    )

    counts = [f"--{part}" for part in SPLIT_COUNTS if getattr(args, part) is not None]
    if args.splits and counts:
        raise InputError(f"--splits names every case's part; leave out {', '.join(counts)}.")
    dataset = read_dataset(args.dataset)
    if args.splits:
        split = read_split_file(args.splits, dataset)
    else:
        configured = values.get("data") if isinstance(values.get("data"), dict) else {}
        chosen = dict(zip(("labelled", "validation"), default_counts(len(dataset.labelled_names))))
        for part in chosen:
            if getattr(args, part) is not None:
                chosen[part] = getattr(args, part)
            elif isinstance(configured.get(part), int):
                chosen[part] = configured[part]
        split = split_by_counts(dataset, chosen["labelled"], chosen["validation"], args.unlabelled)
    spacing = check_dataset(dataset)
    licence = args.data_licence or dataset.info.get("licence")
    if not licence:
        print(
            "warning: dataset.json states no licence; the model card will say so. Pass --data-licence.",
            file=sys.stderr,
        )
    return dataset_config_values(values, dataset, split, spacing, args.data_licence, args.data_source)


def command_train(args: argparse.Namespace) -> int:
    from asdseg.registry import find_model
    from asdseg.training.config import config_from_dict, read_config_values
    from asdseg.training.data import constant_images
    from asdseg.training.dataset_training import write_split
    from asdseg.training.distributed import end_distributed
    from asdseg.training.trainer import CHECKPOINT_FILE, Trainer

    values = read_config_values(args.config) if args.config else {}
    if args.recipe:
        values["recipe"] = args.recipe
    if args.steps is not None:
        values["steps"] = args.steps
    if args.init_from is not None:
        values["init_from"] = args.init_from
    if args.dataset is not None:
        values = dataset_run_values(args, values)
    else:
        given = [f"--{name.replace('_', '-')}" for name in DATASET_OPTIONS if getattr(args, name) is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --dataset DIR.")
    config = config_from_dict(values, args.config or "config")
    check_output_dir(args.output_dir, "--output-dir")
    trainer = Trainer(config, args.output_dir, device=args.device)
    _warn_about_precision(trainer.device, trainer.precision)
    for name in constant_images(trainer.split):
        print(
            f"warning: case {name}: every voxel of its image has the same value; it teaches the "
            "model nothing. Check its export.",
            file=sys.stderr,
        )
    if config.init_from is not None and not args.resume:
        # Before anything is written: a model that is not installed or does not fit the run.
        trainer.start_from(find_model(config.init_from))
    try:
        new_run = not (Path(args.output_dir) / CHECKPOINT_FILE).exists()
        if config.data.split is not None and new_run and trainer.context.is_main:
            print(f"split: {', '.join(f'{len(names)} {part}' for part, names in config.data.split.items())}")
            print(f"wrote {write_split(args.output_dir, config.data.split)}")
        if args.resume:
            trainer.resume()
            print(f"resuming {config.recipe} at step {trainer.step}")
        result = trainer.run()
    finally:
        end_distributed()
    if not trainer.context.is_main:
        return 0
    print(f"wrote {result.output_dir / 'log.csv'} and {result.output_dir / 'curves.png'}")
    if result.model is not None:
        print(f"trained model: {result.model.directory} (install with asdseg models install)")
    return 0


def command_release(args: argparse.Namespace) -> int:
    from asdseg.progress import tqdm_progress
    from asdseg.registry import check_shipped_name, user_models_dir
    from asdseg.training.release import release_run

    output = Path(args.output_dir) if args.output_dir else user_models_dir()
    check_output_dir(output, "--output-dir")
    if output.resolve() == user_models_dir().resolve():
        check_shipped_name(args.name, args.version, args.as_new_version)
    update, close = tqdm_progress("validating")
    try:
        card = release_run(args.run, args.name, output, args.version, progress=update)
    finally:
        close()
    print(card.summary())
    print(f"released {card.name} into {card.directory}")
    return 0


def structure_pair(text: str) -> tuple[str, str]:
    """``LABEL=STRUCTURE`` from the command line (the structure name may hold spaces and '=')."""
    label, separator, structure = text.partition("=")
    if not separator or not label.strip() or not structure.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=STRUCTURE, e.g. prostate=CTV_Prostate")
    return label.strip(), structure.strip()


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


def command_suggest(args: argparse.Namespace) -> int:
    from asdseg.active.second_opinion import check_second_opinion
    from asdseg.active.sparse_labels import check_labels_fit_image, read_sparse_labels
    from asdseg.active.suggest import suggest_slices
    from asdseg.active.suggestion_report import format_suggestions, suggestion_record, write_suggestions
    from asdseg.inference.segment import SegmentationOptions, planned_outputs, write_result
    from asdseg.progress import json_progress, tqdm_progress
    from asdseg.registry import find_model, load_network

    card = find_model(args.model)
    if args.second_opinion is not None:
        check_second_opinion(card, args.second_opinion)
    _check_output_path(args.segmentation, "--segmentation")
    outputs = [("--output", args.output)] if args.output else []
    if args.segmentation:
        outputs += [("--segmentation", path) for _, path in planned_outputs(card.labels, args.segmentation)]
    if outputs:
        check_output_paths(outputs, [args.image, *([args.labels] if args.labels else [])])
    if args.output is not None and Path(args.output).suffix.lower() != ".json":
        raise InputError(
            f"--output {args.output}: the suggestion is written as JSON; give a .json file name."
        )
    image = read_image(args.image)
    roi = _region_of_interest(args, image, card)[0]
    labelled = set()
    if args.labels:
        labels_image, sparse = read_sparse_labels(args.labels)
        check_labels_fit_image(labels_image, image, args.labels, args.image)
        labelled = sparse.labelled_slices
    update, close = (
        (json_progress(), lambda: None) if args.progress == "json" else tqdm_progress("segmenting")
    )
    try:
        suggestion = suggest_slices(
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
    record = suggestion_record(suggestion, args.strategy, labelled)
    print(format_suggestions(record))
    if args.output:
        write_suggestions(record, args.output)
        print(f"wrote {args.output}")
    if args.segmentation:
        for path in write_result(suggestion.segmentation, args.segmentation):
            print(f"wrote {path}")
    return 0


def _training_regions(args: argparse.Namespace, images: list[sitk.Image]) -> list[CropBox | None]:
    """The index box of each ``--image`` inside its ``--roi`` (one box for all images, or one
    per image), None for each image without ``--roi``; clipping warnings are printed at once."""
    from asdseg.preprocessing.roi import RegionOfInterest

    boxes = args.roi or []
    if len(boxes) not in (0, 1, len(images)):
        raise InputError(
            f"{len(boxes)} --roi boxes for {len(images)} images; give one box for every image, or "
            "one per --image in the same order."
        )
    if not boxes:
        return [None] * len(images)
    regions = []
    for image, path, values in zip(images, args.image, boxes * len(images) if len(boxes) == 1 else boxes):
        try:
            region, warnings = RegionOfInterest.from_values(values, args.roi_space).index_box(image)
        except InputError as error:
            raise InputError(f"{path}: {error}") from error
        for warning in warnings:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        regions.append(region)
    return regions


#: Exit status of a fine-tuning run stopped by SIGTERM (the parent's Cancel).
EXIT_STOPPED = 3
#: Exit status of a fine-tuning run whose model did worse on the held-out slices.
EXIT_WORSE = 4
#: What ``finetune --hold-out-every`` writes beside the run: both models' held-out Dice.
TEACH_REPORT = "teach_report.json"


def command_finetune(args: argparse.Namespace) -> int:
    import signal
    import time
    from dataclasses import replace

    from asdseg.active.finetune import FineTuneSettings, fine_tune, model_grid_case
    from asdseg.active.sparse_labels import check_labels_fit_image, read_sparse_labels
    from asdseg.active.teach import hold_out
    from asdseg.errors import CancelledError
    from asdseg.progress import emit_progress
    from asdseg.registry import find_model
    from asdseg.registry.model_card import check_model_name
    from asdseg.training.trainer import CHECKPOINT_FILE

    if len(args.image) != len(args.labels):
        raise InputError(
            f"{len(args.image)} images but {len(args.labels)} label maps; give one --labels per --image."
        )
    if args.name is not None:
        check_model_name(args.name)
    if args.install_as is not None:
        check_model_name(args.install_as, "--install-as")
    card = find_model(args.model)
    check_output_dir(args.output_dir, "--output-dir")
    if (Path(args.output_dir) / "model").resolve() == card.directory.resolve():
        raise InputError(
            f"--output-dir {args.output_dir}: its model folder is the model being fine-tuned; choose "
            "another output folder so that the round can fail without losing that model."
        )
    images = [read_image(image) for image in args.image]
    corrections = []
    for image, image_path, labels_path in zip(images, args.image, args.labels):
        labels_image, sparse = read_sparse_labels(labels_path)
        check_labels_fit_image(labels_image, image, labels_path, image_path)
        corrections.append(sparse)
    splits = hold_out(corrections, args.hold_out_every) if args.hold_out_every else None
    training = [split.training for split in splits] if splits else corrections
    cases = [
        model_grid_case(image, sparse, card, Path(path).name, region)
        for image, path, sparse, region in zip(images, args.image, training, _training_regions(args, images))
    ]
    settings = FineTuneSettings(
        steps=args.steps, batch_size=args.batch_size, freeze_encoder=args.freeze_encoder
    )
    if args.learning_rate is not None:
        settings = replace(settings, learning_rate=args.learning_rate)
    started = time.monotonic()

    def report(row: dict[str, float]) -> None:
        elapsed = time.monotonic() - started
        eta = elapsed / row["step"] * (settings.steps - row["step"])
        emit_progress(row["step"], settings.steps, "fine-tuning", loss=row["loss"], eta_s=round(eta, 1))

    def stop(signal_number, frame) -> None:
        raise CancelledError("fine-tuning stopped; the model it started from is unchanged.")

    signal.signal(signal.SIGTERM, stop)
    try:
        result = fine_tune(
            card,
            cases,
            args.output_dir,
            settings,
            name=args.name,
            device=args.device,
            on_step=report if args.progress == "json" else None,
            show_progress=args.progress == "bar",
            resume=args.resume,
        )
    except CancelledError as error:
        if (Path(args.output_dir) / CHECKPOINT_FILE).is_file():
            advice = (
                f"The last checkpoint in {args.output_dir} is intact; run the same command with "
                "--resume to continue from it."
            )
        else:
            advice = "It stopped before its first checkpoint: nothing to resume; run it again from the start."
        print(f"stopped: {error} {advice}", file=sys.stderr)
        return EXIT_STOPPED
    print(f"wrote model {result.model.directory}")
    verdict = None
    if splits is not None:
        verdict = teach_verdict(card, result.model, images, splits, args.device)
        print(verdict.message(), file=sys.stdout if verdict.accepted else sys.stderr)
    installed = None
    if args.install_as and (verdict is None or verdict.accepted):
        from asdseg.active.teach import install_taught_model

        installed = install_taught_model(result.model.directory, args.install_as)
        print(f"installed {installed.name} (version {installed.data['version']}) into {installed.directory}")
    if verdict is not None:
        write_teach_report(Path(args.output_dir), verdict, installed)
    return 0 if verdict is None or verdict.accepted else EXIT_WORSE


def teach_verdict(old_card: ModelCard, new_card: ModelCard, images: list, splits: list, device: str):
    """Both models scored on the corrected slices the round held out."""
    from asdseg.active.teach import judge
    from asdseg.inference.segment import SegmentationOptions
    from asdseg.registry import load_network

    options = SegmentationOptions(device=device)
    return judge(old_card, load_network(old_card), new_card, load_network(new_card), images, splits, options)


def write_teach_report(output_dir: Path, verdict, installed: ModelCard | None) -> None:
    """``teach_report.json`` beside the run: the verdict and the name the model was installed
    under (None when it was worse, or not asked to be installed), which ASDSeg's Teach reads."""
    from asdseg.io.image_io import atomic_path

    report = {**verdict.to_dict(), "installed": installed.name if installed is not None else None}
    with atomic_path(output_dir / TEACH_REPORT) as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def command_demo(args: argparse.Namespace) -> int:
    from asdseg.demo.end_to_end import DEMO_OUTPUTS, run_demo

    check_output_dir(args.output_dir, "--output-dir")
    check_output_paths([("--output-dir", Path(args.output_dir) / name) for name in DEMO_OUTPUTS])
    run_demo(Path(args.output_dir), model=args.model)
    return 0


def command_devices(args: argparse.Namespace) -> int:
    from asdseg.devices import auto_precision, describe_available_devices, select_device

    print(f"{describe_available_devices()}; auto precision: {auto_precision(select_device('auto'))}")
    return 0


#: ``--as-new-version`` of ``models install`` and ``release``.
AS_NEW_VERSION_HELP = (
    "allow a shipped model's name (refused without it): the new model, whose version must differ from "
    "the shipped one's, is then used wherever that name is asked for, and 'asdseg models' says so; "
    "remove its folder from your model folder to go back to the shipped one"
)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="asdseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    segment.add_argument("--model", required=True, help="model name (see 'asdseg models list')")
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
    _add_roi_arguments(segment)
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
    evaluate.add_argument(
        "--labels", type=label_values, help="comma-separated label values (default: all non-zero present)"
    )
    evaluate.add_argument("--csv", help="also write the table as CSV")
    evaluate.set_defaults(handler=command_evaluate)

    models = commands.add_parser("models", help="list (the default), show or install models")
    actions = models.add_subparsers(dest="action")
    actions.add_parser("list", help="list installed and shipped models (what 'asdseg models' alone does)")
    show = actions.add_parser("show", help="show a model card")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the whole card as JSON")
    install = actions.add_parser(
        "install",
        help="install a model from a card (and weights) file, or download a model's weights by its name",
    )
    install.add_argument(
        "model",
        help="a model card JSON (installed into your model folder, weights as float16), or the name of a "
        "model whose card has a download source (its weights are fetched now rather than on first use)",
    )
    install.add_argument("--weights", help="weights file (default: the file the card names, beside it)")
    install.add_argument("--as-new-version", action="store_true", help=AS_NEW_VERSION_HELP)
    models.set_defaults(handler=command_models, action="list")

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
    train.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from a released model's weights (a name from 'asdseg models' or a model folder) "
        "instead of random ones: train it for more steps or on your own cases; overrides the config's",
    )
    train.add_argument(
        "--dataset",
        metavar="DIR",
        help="train on a dataset folder: nnU-Net v2 raw (imagesTr/, labelsTr/, dataset.json) or Medical "
        "Segmentation Decathlon layout; labels and classes come from its dataset.json",
    )
    train.add_argument(
        "--labelled",
        type=positive_int,
        metavar="N",
        help="with --dataset: the first N cases (by name) are labelled",
    )
    train.add_argument(
        "--validation",
        type=non_negative_int,
        metavar="N",
        help="with --dataset: the last N cases are held out",
    )
    train.add_argument(
        "--unlabelled",
        type=non_negative_int,
        metavar="N",
        help="with --dataset: use at most N of the cases between as unlabelled (default: all of them)",
    )
    train.add_argument(
        "--splits",
        metavar="FILE",
        help='with --dataset: a JSON split by case name, {"labelled": [...], "unlabelled": [...], '
        '"validation": [...]}, or nnU-Net\'s splits_final.json (first fold)',
    )
    train.add_argument(
        "--data-licence",
        metavar="TEXT",
        help="with --dataset: the data's licence for the model card (wins over dataset.json's)",
    )
    train.add_argument(
        "--data-source",
        metavar="TEXT",
        help="with --dataset: where the data came from (institution, approval, export), for the model card",
    )
    train.add_argument("--steps", type=positive_int, help="overrides the config's number of steps")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    train.set_defaults(handler=command_train)

    release = commands.add_parser(
        "release", help="a finished run on a data folder -> a model with its validation figures per organ"
    )
    release.add_argument("run", help="the run's --output-dir (it holds checkpoint.pt and model/)")
    release.add_argument("--name", required=True, help="the model's name, e.g. pelvis-dan")
    release.add_argument("--version", default="1.0")
    release.add_argument(
        "--output-dir", help="where the model folder goes (default: your model folder, where Slicer finds it)"
    )
    release.add_argument("--as-new-version", action="store_true", help=AS_NEW_VERSION_HELP)
    release.set_defaults(handler=command_release)

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
    _add_roi_arguments(suggest)
    suggest.add_argument("--progress", default="bar", choices=["bar", "json"])
    suggest.set_defaults(handler=command_suggest)

    finetune = commands.add_parser("finetune", help="fine-tune any model on sparse slice labels")
    finetune.add_argument("--model", required=True, help="model name, or a model folder")
    finetune.add_argument("--image", nargs="+", required=True, help="volumes")
    finetune.add_argument("--labels", nargs="+", required=True, help="their sparse labels, same order")
    finetune.add_argument("--steps", type=positive_int, default=200, help="training steps")
    finetune.add_argument(
        "--learning-rate",
        type=positive_float,
        help="SGD learning rate (default: 0.001, the paper's, for attention models; 0.003 for others)",
    )
    finetune.add_argument("--batch-size", type=positive_int, default=2)
    finetune.add_argument(
        "--hold-out-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="hold every Nth labelled slice out of the training, score the old and the new model on "
        f"them, write {TEACH_REPORT} and exit with {EXIT_WORSE} when the new model is worse (0: no check)",
    )
    finetune.add_argument(
        "--install-as",
        metavar="NAME",
        help="install the new model into your model folder as NAME (NAME-v2, NAME-v3... for later "
        "rounds; earlier rounds and the model it started from stay installed); with --hold-out-every, "
        "only when it is not worse",
    )
    finetune.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="keep the segmenter's encoder as it was (models without an attention head)",
    )
    finetune.add_argument(
        "--output-dir", required=True, help="checkpoint, log and the new model (<dir>/model)"
    )
    finetune.add_argument("--name", help="name of the new model (default: <model>-finetuned)")
    finetune.add_argument(
        "--resume", action="store_true", help="continue a stopped round from its output folder's checkpoint"
    )
    finetune.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    finetune.add_argument(
        "--progress", default="bar", choices=["bar", "json"], help="JSON lines: step, loss and ETA per step"
    )
    _add_roi_arguments(finetune, per_image=True)
    finetune.set_defaults(handler=command_finetune)

    devices = commands.add_parser("devices", help="the GPU torch can use here and the auto precision")
    devices.set_defaults(handler=command_devices)

    demo = commands.add_parser("demo", help="the main job: segment a default input and evaluate it")
    demo.add_argument("--output-dir", default="demo_output", help="where to write the results")
    demo.add_argument(
        "--model",
        help="the left-atrium model to run on LA 2018 (default: the one with the best validation Dice)",
    )
    demo.set_defaults(handler=command_demo)
    return parser


def _raise_terminated(signal_number: int, frame: object) -> None:
    raise Terminated


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into an exception for the command's duration, so that a stopped run removes
    its temporary files like Ctrl-C does (Python's default would exit on the spot)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _os_error_message(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return (
        f"{where}{error.strerror or error}. The file being written was left as it was; free space, "
        "fix the permissions or choose another path, then run again."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Failures the user can act on print one line and exit 2; Ctrl-C and
    SIGTERM exit 130 and 143. Every output is written atomically, so none of these leaves a
    partial file behind."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "roi_space"):
        # No parser default, so that --roi-space alone can be told from no option at all.
        if args.roi_space is not None and args.roi is None:
            parser.error(
                "--roi-space does nothing without --roi; give --roi X0 Y0 Z0 X1 Y1 Z1 or leave it out"
            )
        args.roi_space = args.roi_space or "lps"
    try:
        with _terminate_as_interrupt():
            return args.handler(args)
    except AsdsegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {_os_error_message(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "error: out of memory. Use a smaller --batch-size, a smaller volume, or a machine with more "
            "memory.",
            file=sys.stderr,
        )
        return 2
    except Terminated:
        print("stopped (SIGTERM); files being written were left as they were.", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted; files being written were left as they were.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
