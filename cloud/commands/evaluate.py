from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from cloud.registry_location import LOCATION_HELP

NAME = "evaluate"
HELP = "score a registered model (its ONNX file, with onnxruntime) on a labelled data source"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name in the registry")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--alias")
    parser.add_argument("--data", required=True, help="CSV/Parquet path, sklearn:<name>, azureml:// URI or Blob URL")
    parser.add_argument("--target", help="target column (default: 'target' for sklearn: data)")
    parser.add_argument("--registry", metavar="LOCATION", help=LOCATION_HELP)


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.registry_location import open_registry
    from cloud.scoring import score_model

    try:
        registry = open_registry(args.registry)
        entry = registry.get(args.name, version=args.version, alias=args.alias)
        with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
            result = score_model(registry.fetch(entry, Path(work)), args.data, args.target)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0
