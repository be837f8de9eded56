from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

NAME = "fleet"
HELP = "fleet status from the module twins: which devices run which model version, and which failed"
HUB_ENV = "IOTHUB_CONNECTION_STRING"


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help=f"query the module twins' reported models (uses ${HUB_ENV})")
    status.add_argument("--module", default="edge-inference", help="the module's name (default: %(default)s)")
    status.add_argument("--model", help="only this model")
    status.add_argument("--json", action="store_true", help="print JSON (rows and summary)")
    status.add_argument("--hub-endpoint", help="IoT Hub base URL (default: https://<HostName>; for labs and tests)")


def run(args: argparse.Namespace) -> int:
    from cloud.errors import CloudError
    from cloud.releases import azcli
    from cloud.releases.errors import IoTHubError
    from cloud.releases.fleet import model_statuses, shadow_statuses, status_query, summary
    from cloud.releases.iothub import HubCredentials, IoTHubClient

    try:
        connection_string = os.environ.get(HUB_ENV)
        if not connection_string:
            raise IoTHubError(f"set ${HUB_ENV} to the hub's connection string (a policy with registry read)")
        credentials = HubCredentials.from_connection_string(connection_string)
        sql = status_query(args.module)
        with IoTHubClient(credentials, endpoint=args.hub_endpoint) as client:
            twins = client.query(sql)
            rows = model_statuses(twins, args.model)
            shadows = shadow_statuses(twins, args.model)
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    totals = summary(rows)
    if args.json:
        document = {
            "devices": [row.to_dict() for row in rows],
            "summary": totals,
            "shadows": [row.to_dict() for row in shadows],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        table = [("DEVICE", "MODEL", "STATE", "ACTIVE", "DESIRED", "ERROR")]
        table += [
            (r.device, r.model, r.state, r.active_version or "-", r.desired_in_twin or r.desired_version or "-",
             r.error or "")
            for r in rows
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if shadows:
            _shadow_table(shadows)
        for model, counts in totals.items():
            active = ", ".join(f"v{v}: {n}" for v, n in sorted(counts["active"].items())) or "none"
            sys.stdout.write(
                f"{model}: active {active}; failed {len(counts['failed'])}; pending {len(counts['pending'])}\n"
            )
    sys.stderr.write("equivalent: " + azcli.fleet_query(credentials.hub_name, sql) + "\n")
    failed = any(counts["failed"] for counts in totals.values())
    return 1 if failed else 0


def _shadow_table(rows: list[Any]) -> None:
    """Per device: the shadow's state and how it compares with the active version (docs/shadow.md)."""
    table = [("DEVICE", "SHADOW OF", "STATE", "VERSION", "COMPARED", "AGREEMENT", "MEAN |DIFF|", "DROPPED", "ERROR")]
    for r in rows:
        agreement = "-" if r.agreement is None else f"{r.agreement:.4f}"
        difference = "-" if r.mean_abs_diff is None else f"{r.mean_abs_diff:.4g}"
        version = r.version or r.desired_version or "-"
        table.append(
            (r.device, r.model, r.state, version, str(r.compared), agreement, difference, str(r.dropped), r.error or "")
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    sys.stdout.write("\n")
    for row in table:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
