"""``asdseg evaluate``: Dice, Jaccard, ASD and HD95 of predicted label maps against references."""

from __future__ import annotations

import argparse
from pathlib import Path

from asdseg.cli.arguments import label_values
from asdseg.errors import InputError
from asdseg.io.output_paths import check_output_paths


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="Dice, Jaccard, ASD, HD95 of predictions vs references")
    evaluate.add_argument("--pred", nargs="+", required=True, help="predicted label maps")
    evaluate.add_argument("--ref", nargs="+", required=True, help="reference label maps, same order")
    evaluate.add_argument(
        "--labels", type=label_values, help="comma-separated label values (default: all non-zero present)"
    )
    evaluate.add_argument("--csv", help="also write the table as CSV")
    evaluate.set_defaults(handler=command_evaluate)


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
