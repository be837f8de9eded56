"""Layered deployments: roll model releases to a fleet, independently of the rest of the configuration.

A layered deployment sets only ``properties.desired.models`` of our module on the devices its target
condition matches; the base deployment keeps owning the modules, routes and everything else. Where
several layered deployments match a device, the highest priority owns ``models``.
"""

from __future__ import annotations

import re
from typing import Any

from cloud.releases.errors import ManifestInvalid, TemplateError
from cloud.releases.schemas import twin_limit_problems

# IoT Hub configuration ids: lowercase letters, digits and - : + % _ # * ? ! ( ) , = @ ; ', at most 128.
CONFIGURATION_ID = re.compile(r"^[a-z0-9\-:+%_#*?!(),=@;']{1,128}$")
MODELS_PATH = "properties.desired.models"
QUERY_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def layered_deployment(
    configuration_id: str,
    models: dict[str, Any],
    target_condition: str,
    priority: int,
    module: str,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The IoT Hub configuration body for ``PUT /configurations/{id}``."""
    if not CONFIGURATION_ID.fullmatch(configuration_id):
        raise TemplateError(
            f"invalid deployment id {configuration_id!r}: 1-128 of lowercase letters, digits and -:+%_#*?!(),=@;'"
        )
    if not target_condition.strip():
        raise TemplateError("a layered deployment needs a target condition, e.g. \"tags.environment='prod'\"")
    if priority < 0:
        raise TemplateError(f"priority must be 0 or more, got {priority}")
    if not models:
        raise TemplateError("a layered deployment needs at least one release")
    problems = list(twin_limit_problems(module, {"models": models}))
    if problems:
        raise ManifestInvalid(f"layered deployment {configuration_id} does not fit in a module twin:", problems)
    return {
        "id": configuration_id,
        "schemaVersion": "1.0",
        "labels": dict(labels or {}),
        "content": {"modulesContent": {module: {MODELS_PATH: models}}},
        "targetCondition": target_condition,
        "priority": priority,
        "metrics": {"queries": metric_queries(models, module)},
    }


def metric_queries(models: dict[str, Any], module: str) -> dict[str, str]:
    """Custom deployment metrics: per model, the devices that run this release and those that failed it."""
    base = f"SELECT deviceId FROM devices.modules WHERE moduleId = '{module}'"
    queries = {}
    for name, release in models.items():
        # A name with '-' would need escaping in the query language: leave such models out of the metrics.
        if release is None or not QUERY_IDENTIFIER.fullmatch(name):
            continue
        key = name.replace("_", "")[:40] or "model"
        reported = f"properties.reported.models.{name}"
        queries[f"{key}Active"] = (
            f"{base} AND {reported}.state = 'active' AND {reported}.activeVersion = '{release['version']}'"
        )
        queries[f"{key}Failed"] = (
            f"{base} AND {reported}.state = 'failed' AND {reported}.desiredVersion = '{release['version']}'"
        )
    return queries
