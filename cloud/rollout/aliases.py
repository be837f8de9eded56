"""The registry's view of what runs: ``production`` (what the fleet runs) and ``previous`` (what it ran before).

Both are ordinary registry aliases moved with the registry's own ``promote``. Putting a version in production
first points ``previous`` at the version leaving production, then ``production`` at the new one; each step
leaves both aliases on valid versions, so a crash between them loses nothing (a re-run repeats it). A
rollback swaps the two, as ``kubectl rollout undo`` does: a second rollback returns to the version the
first one left.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.errors import ModelNotFound
from cloud.registry import Registry, RegistryEntry
from cloud.rollout.errors import NoPreviousRelease

PRODUCTION = "production"
PREVIOUS = "previous"


def aliased(registry: Registry, name: str, alias: str) -> RegistryEntry | None:
    try:
        return registry.get(name, alias=alias)
    except ModelNotFound:
        return None


def promote_to_production(registry: Registry, name: str, version: str) -> tuple[RegistryEntry, RegistryEntry | None]:
    """Point ``production`` at ``version``, keeping the version it leaves as ``previous``."""
    entry = registry.get(name, version=version)  # fails before any alias moves when the version is unknown
    current = aliased(registry, name, PRODUCTION)
    if current is not None and current.version == entry.version:
        return entry, aliased(registry, name, PREVIOUS)
    if current is not None:
        registry.promote(name, current.version, alias=PREVIOUS)
    return registry.promote(name, entry.version, alias=PRODUCTION), current


@dataclass(frozen=True)
class RollbackTarget:
    production: RegistryEntry
    previous: RegistryEntry


def rollback_target(registry: Registry, name: str) -> RollbackTarget:
    production = aliased(registry, name, PRODUCTION)
    previous = aliased(registry, name, PREVIOUS)
    if production is None:
        raise NoPreviousRelease(f"no previous release of {name} to roll back to: nothing of {name} is in production")
    if previous is None or previous.version == production.version:
        raise NoPreviousRelease(
            f"no previous release of {name} to roll back to: version {production.version} is the only one "
            f"that has been in production (the registry has no '{PREVIOUS}' alias for {name})"
        )
    return RollbackTarget(production, previous)
