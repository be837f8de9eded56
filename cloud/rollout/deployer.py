"""Roll a signed release out through IoT Hub layered deployments, ring by ring, superseding the last one.

One rollout is a number (see ``naming``) and two configurations: the canary ring first, then the fleet.
Each ring is created, then waited for: every device the configuration targets (its device twin's
``configurations`` map names it ``Targeted``, as IoT Edge deployments' targetedCount metric counts them) must
report the release ``active`` in its module twin; the first ``failed`` stops the rollout. Once the fleet
ring is active, the configurations of every earlier rollout of the model are deleted: the hub holds at most
three configurations of a model while a rollout is in flight (the old two and the new canary), and one
rollout (two configurations) at rest, far from the 100-deployment quota. The release to go back to lives in the
registry (the ``previous`` alias, see ``aliases``), not in the hub.

Re-running a ring of the rollout in flight resumes it: existing configurations are kept (their content
cannot change anyway) and only waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud.releases.fleet import ModelStatus, model_statuses, status_query, targeted_query
from cloud.releases.layered import layered_deployment
from cloud.rollout import naming
from cloud.rollout.errors import RolloutError, RolloutFailed, RolloutTimeout
from edge_module.release import Release


class Hub(Protocol):
    def list_configurations(self) -> list[dict[str, Any]]: ...

    def put_configuration(self, configuration: dict[str, Any], etag: str | None = None) -> dict[str, Any]: ...

    def delete_configuration(self, configuration_id: str, etag: str = "*") -> None: ...

    def query(self, sql: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Deployed:
    """One of our layered deployments, as read back from the hub."""

    id: str
    model: str
    version: str
    sha256: str
    rollout: int
    ring: str
    priority: int
    target_condition: str
    etag: str

    @classmethod
    def parse(cls, configuration: dict[str, Any]) -> Deployed | None:
        labels = configuration.get("labels") or {}
        if labels.get("managed-by") != naming.MANAGED_BY or labels.get("ring") not in naming.RINGS:
            return None
        try:
            rollout = int(labels["rollout"])
            return cls(
                id=str(configuration["id"]),
                model=str(labels["model"]),
                version=str(labels["version"]),
                sha256=str(labels["sha256"]),
                rollout=rollout,
                ring=str(labels["ring"]),
                priority=int(configuration.get("priority", 0)),
                target_condition=str(configuration.get("targetCondition", "")),
                etag=str(configuration.get("etag") or "*"),
            )
        except (KeyError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "rollout": self.rollout,
            "ring": self.ring,
            "priority": self.priority,
            "targetCondition": self.target_condition,
        }


@dataclass
class Waiting:
    """How long a ring may take. ``sleep`` and ``clock`` are injectable for tests."""

    timeout_seconds: float = 1800.0
    poll_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass
class RingResult:
    deployed: Deployed
    created: bool
    devices: list[ModelStatus]
    deleted: list[str] = field(default_factory=list)


class Rollout:
    def __init__(
        self,
        hub: Hub,
        *,
        module: str = "edge-inference",
        priority_base: int = naming.DEFAULT_PRIORITY_BASE,
        waiting: Waiting | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.hub = hub
        self.module = module
        self.priority_base = priority_base
        self.waiting = waiting or Waiting()
        self.log = log

    def deployed(self, model: str) -> list[Deployed]:
        """Our configurations of this model, oldest rollout first."""
        found = (Deployed.parse(c) for c in self.hub.list_configurations())
        ours = [d for d in found if d is not None and d.model == model]
        return sorted(ours, key=lambda d: (d.rollout, naming.RINGS.index(d.ring)))

    def current(self, model: str) -> list[Deployed]:
        """The configurations of the latest rollout of this model (empty when there is none)."""
        ours = self.deployed(model)
        latest = max((d.rollout for d in ours), default=0)
        return [d for d in ours if d.rollout == latest]

    def deploy_ring(self, release: Release, ring: str, target_condition: str) -> RingResult:
        """Create (or resume) this release's configuration for one ring and wait for its devices."""
        if ring not in naming.RINGS:
            raise RolloutError(f"unknown ring {ring!r}: use one of {', '.join(naming.RINGS)}")
        current = self.current(release.name)
        resuming = [d for d in current if (d.version, d.sha256) == (release.version, release.sha256)]
        if resuming:
            number = resuming[0].rollout
        elif ring == "fleet":
            raise RolloutError(
                f"{release.name} version {release.version} has no canary ring on the hub: "
                "deploy the canary ring of this release first"
            )
        else:
            number = max((d.rollout for d in current), default=0) + 1
        existing = next((d for d in resuming if d.ring == ring), None)
        created = existing is None
        if existing is None:
            existing = self._create(release, ring, target_condition, number)
        else:
            self.log(f"{existing.id} exists (rollout {number}); waiting for its devices")
        devices = self.wait(release.name, release.version, existing.id)
        result = RingResult(existing, created, devices)
        if ring == "fleet":
            result.deleted = self.prune(release.name, number)
        return result

    def _create(self, release: Release, ring: str, target_condition: str, number: int) -> Deployed:
        identifier = naming.configuration_id(release.name, release.version, number, ring)
        configuration = layered_deployment(
            identifier,
            {release.name: release.as_desired()},
            target_condition,
            naming.priority(number, ring, self.priority_base),
            self.module,
            naming.labels(release.name, release.version, release.sha256, number, ring),
        )
        created = self.hub.put_configuration(configuration)
        deployed = Deployed.parse({**configuration, **created})
        assert deployed is not None
        self.log(f"created {deployed.id} (priority {deployed.priority}, target {target_condition})")
        return deployed

    def wait(self, model: str, version: str, configuration_id: str) -> list[ModelStatus]:
        """Until every device the configuration targets reports ``version`` active; fail at the first failure."""
        deadline = self.waiting.clock() + self.waiting.timeout_seconds
        targeted_sql = targeted_query(configuration_id)
        while True:
            targeted = {str(row.get("deviceId")) for row in self.hub.query(targeted_sql)}
            twins = [t for t in self.hub.query(status_query(self.module)) if t.get("deviceId") in targeted]
            rows = model_statuses(twins, model)
            failed = [r for r in rows if r.state == "failed" and r.desired_version == version]
            if failed:
                reasons = "; ".join(f"{r.device}: {r.error or 'no reason reported'}" for r in failed)
                raise RolloutFailed(f"{model} version {version} failed on {len(failed)} device(s): {reasons}")
            done = [r for r in rows if r.state == "active" and r.active_version == version]
            if targeted and len(done) == len(targeted):
                self.log(f"{configuration_id}: {len(done)} device(s) report {model} {version} active")
                return rows
            if self.waiting.clock() >= deadline:
                raise RolloutTimeout(
                    f"{configuration_id}: {len(done)} of {len(targeted)} targeted device(s) report {model} {version} "
                    f"active after {self.waiting.timeout_seconds:.0f} s"
                    + ("" if targeted else " (no device is targeted: check the target condition and device tags)")
                )
            self.waiting.sleep(self.waiting.poll_seconds)

    def prune(self, model: str, keep: int) -> list[str]:
        """Delete the configurations of every rollout of ``model`` but ``keep``."""
        deleted = []
        for deployed in self.deployed(model):
            if deployed.rollout != keep:
                self.hub.delete_configuration(deployed.id, deployed.etag)
                self.log(f"deleted {deployed.id} (superseded by rollout {keep})")
                deleted.append(deployed.id)
        return deleted
