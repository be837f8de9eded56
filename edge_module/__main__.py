"""``python -m edge_module``: start the module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError


def _model_arg(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.onnx, got {value!r}")
    return name, Path(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edge_module",
        description="Serve ONNX models over the Open Inference Protocol V2; settings come from EDGE_* variables.",
    )
    parser.add_argument(
        "--model",
        action="append",
        type=_model_arg,
        default=[],
        metavar="NAME=PATH.onnx",
        help="also serve this file as NAME (repeatable; not written to the store)",
    )
    parser.add_argument("--host", help="overrides EDGE_HOST")
    parser.add_argument("--port", type=int, help="overrides EDGE_PORT")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from edge_module.logs import configure_logging
    from edge_module.server import Service, run
    from edge_module.settings import Settings

    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.stderr.write(f"invalid settings:\n{exc}\n")
        return 2
    configure_logging(settings.log_level)
    missing = [str(path) for _, path in args.model if not path.is_file()]
    if missing:
        logging.getLogger("edge_module").error("model file(s) not found: %s", ", ".join(missing))
        return 2
    from edge_module.twin import edge_environment, iot_edge_service

    services: tuple[Service, ...] = ()
    if edge_environment():
        services = (iot_edge_service,)
    else:
        logging.getLogger("edge_module").info("no IoT Edge environment: standalone mode, no twin")
    return run(settings, dict(args.model), services)


if __name__ == "__main__":
    sys.exit(main())
