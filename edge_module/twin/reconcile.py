"""Desired ``models`` -> one update task per model, idempotent by ``$version`` and by release content.

- A full twin (on every connect) replaces the desired state; models this module reported before but
  that are no longer desired are removed (IoT Hub deletes a property set to null, so a full twin read
  after a missed removal simply lacks the model).
- A patch merges into the desired state as IoT Hub merges it (RFC 7386, down to a release's fields); a model
  set to null is removed.
- A new target for a model supersedes a running update: its download is cancelled, a load in progress
  finishes first.
- The same release twice does nothing; a release that failed for a transient reason is retried after
  ``retry_interval`` or at the next reconnect, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from edge_module.release import Release, ReleaseError, parse_release
from edge_module.twin.pipeline import ModelUpdater, Outcome
from edge_module.twin.reported import ReportedState

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, updater: ModelUpdater, reported: ReportedState, retry_interval: float) -> None:
        self.updater = updater
        self.reported = reported
        self.retry_interval = retry_interval
        self.desired_version: int | None = None
        self._desired: dict[str, Any] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._targets: dict[str, Release | None] = {}
        self._outcomes: dict[str, tuple[Release | None, Outcome]] = {}
        self._invalid: dict[str, str] = {}
        self._retry_now: dict[str, asyncio.Event] = {}

    # -- inputs ----------------------------------------------------------------------------------

    def apply_twin(self, twin: dict[str, Any]) -> None:
        desired = twin.get("desired") or {}
        version = _version(desired)
        if version is not None and self.desired_version is not None and version < self.desired_version:
            log.info("ignoring a twin at $version %s older than the applied %s", version, self.desired_version)
            return
        models = desired.get("models")
        self.desired_version = version
        self._invalid.pop("models", None)
        self._desired = dict(models) if isinstance(models, dict) else {}
        previously_reported = (twin.get("reported") or {}).get("models") or {}
        if isinstance(previously_reported, dict):
            for name, block in previously_reported.items():
                if name not in self._desired and isinstance(block, dict) and block.get("state") != "removed":
                    self._desired[name] = None
        for name in list(self._outcomes) + list(self._tasks):
            self._desired.setdefault(name, None)
        if models is not None and not isinstance(models, dict):
            self._invalid["models"] = "desired 'models' must be an object of releases by model name"
        self._converge(list(self._desired), retry_failed=True)

    def apply_patch(self, patch: dict[str, Any]) -> None:
        version = _version(patch)
        if version is not None and self.desired_version is not None and version <= self.desired_version:
            log.info("ignoring desired patch $version %s: already at %s", version, self.desired_version)
            return
        if version is not None:
            self.desired_version = version
        if "models" not in patch:
            self._update_desired_status()
            return
        models = patch["models"]
        if models is None:
            names = list(self._desired)
            self._desired = dict.fromkeys(names)
        elif isinstance(models, dict):
            names = list(models)
            for name, block in models.items():
                self._desired[name] = _merged(self._desired.get(name), block)
        else:
            self._invalid["models"] = "desired 'models' must be an object of releases by model name"
            self._update_desired_status()
            return
        self._converge(names, retry_failed=False)

    # -- convergence -----------------------------------------------------------------------------

    def _converge(self, names: list[str], retry_failed: bool) -> None:
        for name in names:
            block = self._desired.get(name)
            self._invalid.pop(name, None)
            try:
                target = None if block is None else parse_release(name, block)
            except ReleaseError as exc:
                self._reject(name, exc.message)
                continue
            self._ensure(name, target, retry_failed)
        self._update_desired_status()

    def _reject(self, name: str, message: str) -> None:
        self._invalid[name] = message
        running = self._tasks.get(name)
        if running is not None and not running.done():
            running.cancel()  # the release it was applying is no longer desired
        self._targets.pop(name, None)
        log.error("desired release for %s is invalid: %s", name, message)
        block = self._desired.get(name)
        version = block.get("version") if isinstance(block, dict) else None
        served = self.updater.manager.repository.served(name)
        self.reported.set_model(
            name,
            "failed",
            str(version) if version is not None else None,
            served.active.version if served else None,
            served.active.sha256 if served else None,
            message,
        )

    def _ensure(self, name: str, target: Release | None, retry_failed: bool) -> None:
        running = self._tasks.get(name)
        busy = running is not None and not running.done()
        if busy and self._targets.get(name) == target:
            last = self._outcomes.get(name)
            if retry_failed and last is not None and last == (target, Outcome.RETRY):
                self._retry_now[name].set()
            return
        last = self._outcomes.get(name)
        if not busy and last is not None and last[0] == target:
            return  # the same release again: nothing to download, nothing to report
        if busy and running is not None:
            log.info("model %s: a newer desired release supersedes the update in progress", name)
            running.cancel()
        self._targets[name] = target
        self._retry_now[name] = asyncio.Event()
        self._tasks[name] = asyncio.create_task(self._run(name, target, running), name=f"update-{name}")

    async def _run(self, name: str, target: Release | None, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        retry_now = self._retry_now[name]
        while True:
            outcome = await self.updater.apply(name, target)
            self._outcomes[name] = (target, outcome)
            self._update_desired_status()
            if outcome is not Outcome.RETRY:
                return
            retry_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(retry_now.wait(), self.retry_interval)
            log.info("model %s: trying release %s again", name, target.version if target else None)

    def _update_desired_status(self) -> None:
        """Report ``lastDesiredStatus`` once every desired model has an outcome for its current target."""
        failures = dict(self._invalid)
        for name, target in self._targets.items():
            outcome = self._outcomes.get(name)
            if outcome is None or outcome[0] != target:
                if name in self._desired:
                    return  # still working on it
                continue
            if outcome[1] in (Outcome.FAILED, Outcome.RETRY) and name in self._desired:
                block = self.reported.model(name) or {}
                failures[name] = str(block.get("error") or outcome[1].value)
        if not failures:
            self.reported.set_desired_status(self.desired_version, 200, "all desired models applied")
            return
        description = "; ".join(f"{name}: {reason}" for name, reason in sorted(failures.items()))
        self.reported.set_desired_status(self.desired_version, 400, f"failed: {description}")

    def record_rollback(self, name: str) -> None:
        """A rollback by direct method holds until the desired release for the model changes."""
        target = self._targets.get(name)
        if target is not None:
            self._outcomes[name] = (target, Outcome.ACTIVE)

    def record_rejection(self, name: str, version: str, reason: str) -> None:
        """The manager rolled ``version`` back after activation: its release stays failed until it changes."""
        target = self._targets.get(name)
        if target is not None and target.version == version:
            self._outcomes[name] = (target, Outcome.FAILED)
        served = self.updater.manager.repository.served(name)
        self.reported.set_model(
            name,
            "failed",
            target.version if target else version,
            served.active.version if served else None,
            served.active.sha256 if served else None,
            reason,
        )
        self._update_desired_status()

    def updating(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def state(self, name: str) -> Release | None:
        return self._targets.get(name)

    async def close(self) -> None:
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _version(document: dict[str, Any]) -> int | None:
    version = document.get("$version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _merged(current: Any, patch: Any) -> Any:
    """A desired patch merged into what the twin held, as IoT Hub merges it (RFC 7386: objects merge, null
    deletes). A patch may carry only the fields of a release that changed, not the whole block."""
    if not isinstance(patch, dict) or not isinstance(current, dict):
        return patch
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merged(merged.get(key), value)
    return merged
