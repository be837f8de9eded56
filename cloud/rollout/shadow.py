"""Shadow rollouts: a release goes to a ring as a shadow (``properties.desired.shadows.<name>``), and is promoted
to ``models.<name>`` on that ring only when every targeted device has compared enough live requests and its
shadow agrees with the active version (docs/shadow.md).

A shadow deployment is a layered deployment of the module twin path ``properties.desired.shadows.<name>``,
so it never touches the ``models`` path the rollout rings own (IoT Edge layered deployments set the
``properties.desired.<path>`` they name; a deeper path such as ``routes.upstream`` is documented). Its
priority only competes with other shadow deployments of the same model: ``base + number``. One shadow per
model: once a new one is active, the older shadow deployments of the model are deleted; a promotion
deletes the shadow deployment after the promoted ring is active, which removes the shadow from the devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloud.releases.errors import TemplateError
from cloud.releases.fleet import ShadowStatus, shadow_statuses, status_query, targeted_query
from cloud.releases.schemas import twin_limit_problems
from cloud.rollout import naming
from cloud.rollout.deployer import Hub, RingResult, Rollout, Waiting
from cloud.rollout.errors import RolloutError, RolloutFailed, RolloutTimeout
from edge_module.release import Release, ReleaseError, parse_release

RING = "shadow"
PATH_PREFIX = "properties.desired.shadows."


class ShadowDisagrees(RolloutError):
    """A device's shadow did not agree enough with its active version (or never compared enough requests)."""


@dataclass(frozen=True)
class ShadowDeployment:
    id: str
    release: Release
    number: int
    priority: int
    target_condition: str
    etag: str

    @classmethod
    def parse(cls, configuration: dict[str, Any], module: str) -> ShadowDeployment | None:
        labels = configuration.get("labels") or {}
        if labels.get("managed-by") != naming.MANAGED_BY or labels.get("ring") != RING:
            return None
        model = str(labels.get("model"))
        content = ((configuration.get("content") or {}).get("modulesContent") or {}).get(module) or {}
        try:
            release = parse_release(model, content[PATH_PREFIX + model])
            return cls(
                id=str(configuration["id"]),
                release=release,
                number=int(labels["rollout"]),
                priority=int(configuration.get("priority", 0)),
                target_condition=str(configuration.get("targetCondition", "")),
                etag=str(configuration.get("etag") or "*"),
            )
        except (KeyError, ValueError, ReleaseError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.release.name,
            "version": self.release.version,
            "sha256": self.release.sha256,
            "number": self.number,
            "priority": self.priority,
            "targetCondition": self.target_condition,
        }


@dataclass(frozen=True)
class Criteria:
    min_agreement: float
    min_compared: int
    max_mean_abs_diff: float | None = None

    def problem(self, row: ShadowStatus) -> str | None:
        """Why this device's figures do not pass, or None. Called once it compared ``min_compared``."""
        if row.agreement is None:
            return "no label agreement reported (a model without labels: judge it with --max-mean-abs-diff)"
        if row.agreement < self.min_agreement:
            return f"agreement {row.agreement:.4f} < {self.min_agreement} over {row.compared} compared requests"
        if self.max_mean_abs_diff is not None and (row.mean_abs_diff or 0.0) > self.max_mean_abs_diff:
            return f"mean absolute difference {row.mean_abs_diff:.6g} > {self.max_mean_abs_diff}"
        return None


@dataclass
class Verdict:
    deployment: ShadowDeployment
    passed: dict[str, ShadowStatus] = field(default_factory=dict)
    disagree: dict[str, str] = field(default_factory=dict)  # device -> why
    short: dict[str, str] = field(default_factory=dict)  # device -> not enough compared requests (yet)


