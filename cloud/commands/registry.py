from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "registry"
HELP = "list, show and promote model versions in the local registry"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, default=None, help="registry folder (default: $CLOUD_REGISTRY_DIR or ./registry)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list models and versions")
    listing.add_argument("name", nargs="?", help="only this model")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = actions.add_parser("show", help="show one version as JSON (default: the latest)")
    show.add_argument("name")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--alias")
    promote = actions.add_parser("promote", help="point an alias (default: production) at a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="production")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.registry import LocalRegistry

    registry = LocalRegistry(args.registry)
    try:
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
        else:
            entry = registry.promote(args.name, args.version, alias=args.alias)
        sys.stdout.write(json.dumps(entry.to_dict(), indent=2) + "\n")
        return 0
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
