"""Fleet status: which devices run which model version, and which failed, from the module twins."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from cloud.releases.errors import TemplateError

MODULE_ID = re.compile(r"^[A-Za-z0-9_\-.:+%#*?!(),=@;$']{1,128}$")


@dataclass(frozen=True)
class ModelStatus:
    device: str
    model: str
    state: str
    desired_version: str | None
    active_version: str | None
    error: str | None
    updated_at: str | None
    desired_in_twin: str | None  # what the hub asks for now; differs from desired_version while in flight

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShadowStatus:
    """A device's reported ``shadows.<name>`` (docs/shadow.md): how a candidate compares on its live traffic."""

    device: str
    model: str
    state: str
    version: str | None
    compared: int
    agreement: float | None
    mean_abs_diff: float | None
    dropped: int
    error: str | None
    desired_version: str | None  # what the hub asks for now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shadow_statuses(twins: list[dict[str, Any]], model: str | None = None) -> list[ShadowStatus]:
    rows = []
    for twin in twins:
        properties = twin.get("properties") or {}
        reported = (properties.get("reported") or {}).get("shadows") or {}
        desired = (properties.get("desired") or {}).get("shadows") or {}
        names = sorted({n for n, r in reported.items() if isinstance(r, dict)} | {n for n, r in desired.items() if r})
        for name in names:
            if model is not None and name != model:
                continue
            entry: dict[str, Any] = reported[name] if isinstance(reported.get(name), dict) else {}
            wanted = desired.get(name)
            rows.append(
                ShadowStatus(
                    device=str(twin.get("deviceId", "?")),
                    model=name,
                    state=str(entry.get("state", "pending")),
                    version=_text(entry.get("version")),
                    compared=_count(entry.get("compared")),
                    agreement=_number(entry.get("agreement")),
                    mean_abs_diff=_number(entry.get("meanAbsDiff")),
                    dropped=_count(entry.get("dropped")),
                    error=_text(entry.get("error")),
                    desired_version=_text(wanted.get("version")) if isinstance(wanted, dict) else None,
                )
            )
    return sorted(rows, key=lambda r: (r.model, r.device))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def targeted_query(configuration_id: str) -> str:
    """The devices a configuration targets, as IoT Edge deployments' targetedCount system metric counts them."""
    return f"SELECT deviceId FROM devices WHERE configurations.[[{configuration_id}]].status = 'Targeted'"


def status_query(module: str) -> str:
    if not MODULE_ID.fullmatch(module) or "'" in module:
        raise TemplateError(f"invalid module id {module!r}")
    return f"SELECT * FROM devices.modules WHERE moduleId = '{module}'"


def model_statuses(twins: list[dict[str, Any]], model: str | None = None) -> list[ModelStatus]:
    rows = []
    for twin in twins:
        device = str(twin.get("deviceId", "?"))
        properties = twin.get("properties") or {}
        reported = (properties.get("reported") or {}).get("models") or {}
        desired = (properties.get("desired") or {}).get("models") or {}
        names = sorted(set(reported) | {n for n, r in desired.items() if r is not None})
        for name in names:
            if model is not None and name != model:
                continue
            entry: dict[str, Any] = reported[name] if isinstance(reported.get(name), dict) else {}
            wanted = desired.get(name)
            rows.append(
                ModelStatus(
                    device=device,
                    model=name,
                    state=str(entry.get("state", "pending")),
                    desired_version=_text(entry.get("desiredVersion")),
                    active_version=_text(entry.get("activeVersion")),
                    error=_text(entry.get("error")),
                    updated_at=_text(entry.get("updatedAt")),
                    desired_in_twin=_text(wanted.get("version")) if isinstance(wanted, dict) else None,
                )
            )
    return sorted(rows, key=lambda r: (r.model, r.device))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def summary(rows: list[ModelStatus]) -> dict[str, dict[str, Any]]:
    """Per model: device counts by active version, the failed devices with their errors, and the pending."""
    result: dict[str, dict[str, Any]] = {}
    for row in rows:
        model = result.setdefault(row.model, {"active": {}, "failed": {}, "pending": []})
        if row.state == "failed":
            model["failed"][row.device] = row.error or "(no reason reported)"
        if row.active_version is not None and row.state != "removed":
            model["active"][row.active_version] = model["active"].get(row.active_version, 0) + 1
        if row.state not in ("active", "failed", "removed") or (
            row.desired_in_twin is not None and row.desired_in_twin != row.desired_version
        ):
            model["pending"].append(row.device)
    return result