class ShadowRollout:
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

    def deployed(self, model: str) -> list[ShadowDeployment]:
        """This model's shadow deployments, oldest first."""
        found = (ShadowDeployment.parse(c, self.module) for c in self.hub.list_configurations())
        return sorted((d for d in found if d is not None and d.release.name == model), key=lambda d: d.number)

    def deploy(self, release: Release, target_condition: str) -> tuple[ShadowDeployment, list[ShadowStatus]]:
        """Create (or resume) the shadow deployment of ``release`` and wait until its devices run it."""
        ours = self.deployed(release.name)
        existing = next(
            (d for d in ours if (d.release.version, d.release.sha256) == (release.version, release.sha256)), None
        )
        if existing is None:
            existing = self._create(release, target_condition, max((d.number for d in ours), default=0) + 1)
        else:
            self.log(f"{existing.id} exists; waiting for its devices")
        rows = self.wait_installed(existing)
        for older in ours:
            if older.number < existing.number:
                self.hub.delete_configuration(older.id, older.etag)
                self.log(f"deleted {older.id} (one shadow per model)")
        return existing, rows

    def _create(self, release: Release, target_condition: str, number: int) -> ShadowDeployment:
        identifier = shadow_configuration_id(release.name, release.version, number)
        if not target_condition.strip():
            raise TemplateError("a shadow deployment needs a target condition, e.g. \"tags.ring='canary'\"")
        block = release.as_desired()
        problems = list(twin_limit_problems(self.module, {"shadows": {release.name: block}}))
        if problems:
            raise TemplateError(f"shadow deployment {identifier} does not fit in a module twin: {'; '.join(problems)}")
        configuration = {
            "id": identifier,
            "schemaVersion": "1.0",
            "labels": naming.labels(release.name, release.version, release.sha256, number, RING),
            "content": {"modulesContent": {self.module: {PATH_PREFIX + release.name: block}}},
            "targetCondition": target_condition,
            "priority": self.priority_base + number,
            "metrics": {"queries": _metric_queries(release, self.module)},
        }
        created = self.hub.put_configuration(configuration)
        deployed = ShadowDeployment.parse({**configuration, **created}, self.module)
        assert deployed is not None
        self.log(f"created {deployed.id} (priority {deployed.priority}, target {target_condition})")
        return deployed

    def _rows(self, deployment: ShadowDeployment) -> tuple[set[str], list[ShadowStatus]]:
        targeted = {str(row.get("deviceId")) for row in self.hub.query(targeted_query(deployment.id))}
        twins = [t for t in self.hub.query(status_query(self.module)) if t.get("deviceId") in targeted]
        return targeted, shadow_statuses(twins, deployment.release.name)

    def wait_installed(self, deployment: ShadowDeployment) -> list[ShadowStatus]:
        """Until every targeted device reports the shadow ``active``; the first ``failed`` stops it."""
        release = deployment.release
        deadline = self.waiting.clock() + self.waiting.timeout_seconds
        while True:
            targeted, rows = self._rows(deployment)
            failed = [r for r in rows if r.state == "failed" and r.version == release.version]
            if failed:
                reasons = "; ".join(f"{r.device}: {r.error or 'no reason reported'}" for r in failed)
                raise RolloutFailed(
                    f"shadow {release.name} version {release.version} failed on {len(failed)} device(s): {reasons}"
                )
            done = [r for r in rows if r.state == "active" and r.version == release.version]
            if targeted and len(done) == len(targeted):
                self.log(f"{deployment.id}: {len(done)} device(s) run shadow {release.name} {release.version}")
                return rows
            if self.waiting.clock() >= deadline:
                raise RolloutTimeout(
                    f"{deployment.id}: {len(done)} of {len(targeted)} targeted device(s) run the shadow after "
                    f"{self.waiting.timeout_seconds:.0f} s"
                    + ("" if targeted else " (no device is targeted: check the target condition and device tags)")
                )
            self.waiting.sleep(self.waiting.poll_seconds)

    def judge(self, model: str, criteria: Criteria) -> Verdict:
        """Every targeted device's figures against the criteria, now."""
        ours = self.deployed(model)
        if not ours:
            raise RolloutError(f"no shadow deployment of {model} on the hub: run 'rollout shadow' first")
        deployment = ours[-1]
        version = deployment.release.version
        targeted, rows = self._rows(deployment)
        if not targeted:
            raise RolloutError(f"{deployment.id} targets no device: check the target condition and device tags")
        verdict = Verdict(deployment)
        by_device = {row.device: row for row in rows}
        for device in sorted(targeted):
            row = by_device.get(device)
            if row is None or row.version != version or row.state not in ("active", "failed"):
                state = "no shadow reported" if row is None else f"shadow {row.state}, version {row.version}"
                verdict.short[device] = f"{state} (wants version {version})"
            elif row.state == "failed":
                verdict.disagree[device] = f"shadow failed: {row.error or 'no reason reported'}"
            elif row.compared < criteria.min_compared:
                verdict.short[device] = f"{row.compared} of {criteria.min_compared} requests compared"
            elif (problem := criteria.problem(row)) is not None:
                verdict.disagree[device] = problem
            else:
                verdict.passed[device] = row
        return verdict

    def promote_if_agrees(
        self, model: str, criteria: Criteria, ring: str, rollout: Rollout
    ) -> tuple[Verdict, RingResult]:
        """Wait until every device compared enough requests; promote the shadow to ``models.<name>`` on the
        shadow's own target condition (as ``ring`` of the rollout) only if every one agrees."""
        deadline = self.waiting.clock() + self.waiting.timeout_seconds
        while True:
            verdict = self.judge(model, criteria)
            if verdict.disagree:
                raise ShadowDisagrees(_listing(model, "disagree", verdict.disagree))
            if not verdict.short:
                break
            if self.waiting.clock() >= deadline:
                raise ShadowDisagrees(_listing(model, "have not compared enough requests", verdict.short))
            self.log(f"{len(verdict.short)} device(s) still short of {criteria.min_compared} compared requests")
            self.waiting.sleep(self.waiting.poll_seconds)
        deployment = verdict.deployment
        agreements = [row.agreement or 0.0 for row in verdict.passed.values()]
        self.log(
            f"{len(verdict.passed)} device(s) agree (lowest agreement {min(agreements):.4f}): promoting "
            f"{model} version {deployment.release.version} on the {ring} ring"
        )
        result = rollout.deploy_ring(deployment.release, ring, deployment.target_condition)
        for shadow in self.deployed(model):
            self.hub.delete_configuration(shadow.id, shadow.etag)
            self.log(f"deleted {shadow.id} (promoted)")
        return verdict, result


