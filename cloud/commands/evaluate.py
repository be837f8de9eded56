from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "evaluate"
HELP = "score a registered model (its ONNX file, with onnxruntime) on a labelled data source"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name in the registry")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--alias")
    parser.add_argument("--data", required=True, help="CSV/Parquet path, sklearn:<name>, azureml:// URI or Blob URL")
    parser.add_argument("--target", help="target column (default: 'target' for sklearn: data)")
    parser.add_argument("--registry", type=Path, help="local registry (default: $CLOUD_REGISTRY_DIR or ./registry)")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.registry import LocalRegistry
    from cloud.scoring import score_model

    try:
        entry = LocalRegistry(args.registry).get(args.name, version=args.version, alias=args.alias)
        result = score_model(entry.path, args.data, args.target)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0
