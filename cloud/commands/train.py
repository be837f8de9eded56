from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from cloud.registry_location import LOCATION_HELP

NAME = "train"
HELP = (
    "train candidates, compare, export the best to ONNX (parity-gated) and register it; "
    "identical bytes to the latest version register nothing ('unchanged: NAME version N')"
)


def configure(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="CSV/Parquet path, sklearn:<name>, azureml:// URI or Blob URL")
    data.add_argument("--target", help="target column (default: 'target' for sklearn: data; none = clustering)")
    data.add_argument("--task", choices=("classification", "regression", "clustering"), help="default: inferred")
    data.add_argument("--drop", action="append", default=[], metavar="COLUMN", help="ignore this column")
    search = parser.add_argument_group("search")
    search.add_argument("--algorithm", action="append", default=[], help="only these candidates (repeatable)")
    search.add_argument("--trials", type=int, default=8, help="parameter settings per candidate (%(default)s)")
    search.add_argument("--time-budget", type=float, help="seconds for the whole search (at least 1 trial each)")
    search.add_argument("--cv", type=int, default=3, help="cross-validation folds (%(default)s)")
    search.add_argument("--select-by", help="metric that picks the winner, e.g. f1_macro, accuracy, rmse, silhouette")
    search.add_argument("--test-size", type=float, default=0.25, help="holdout fraction (%(default)s)")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument(
        "--parity-tolerance", type=float, default=1e-4, help="ONNX vs scikit-learn tolerance (%(default)s)"
    )
    search.add_argument("--no-progress", action="store_true", help="no progress bar")
    out = parser.add_argument_group("output")
    out.add_argument("--name", help="model name (default: from the data source)")
    out.add_argument("--out", type=Path, help="report folder (default: runs/<name>)")
    out.add_argument("--registry", metavar="LOCATION", help=LOCATION_HELP)
    out.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="registry tag (repeatable)")
    out.add_argument("--promote", action="store_true", help="point the 'production' alias at the new version")
    out.add_argument(
        "--azure", action="store_true", help="deprecated: the same as --registry azureml: (the AZUREML_* workspace)"
    )


def default_name(source: str) -> str:
    stem = source.split(":", 1)[1] if source.startswith("sklearn:") else Path(source.split("?")[0]).stem
    return re.sub(r"[^A-Za-z0-9_-]", "-", stem)[:64] or "model"


def run(args: argparse.Namespace) -> int:
    from cloud import workflow
    from cloud.errors import CloudError
    from cloud.registry_location import open_registry
    from cloud.tracking import log_metrics

    name = args.name or default_name(args.data)
    out_dir = args.out or Path("runs") / name
    try:
        location = args.registry
        if args.azure:
            if location is not None and location != "azureml:":
                raise CloudError("--azure is the same as --registry azureml:; give one of them")
            sys.stderr.write("warning: --azure is deprecated; use --registry azureml: (or CLOUD_REGISTRY=azureml:)\n")
            location = "azureml:"
        tags = dict(_pair(tag) for tag in args.tag)
        registry = open_registry(location)  # a malformed location or missing workspace fails before training
        dataset = workflow.load_data(args.data, target=args.target, task=args.task, drop=tuple(args.drop))
        _print_data(dataset.report.to_dict())
        outcome = workflow.train_and_register(
            dataset,
            name,
            registry,
            out_dir,
            tags=tags,
            parity_tolerance=args.parity_tolerance,
            algorithms=tuple(args.algorithm),
            trials=args.trials,
            seconds=args.time_budget,
            cv=args.cv,
            select_by=args.select_by,
            test_size=args.test_size,
            seed=args.seed,
            progress=not args.no_progress,
        )
        sys.stdout.write(workflow.compare(outcome.run) + "\n\n")
        entry = outcome.entry
        assert entry is not None
        if args.promote:
            entry = registry.promote(entry.name, entry.version)
        sys.stdout.write(f"{outcome.model.parity.message}\n")
        if outcome.created:
            where = f"sha256 {entry.sha256} at {entry.uri}"
            sys.stdout.write(f"registered {entry.name} version {entry.version} {where}\n")
        else:
            sys.stdout.write(f"unchanged: {entry.name} version {entry.version}\n")
        sys.stdout.write(f"report: {outcome.report['report.md']}\n")
        best_row = outcome.run.comparison()[0]  # holdout metrics and the search score (e.g. cv_f1_macro)
        log_metrics(best_row, {"algorithm": outcome.run.best.name, **outcome.run.best.params})
        return 0
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code


def _pair(text: str) -> tuple[str, str]:
    from cloud.errors import CloudError

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CloudError(f"--tag needs KEY=VALUE, got {text!r}")
    return key, value


def _print_data(report: dict[str, Any]) -> None:
    lines = [
        f"data: {report['source']}: {report['rows']} rows, {report['columns']} feature columns, "
        f"task {report['task']}, target {report['target']!r}"
    ]
    if report["dropped"]:
        lines.append("  dropped: " + ", ".join(f"{k} ({v})" for k, v in report["dropped"].items()))
    missing = {k: v for k, v in report["missing_percent"].items() if v}
    if missing:
        lines.append("  missing %: " + ", ".join(f"{k} {v}" for k, v in missing.items()))
    if report["class_balance"]:
        lines.append("  class balance: " + json.dumps(report["class_balance"]))
    sys.stdout.write("\n".join(lines) + "\n")
