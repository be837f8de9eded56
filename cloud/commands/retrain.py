from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "retrain"
HELP = (
    "train a challenger on the original data plus labelled production rows; promote it only if it beats the "
    "production model on the most recent rows (exit 0 promoted, 11 not better, 3 parity failure, 1 error)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    from cloud.registry_location import LOCATION_HELP

    parser.add_argument("name", help="model name in the registry (its 'production' alias is the champion)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="the original training data (as for train --data)")
    data.add_argument("--target", help="target column of --data (default: 'target' for sklearn: data)")
    data.add_argument("--capture", required=True, help="captured production data (as for monitor --capture)")
    data.add_argument("--labels", type=Path, required=True, help="CSV/Parquet: correlationId, [row,] true value")
    data.add_argument("--label-column", default="label", help="the true value's column in --labels (%(default)s)")
    holdout = data.add_mutually_exclusive_group()
    holdout.add_argument("--holdout-since", help="hold out labelled production rows at or after this UTC time")
    holdout.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="else hold out the newest share of them (%(default)s)"
    )
    gate = parser.add_argument_group("gate")
    gate.add_argument(
        "--min-improvement", type=float, default=0.01, help="how much better the challenger must be (%(default)s)"
    )
    gate.add_argument("--select-by", help="metric compared: f1_macro (default), accuracy; rmse (default), mae, r2")
    gate.add_argument("--register-anyway", action="store_true", help="register a challenger that is not better")
    gate.add_argument("--alias", default="production", help="alias a better challenger gets (%(default)s)")
    gate.add_argument("--parity-tolerance", type=float, default=1e-4, help="ONNX vs scikit-learn (%(default)s)")
    search = parser.add_argument_group("search (as for train)")
    search.add_argument("--algorithm", action="append", default=[], help="only these candidates (repeatable)")
    search.add_argument("--trials", type=int, default=8, help="parameter settings per candidate (%(default)s)")
    search.add_argument("--time-budget", type=float, help="seconds for the whole search")
    search.add_argument("--cv", type=int, default=3, help="cross-validation folds (%(default)s)")
    search.add_argument("--test-size", type=float, default=0.25, help="holdout fraction of the search (%(default)s)")
    search.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--registry", help=LOCATION_HELP)
    out.add_argument("--monitor-report", type=Path, help="the monitor summary.json that triggered this run (lineage)")
    out.add_argument("--out", type=Path, help="report folder (default: runs/retrain-<name>)")
    out.add_argument("--json", action="store_true", help="print the JSON summary")


def run(args: argparse.Namespace) -> int:
    from cloud.captured import parse_time, read_labels
    from cloud.errors import CloudError
    from cloud.registry_location import open_registry
    from cloud.retraining import RetrainOptions, retrain

    out_dir = args.out or Path("runs") / f"retrain-{args.name}"
    try:
        options = RetrainOptions(
            target=args.target,
            label_column=args.label_column,
            holdout_since=parse_time(args.holdout_since, "--holdout-since") if args.holdout_since else None,
            holdout_fraction=args.holdout_fraction,
            min_improvement=args.min_improvement,
            register_anyway=args.register_anyway,
            alias=args.alias,
            select_by=args.select_by,
            train_options={
                "algorithms": tuple(args.algorithm),
                "trials": args.trials,
                "seconds": args.time_budget,
                "cv": args.cv,
                "test_size": args.test_size,
                "seed": args.seed,
            },
            parity_tolerance=args.parity_tolerance,
        )
        registry = open_registry(args.registry)
        labels = read_labels(args.labels, args.label_column)
        result = retrain(args.name, registry, args.data, args.capture, labels, options, out_dir, args.monitor_report)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    summary = result.summary
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    metric, champion, challenger = summary["metric"], summary["champion"], summary["challenger"]
    sys.stderr.write(
        f"{metric} on the recent holdout: champion (version {champion['version']}) {champion['scores'][metric]}, "
        f"challenger {challenger['scores'][metric]}\n{summary['decision']}; report: {result.report}\n"
    )
    return result.exit_code
