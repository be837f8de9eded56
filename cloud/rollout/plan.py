"""Is there anything to deploy? The candidate a training run produced against what is in production.

The candidate is named by its bytes (the ONNX file a training run wrote) or by its version. The decision
compares sha256s, not version numbers: a registry that registers the same bytes again (idempotently, or
not) never makes a new rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.errors import ModelNotFound
from cloud.registry import Registry, RegistryEntry
from cloud.rollout.aliases import PRODUCTION, aliased
from edge_module.store import sha256_of_file


@dataclass(frozen=True)
class Plan:
    model: str
    candidate: RegistryEntry
    production: RegistryEntry | None
    deploy: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "deploy": self.deploy,
            "reason": self.reason,
            "candidate": {"version": self.candidate.version, "sha256": self.candidate.sha256},
            "production": None
            if self.production is None
            else {"version": self.production.version, "sha256": self.production.sha256},
        }


def candidate_by_sha256(registry: Registry, name: str, sha256: str) -> RegistryEntry:
    matches = [entry for entry in registry.list(name) if entry.sha256 == sha256]
    if not matches:
        raise ModelNotFound(f"no registered version of {name} has sha256 {sha256}: was the candidate registered?")
    return matches[0]  # the oldest version holding these bytes: the one an idempotent registry reports


def plan(registry: Registry, name: str, *, candidate_file: Any = None, version: str | None = None) -> Plan:
    if candidate_file is not None:
        candidate = candidate_by_sha256(registry, name, sha256_of_file(candidate_file))
    else:
        candidate = registry.get(name, version=version)
    production = aliased(registry, name, PRODUCTION)
    if production is None:
        return Plan(name, candidate, None, True, f"deploy {name} version {candidate.version}: nothing in production")
    if production.sha256 == candidate.sha256:
        reason = (
            f"nothing to deploy: {name} version {candidate.version} has the bytes of production version "
            f"{production.version} (sha256 {production.sha256[:12]})"
        )
        return Plan(name, candidate, production, False, reason)
    return Plan(
        name,
        candidate,
        production,
        True,
        f"deploy {name} version {candidate.version} (production is version {production.version})",
    )
