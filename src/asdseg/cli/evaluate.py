"""``asdseg evaluate``: Dice, Jaccard, ASD and HD95 of predicted label maps against references."""

from __future__ import annotations

import argparse

from asdseg.cli.arguments import check_text_output, label_values
from asdseg.io.output_paths import check_output_paths


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="Dice, Jaccard, ASD, HD95 of predictions vs references")
    evaluate.add_argument(
        "--pred", nargs="+", required=True, help="predicted label maps, or a folder of them"
    )
    evaluate.add_argument(
        "--ref",
        nargs="+",
        required=True,
        help="reference label maps in the same order, or a folder of them (paired by case name)",
    )
    evaluate.add_argument(
        "--labels", type=label_values, help="comma-separated label values (default: all non-zero present)"
    )
    evaluate.add_argument("--csv", help="also write the table as CSV")
    evaluate.set_defaults(handler=command_evaluate)


def command_evaluate(args: argparse.Namespace) -> int:
    from asdseg.evaluation.evaluate_predictions import evaluate_files, format_table, pair_by_case, write_csv

    pairs = pair_by_case(args.pred, args.ref)
    if args.csv:
        check_output_paths([("--csv", args.csv)], [path for pair in pairs for path in pair])
    check_text_output(args.csv, "--csv", ".csv", "table")
    rows = evaluate_files(pairs, args.labels)
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0
