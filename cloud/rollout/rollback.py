"""Roll back: re-deploy the previous production version through the same canary -> fleet path.

The registry says what to go back to (``aliases.rollback_target``); the ring target conditions default to
those of the rollout on the hub now. Aliases move only once the fleet runs the previous version, so a
rollback that fails part-way can simply be run again: it resumes the same rollout.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud.registry import Registry, RegistryEntry
from cloud.rollout import naming
from cloud.rollout.aliases import PREVIOUS, PRODUCTION, RollbackTarget, rollback_target
from cloud.rollout.deployer import RingResult, Rollout
from cloud.rollout.errors import RolloutError
from edge_module.release import Release


def ring_conditions(rollout: Rollout, name: str, given: dict[str, str | None]) -> dict[str, str]:
    on_hub = {d.ring: d.target_condition for d in rollout.current(name)}
    conditions = {}
    for ring in naming.RINGS:
        condition = given.get(ring) or on_hub.get(ring)
        if not condition:
            raise RolloutError(
                f"no {ring} target condition: pass --{ring}-condition (the hub holds no {ring} deployment of {name})"
            )
        conditions[ring] = condition
    return conditions


def rollback(
    registry: Registry,
    name: str,
    rollout: Rollout,
    release_of: Callable[[RegistryEntry], Release],
    given_conditions: dict[str, str | None],
) -> tuple[RollbackTarget, list[RingResult]]:
    target = rollback_target(registry, name)
    conditions = ring_conditions(rollout, name, given_conditions)
    release = release_of(target.previous)
    results = [rollout.deploy_ring(release, ring, conditions[ring]) for ring in naming.RINGS]
    registry.promote(name, target.production.version, alias=PREVIOUS)
    registry.promote(name, target.previous.version, alias=PRODUCTION)
    return target, results
