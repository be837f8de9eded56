"""The Azure CLI (``az`` + the azure-iot extension) commands equivalent to what we send."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any


def set_modules(hub: str, device: str, manifest: Path) -> str:
    return shlex.join(["az", "iot", "edge", "set-modules", "--hub-name", hub, "--device-id", device,
                       "--content", str(manifest)])  # fmt: skip


def layered_deployment(hub: str, configuration: dict[str, Any], content_file: Path) -> str:
    return shlex.join([
        "az", "iot", "edge", "deployment", "create", "--layered", "--hub-name", hub,
        "--deployment-id", configuration["id"], "--content", str(content_file),
        "--target-condition", configuration["targetCondition"], "--priority", str(configuration["priority"]),
        "--custom-metric-queries", json.dumps(configuration.get("metrics", {}).get("queries", {})),
    ])  # fmt: skip


def module_twin_update(hub: str, device: str, module: str, desired: dict[str, Any], etag: str) -> str:
    return shlex.join(["az", "iot", "hub", "module-twin", "update", "--hub-name", hub, "--device-id", device,
                       "--module-id", module, "--desired", json.dumps(desired, separators=(",", ":")),
                       "--etag", etag])  # fmt: skip


def fleet_query(hub: str, sql: str) -> str:
    return shlex.join(["az", "iot", "hub", "query", "--hub-name", hub, "--query-command", sql])
