"""Configuration ids, labels and priorities of the layered deployments a rollout creates.

Ids: ``<model>-v<version>-r<rollout>-<ring>``, e.g. ``wine-v3-r5-canary``. IoT Hub configuration ids are
at most 128 characters of lowercase letters, digits and ``-:+%_#*?!(),=@;'`` (the Azure Pipelines IoT
Edge task and the portal's "Name and label" step document the same set). Model names may hold capitals,
which ids may not: such a name is lowercased and suffixed with 8 hex digits of its sha256, so ``Wine`` and
``wine`` never share ids.

Priorities: ``base + 2 * rollout + (1 for the canary ring)``. ``rollout`` is a per-model sequence number
that grows by one with every rollout, a rollback included, so the newest rollout outranks everything before
it on every device: its fleet configuration (``base + 2r``) is above the previous rollout's canary one
(``base + 2(r-1) + 1``), and its canary configuration is above its own fleet one on the canary devices.
A version-derived priority would not do: a rollback re-deploys an older version and must still win.
``base`` (default 100) keeps every layered deployment above the base deployment, which IoT Edge requires
of layered deployments. Priorities are 32-bit integers, so a model has ``(2**31 - 2 - base) // 2`` rollouts
(over a billion) before the scheme runs out; ``priority`` refuses beyond that.
"""

from __future__ import annotations

import hashlib
import re

from cloud.releases.errors import TemplateError

MANAGED_BY = "edge-inference-rollout"
RINGS = ("canary", "fleet")
DEFAULT_PRIORITY_BASE = 100
MAX_PRIORITY = 2**31 - 1
CONFIGURATION_ID = re.compile(r"^[a-z0-9\-:+%_#*?!(),=@;']{1,128}$")
VERSION = re.compile(r"^[a-z0-9_-]{1,32}$")


def model_slug(model: str) -> str:
    lowered = model.lower()
    if lowered == model:
        return model
    return f"{lowered}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def configuration_id(model: str, version: str, rollout: int, ring: str) -> str:
    if ring not in RINGS:
        raise TemplateError(f"unknown ring {ring!r}: use one of {', '.join(RINGS)}")
    if not VERSION.fullmatch(version.lower()):
        raise TemplateError(f"version {version!r} cannot be part of an IoT Hub configuration id")
    identifier = f"{model_slug(model)}-v{version.lower()}-r{rollout}-{ring}"
    if not CONFIGURATION_ID.fullmatch(identifier):
        raise TemplateError(f"{identifier!r} is not a valid IoT Hub configuration id (at most 128 characters)")
    return identifier


def priority(rollout: int, ring: str, base: int = DEFAULT_PRIORITY_BASE) -> int:
    if rollout < 1 or base < 0:
        raise TemplateError(f"rollout numbers start at 1 and the base priority is 0 or more, got {rollout}, {base}")
    value = base + 2 * rollout + (1 if ring == "canary" else 0)
    if value > MAX_PRIORITY:
        raise TemplateError(f"rollout {rollout} of base {base} exceeds IoT Hub's 32-bit priority")
    return value


def labels(model: str, version: str, sha256: str, rollout: int, ring: str) -> dict[str, str]:
    """What a rollout reads back from the hub to find its own configurations (labels are mutable metadata)."""
    return {
        "managed-by": MANAGED_BY,
        "model": model,
        "version": version,
        "sha256": sha256,
        "rollout": str(rollout),
        "ring": ring,
    }
