from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from cloud.registry_location import LOCATION_HELP

NAME = "registry"
HELP = "list, show and promote model versions in the registry of record (a folder or Azure ML)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="LOCATION", help=LOCATION_HELP)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list models and versions")
    listing.add_argument("name", nargs="?", help="only this model")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = actions.add_parser(
        "show",
        help="show one version as JSON (default: the latest), with the drift profile from its ONNX file",
    )
    show.add_argument("name")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--alias")
    show.add_argument(
        "--no-profile", action="store_true", help="skip the drift profile (it needs the file: a download on Azure ML)"
    )
    promote = actions.add_parser(
        "promote", help="point an alias (default: production) at a version; no other version keeps it"
    )
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="production")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.registry_location import open_registry

    try:
        registry = open_registry(args.registry)
        if args.action == "list":
            entries = registry.list(args.name)
            if args.json:
                sys.stdout.write(json.dumps([e.to_dict() for e in entries], indent=2) + "\n")
                return 0
            rows = [("NAME", "VERSION", "ALIASES", "SHA256", "SIZE", "CREATED")]
            rows += [
                (e.name, e.version, ",".join(e.aliases) or "-", e.sha256[:12], str(e.size), e.created_at)
                for e in entries
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for row in rows:
                sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
            return 0
        if args.action == "show":
            entry = registry.get(args.name, version=args.version, alias=args.alias)
            document: dict[str, Any] = entry.to_dict()
            if not args.no_profile:
                with tempfile.TemporaryDirectory(prefix="registry-show-") as work:
                    document["profile"] = _profile(registry.fetch(entry, Path(work)))
        else:
            document = registry.promote(args.name, args.version, alias=args.alias).to_dict()
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code


def _profile(path: Path) -> Any:
    import onnx

    from edge_module.model_contract import ModelMetadata

    model = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}).profile
