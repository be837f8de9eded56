from __future__ import annotations

import argparse
import json
import sys

NAME = "data"
HELP = "load and clean a data source and print its report (rows, columns, types, missing percentages, class balance)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV/Parquet path, sklearn:<name>, azureml:// URI or Blob URL")
    parser.add_argument("--target", help="target column (default: 'target' for sklearn: data; none = clustering)")
    parser.add_argument("--task", choices=("classification", "regression", "clustering"), help="default: inferred")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN", help="ignore this column")


def run(args: argparse.Namespace) -> int:
    from cloud.data import load_dataset
    from cloud.errors import CloudError

    try:
        dataset = load_dataset(args.data, target=args.target, task=args.task, drop=tuple(args.drop))
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    sys.stdout.write(json.dumps(dataset.report.to_dict(), indent=2) + "\n")
    return 0
