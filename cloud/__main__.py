"""``python -m cloud``: the training sidecar's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "edge_module" / "default_model"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud", description="Train, export and release models.")
    commands = parser.add_subparsers(dest="command", required=True)
    bundle = commands.add_parser("bundle-default", help="train and export the edge module's bundled default model")
    bundle.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.command == "bundle-default":
        from cloud.bundle_default import build_default_model

        manifest = build_default_model(args.out)
        sys.stdout.write(json.dumps({k: manifest[k] for k in ("name", "version", "sha256", "metrics")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