def shadow_configuration_id(model: str, version: str, number: int) -> str:
    if not naming.VERSION.fullmatch(version.lower()):
        raise TemplateError(f"version {version!r} cannot be part of an IoT Hub configuration id")
    identifier = f"{naming.model_slug(model)}-v{version.lower()}-s{number}-shadow"
    if not naming.CONFIGURATION_ID.fullmatch(identifier):
        raise TemplateError(f"{identifier!r} is not a valid IoT Hub configuration id (at most 128 characters)")
    return identifier


def _metric_queries(release: Release, module: str) -> dict[str, str]:
    """Deployment metrics: the devices running this shadow, and those that failed it."""
    if not release.name.replace("_", "").isalnum():  # a name the query language would need escaped
        return {}
    key = release.name.replace("_", "")[:40]
    reported = f"properties.reported.shadows.{release.name}"
    base = f"SELECT deviceId FROM devices.modules WHERE moduleId = '{module}'"
    version = release.version
    return {
        f"{key}ShadowActive": f"{base} AND {reported}.state = 'active' AND {reported}.version = '{version}'",
        f"{key}ShadowFailed": f"{base} AND {reported}.state = 'failed' AND {reported}.version = '{version}'",
    }


def _listing(model: str, what: str, devices: dict[str, str]) -> str:
    lines = "; ".join(f"{device}: {why}" for device, why in sorted(devices.items()))
    return f"not promoting {model}: {len(devices)} device(s) {what}: {lines}"
