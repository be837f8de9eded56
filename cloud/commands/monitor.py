from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAME = "monitor"
HELP = (
    "drift (PSI), prediction shift and live metrics of captured production data per device x version x window; "
    "exit 0 healthy, 10 retrain recommended, 1 error"
)


def configure(parser: argparse.ArgumentParser) -> None:
    from cloud.registry_location import LOCATION_HELP

    parser.add_argument("name", help="model name in the registry")
    parser.add_argument(
        "--capture",
        required=True,
        help="what IoT Hub routing wrote (Avro or JSON) or segment files: a folder, az://<container>[/<prefix>], "
        "a container URL (SAS or Entra ID) or azureml://datastores/<name>/paths/<prefix>",
    )
    parser.add_argument("--labels", type=Path, help="CSV/Parquet: correlationId, [row,] and the true value")
    parser.add_argument("--label-column", default="label", help="the true value's column in --labels (%(default)s)")
    parser.add_argument("--since", help="only records at or after this UTC time (ISO 8601)")
    parser.add_argument("--until", help="only records before this UTC time (ISO 8601)")
    parser.add_argument("--registry", help=LOCATION_HELP)
    parser.add_argument(
        "--window", default="1h", help="time window per report row: 15m, 1h, 1d, ..., or all (%(default)s)"
    )
    parser.add_argument(
        "--psi-threshold", type=float, default=0.2, help="PSI above which a feature drifted (%(default)s)"
    )
    parser.add_argument(
        "--metric-drop",
        type=float,
        default=0.05,
        help="relative drop of a live metric below the registered one that recommends retraining (%(default)s = 5%%)",
    )
    parser.add_argument("--min-rows", type=int, default=100, help="rows a window needs to be judged (%(default)s)")
    parser.add_argument("--min-labels", type=int, default=30, help="labelled rows a version needs (%(default)s)")
    parser.add_argument("--out", type=Path, help="report folder (default: runs/monitor-<name>)")
    parser.add_argument("--json", action="store_true", help="print the JSON summary")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from cloud.captured import parse_time, read_capture, read_labels
    from cloud.errors import CloudError
    from cloud.monitor_report import write_monitor_report
    from cloud.monitoring import MonitorSettings, monitor, window_length
    from cloud.registry_location import open_registry

    out_dir = args.out or Path("runs") / f"monitor-{args.name}"
    try:
        window_length(args.window)
        if args.psi_threshold <= 0 or args.metric_drop <= 0 or args.min_rows < 1 or args.min_labels < 1:
            raise CloudError("--psi-threshold and --metric-drop must be > 0, --min-rows and --min-labels >= 1")
        since = parse_time(args.since, "--since") if args.since else None
        until = parse_time(args.until, "--until") if args.until else None
        if since is not None and until is not None and since >= until:
            raise CloudError(f"--since {args.since} is not before --until {args.until}")
        registry = open_registry(args.registry)
        registry.get(args.name)  # an unknown model fails before any capture is read
        labels = read_labels(args.labels, args.label_column) if args.labels else None
        capture = read_capture(args.capture, args.name, since, until)
        settings = MonitorSettings(args.window, args.psi_threshold, args.metric_drop, args.min_rows, args.min_labels)
        with tempfile.TemporaryDirectory(prefix="monitor-") as workdir:
            summary = monitor(args.name, capture, registry, settings, labels, Path(workdir), since, until)
        files = write_monitor_report(summary, out_dir)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    _print_verdict(summary, files["report.md"])
    code: int = summary["exitCode"]
    return code


def _print_verdict(summary: dict[str, Any], report: Path) -> None:
    out = sys.stderr  # stdout stays JSON when --json is given
    read = summary["capture"]["read"]
    skipped = {k: v for k, v in read["skipped"].items() if v}
    out.write(f"{summary['model']}: {summary['capture']['records']} records in the window")
    out.write(f"; skipped {json.dumps(skipped)}\n" if skipped else "\n")
    if summary["driftedFeatures"]:
        out.write(
            f"drift: features {', '.join(summary['driftedFeatures'])} on devices "
            f"{', '.join(summary['driftedDevices'])} (PSI > {summary['psiThreshold']})\n"
        )
    for signal in summary["metricSignals"]:
        out.write(
            f"metric: version {signal['version']} {signal['metric']} {signal['live']} vs {signal['registered']} "
            f"registered ({signal['relativeDrop']:.1%} worse)\n"
        )
    out.write(f"{summary['status']}; report: {report}\n")
