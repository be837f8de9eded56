"""Desired ``shadows.<name>`` -> a verified, vetted, loaded shadow beside the served version, or none.

A shadow block has exactly the ``models.<name>`` release shape and goes through the same checks: the
release signature, the download's size and sha256, the vetting subprocess and the load. It is stored as
a blob but never activated, so it cannot serve a client. One shadow per model; a shadow for a model that
is not served, or whose inputs differ from the served version's, is refused with a reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from edge_module.errors import EdgeError
from edge_module.manager import ModelManager
from edge_module.release import Release, ReleaseError, SignatureError, parse_release, verify_signature
from edge_module.shadow.mirror import ShadowMirror
from edge_module.twin.fetch import FetchPolicy, fetch_release
from edge_module.twin.reported import ReportedState, utc_now

log = logging.getLogger(__name__)


class ShadowRefused(EdgeError):
    """The shadow cannot run beside the served version."""


class ShadowInstaller:
    def __init__(
        self,
        manager: ModelManager,
        mirror: ShadowMirror,
        policy: FetchPolicy,
        trusted_keys: list[Any],
        reported: ReportedState,
        keys_error: str | None = None,
    ) -> None:
        self.manager = manager
        self.mirror = mirror
        self.policy = policy
        self.trusted_keys = trusted_keys
        self.reported = reported
        self.keys_error = keys_error
        # Whether the desired models.<name> update is still running (the twin's reconciler says).
        self.updating: Callable[[str], bool] = lambda name: False
        self._targets: dict[str, Release | None] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- desired state ---------------------------------------------------------------------------

    def apply(self, desired: Any, full: bool) -> None:
        """Desired ``shadows`` from a full twin (replaces) or a patch (merges; null removes)."""
        if desired is None:  # a patch's null removes every shadow (RFC 7386), as a twin without the key has none
            desired, full = {}, True
        if not isinstance(desired, dict):
            log.error("desired 'shadows' must be an object of releases by model name")
            return
        names = set(desired)
        if full:
            names |= set(self._targets) | set(self.mirror.shadows)
        for name in sorted(names):
            self._ensure(name, desired.get(name))

    def _ensure(self, name: str, block: Any) -> None:
        try:
            target = None if block is None else parse_release(name, block)
        except ReleaseError as exc:
            self._targets.pop(name, None)
            self._schedule(name, self._report_failed(name, block, exc.message))
            return
        if name in self._targets and self._targets[name] == target:
            return
        self._targets[name] = target
        self._schedule(name, self._run(name, target))

    def _schedule(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """One task per model at a time: a new desired block cancels the one before and runs after it."""
        previous = self._tasks.get(name)
        if previous is not None and not previous.done():
            previous.cancel()
        self._tasks[name] = asyncio.create_task(_after(previous, work), name=f"shadow-{name}")

    async def _run(self, name: str, target: Release | None) -> None:
        if target is None:
            await self._stop(name)
            return
        try:
            await self._install(target)
        except asyncio.CancelledError:
            raise
        except (EdgeError, OSError) as exc:
            message = exc.message if isinstance(exc, EdgeError) else f"i/o error: {exc}"
            await self._report_failed(name, target.as_desired(), message)
            return
        log.info("model %s: shadow version %s mirrors live traffic", name, target.version)
        self.report(name)

    async def _stop(self, name: str) -> None:
        removed = await self.mirror.remove(name)
        if removed is not None:
            log.info("model %s: shadow version %s stopped and unloaded", name, removed.version)
        self.reported.set_shadow(name, None)

    async def _install(self, release: Release) -> None:
        name = release.name
        if self.keys_error:
            raise SignatureError(self.keys_error)
        verify_signature(release, self.trusted_keys)
        # A shadow may arrive with its model's first release: wait while that update runs.
        while self.manager.repository.served(name) is None and self.updating(name):
            await asyncio.sleep(0.2)
        if self.manager.repository.served(name) is None:
            raise ShadowRefused(f"model '{name}' is not served: a shadow needs an active version to mirror")
        self._report_state(name, "downloading", release.version)
        store = self.manager.store
        if not await asyncio.to_thread(store.has_blob, release.sha256):
            await fetch_release(release, store, self.policy)
        self._report_state(name, "loading", release.version)
        path = store.blob_path(release.sha256)
        size = (await asyncio.to_thread(path.stat)).st_size
        if size > self.manager.max_model_bytes:
            raise ShadowRefused(f"shadow is {size} bytes, over the {self.manager.max_model_bytes}-byte cap")
        need = await self.manager.vet_shadow(name, path)
        # The worker is a process of its own: the first shadow pays for its interpreter too.
        await self.manager.check_room(name, need, "run as a shadow", new_process=self.mirror.pid is None)
        inputs = await self.mirror.install(name, release.version, release.sha256, str(path))
        served = self.manager.repository.served(name)
        active = None if served is None else [spec.as_dict() for spec in served.active.inputs]
        if active != inputs:
            await self.mirror.remove(name)
            if served is None:
                raise ShadowRefused(f"model '{name}' is no longer served")
            raise ShadowRefused(
                f"shadow version {release.version} takes inputs {inputs}, "
                f"the served version {served.active.version} takes {active}"
            )

    # -- reporting -------------------------------------------------------------------------------

    def report(self, name: str) -> None:
        figures = self.mirror.report(name)
        if figures is not None:
            block = {**_block("active", self.mirror.shadows[name].version, None), **figures}
            self.reported.set_shadow(name, {**block, "sampleRate": self.mirror.sample_rate})

    def report_all(self) -> None:
        for name, ended in list(self.mirror.ended.items()):  # the worker process ended under them
            self.mirror.ended.pop(name, None)
            self._targets.pop(name, None)  # the same block again restarts it
            self.reported.set_shadow(name, {**_block("failed", ended.version, ended.failure), **ended.report()})
        for name in list(self.mirror.shadows):
            self.report(name)

    def _report_state(self, name: str, state: str, version: str) -> None:
        self.reported.set_shadow(name, _block(state, version, None))

    async def _report_failed(self, name: str, block: Any, message: str) -> None:
        log.error("shadow for model %s refused: %s", name, message)
        version = block.get("version") if isinstance(block, dict) else None
        await self.mirror.remove(name)  # a running shadow is no longer desired
        self.reported.set_shadow(name, _block("failed", str(version) if version is not None else None, message))

    async def close(self) -> None:
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _after(previous: asyncio.Task[None] | None, work: Coroutine[Any, Any, None]) -> None:
    if previous is not None:
        await asyncio.gather(previous, return_exceptions=True)
    await work


STAT_FIELDS = (
    "sampleRate",
    "mirrored",
    "compared",
    "dropped",
    "agreement",
    "meanAbsDiff",
    "p99AbsDiff",
    "maxAbsDiff",
    "shadowP50Ms",
    "shadowP99Ms",
    "activeP50Ms",
    "activeP99Ms",
    "errors",
)


def _block(state: str, version: str | None, error: str | None) -> dict[str, Any]:
    """Every field, always: None clears a figure of an earlier shadow in the twin."""
    return {"state": state, "version": version, "error": error, **dict.fromkeys(STAT_FIELDS), "since": utc_now()}
