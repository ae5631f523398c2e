"""``asdseg finetune``: fine-tune any model on sparse slice labels; with ``--hold-out-every`` a
teach round, judged on held-out slices before the new model may be installed."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from asdseg.cli.arguments import add_roi_arguments, non_negative_int, positive_float, positive_int
from asdseg.cli.console import progress_reporter, warn
from asdseg.cli.exits import EXIT_STOPPED, EXIT_WORSE, on_sigterm
from asdseg.errors import CancelledError, InputError
from asdseg.io.image_io import read_image
from asdseg.io.output_paths import check_output_dir

if TYPE_CHECKING:
    import SimpleITK as sitk

    from asdseg.active.finetune import FineTuneSettings
    from asdseg.active.teach import HoldOut
    from asdseg.registry.model_card import ModelCard
    from asdseg.training.data import Case

#: What ``finetune --hold-out-every`` writes beside the run: both models' held-out Dice.
TEACH_REPORT = "teach_report.json"


def add_parser(commands: argparse._SubParsersAction) -> None:
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
        "--intensity-augmentation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="perturb every batch with nnU-Net's intensity transforms (contrast, brightness, bias field, "
        "noise, low resolution) so that a few slices teach the whole volume (default: on, for models "
        "without an attention head)",
    )
    finetune.add_argument(
        "--pseudo-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train on the model's own prediction wherever no slice is corrected and "
        "its probability is at least 0.9 (default: on, for models without an attention head)",
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
    add_roi_arguments(finetune, per_image=True)
    finetune.set_defaults(handler=command_finetune)


def command_finetune(args: argparse.Namespace) -> int:
    from asdseg.active.finetune import model_grid_case
    from asdseg.active.sparse_labels import read_sparse_labels_of
    from asdseg.active.teach import hold_out
    from asdseg.preprocessing.roi import training_regions
    from asdseg.training.data import CaseSplit, constant_images

    card = _check_run(args)
    images = [read_image(image) for image in args.image]
    corrections = [
        read_sparse_labels_of(image, labels_path, image_path)
        for image, image_path, labels_path in zip(images, args.image, args.labels)
    ]
    splits = hold_out(corrections, args.hold_out_every) if args.hold_out_every else None
    training = [split.training for split in splits] if splits else corrections
    regions = training_regions(images, args.image, args.roi or [], args.roi_space, warn)
    cases = [
        model_grid_case(image, sparse, card, Path(path).name, region)
        for image, path, sparse, region in zip(images, args.image, training, regions)
    ]
    for name in constant_images(CaseSplit(labelled=cases, unlabelled=[], validation=[])):
        warn(
            f"--image {name}: every voxel has the same value; it teaches the model nothing. Check its export."
        )
    with on_sigterm(_stop):
        return _teach(args, card, cases, images, splits)


def _check_run(args: argparse.Namespace) -> ModelCard:
    """The model to fine-tune, once the options and the output folder are known to be usable."""
    from asdseg.registry import find_model
    from asdseg.registry.model_card import check_model_name

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
    return card


def _stop() -> None:
    raise CancelledError("fine-tuning stopped; the model it started from is unchanged.")


def _settings(args: argparse.Namespace) -> FineTuneSettings:
    from dataclasses import replace

    from asdseg.active.finetune import FineTuneSettings

    settings = FineTuneSettings(
        steps=args.steps, batch_size=args.batch_size, freeze_encoder=args.freeze_encoder
    )
    if args.intensity_augmentation is not None:
        settings = replace(settings, intensity_augmentation=args.intensity_augmentation)
    if args.learning_rate is not None:
        settings = replace(settings, learning_rate=args.learning_rate)
    if args.pseudo_labels is False:
        settings = replace(settings, pseudo_label_confidence=None)
    return settings


def _teach(
    args: argparse.Namespace,
    card: ModelCard,
    cases: list[Case],
    images: list[sitk.Image],
    splits: list[HoldOut] | None,
) -> int:
    """Fine-tune, then judge the new model on the held-out slices (with ``--hold-out-every``) and
    install it (with ``--install-as``) unless it is worse."""
    from asdseg.active.finetune import fine_tune
    from asdseg.active.pseudo_labels import STAGE
    from asdseg.active.teach import install_taught_model, teach_verdict, write_teach_report
    from asdseg.background import STAGE_UNITS

    settings = _settings(args)
    update, close = progress_reporter(args.progress, STAGE, unit=STAGE_UNITS[STAGE])
    # The ETA counts this process's steps only: not the pseudo-labelling before them, nor the
    # steps a resumed round did before.
    started, steps_before = time.monotonic(), None

    def stage_progress(done: int, total: int, stage: str) -> None:
        nonlocal started
        update(done, total, stage)
        if done == total:
            close()
            started = time.monotonic()

    def report(row: dict[str, float]) -> None:
        from asdseg.progress import emit_progress

        nonlocal steps_before
        if steps_before is None:
            steps_before = row["step"] - 1
        elapsed = time.monotonic() - started
        eta = elapsed / (row["step"] - steps_before) * (settings.steps - row["step"])
        emit_progress(row["step"], settings.steps, "fine-tuning", loss=row["loss"], eta_s=round(eta, 1))

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
            progress=stage_progress,
        )
    except CancelledError as error:
        print(f"stopped: {error} {_resume_advice(args.output_dir)}", file=sys.stderr)
        return EXIT_STOPPED
    print(f"wrote model {result.model.directory}")
    verdict = None
    if splits is not None:
        verdict = teach_verdict(card, result.model, images, splits, args.device)
        print(verdict.message(), file=sys.stdout if verdict.accepted else sys.stderr)
    installed = None
    if args.install_as and (verdict is None or verdict.accepted):
        installed = install_taught_model(result.model.directory, args.install_as)
        print(f"installed {installed.name} (version {installed.data['version']}) into {installed.directory}")
    if verdict is not None:
        write_teach_report(Path(args.output_dir) / TEACH_REPORT, verdict, installed)
    return 0 if verdict is None or verdict.accepted else EXIT_WORSE


def _resume_advice(output_dir: str) -> str:
    """What to do after a stopped round: resume from its checkpoint, or start again."""
    from asdseg.training.trainer import CHECKPOINT_FILE

    if (Path(output_dir) / CHECKPOINT_FILE).is_file():
        return (
            f"The last checkpoint in {output_dir} is intact; run the same command with "
            "--resume to continue from it."
        )
    return "It stopped before its first checkpoint: nothing to resume; run it again from the start."
