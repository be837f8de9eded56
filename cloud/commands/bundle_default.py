from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "bundle-default"
HELP = "train and export the edge module's bundled default model (deterministic)"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "edge_module" / "default_model"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from cloud.bundle_default import build_default_model

    manifest = build_default_model(args.out)
    summary = {key: manifest[key] for key in ("name", "version", "sha256", "metrics")}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
