"""Model lifecycle: store on disk, load and warm up off the event loop, then swap atomically.

The HTTP repository endpoints, the twin and the CLI all change models through this one class.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge_module.errors import InsufficientMemory, ModelLoadError, ModelNotFound, StoreError
from edge_module.memory import MIB, Headroom, headroom
from edge_module.model_check import check_in_subprocess
from edge_module.probation import Probation, ProbationGuard, ProbationPolicy
from edge_module.repository import ModelRepository
from edge_module.runtime import OnnxModel, SessionConfig
from edge_module.store import ModelRecord, ModelStore, VersionRecord, validate_name, validate_version

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class LoadReport:
    name: str
    version: str
    sha256: str
    service_time_ms: float
    load_seconds: float


@dataclass(frozen=True)
class MemoryPolicy:
    """Check memory before each load (docs/reliability.md#swaps-that-fit-in-memory)."""

    check: bool = True
    margin_bytes: int = 32 * MIB
    keep_loaded: int = 2  # versions of a model kept in memory: the active one and the last-known-good


# Before a model has been vetted, what it may take: the vetting child's interpreter and onnxruntime, plus about
# 3.5 times the file while onnxruntime parses and copies it (80 MB of initializers peaked at +257 MiB).
CHILD_BASELINE_BYTES = 64 * MIB
LOAD_FACTOR = 3.5


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        repository: ModelRepository,
        config: SessionConfig,
        max_model_bytes: int,
        vet_models: bool = True,
        probation: ProbationPolicy | None = None,
        memory: MemoryPolicy | None = None,
    ) -> None:
        self.store = store
        self.repository = repository
        self.config = config
        self.max_model_bytes = max_model_bytes
        self.vet_models = vet_models
        self.memory = memory or MemoryPolicy()
        self._child_baseline = CHILD_BASELINE_BYTES
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._locks: dict[str, asyncio.Lock] = {}
        self.guard = ProbationGuard(probation or ProbationPolicy(requests=0, seconds=0))
        self.guard.on_failed = self._probation_failed
        # Called with (name, version, reason) after a version was rolled back because it failed probation.
        self.rejection_listeners: list[Callable[[str, str, str], None]] = []
        self._rejections: set[asyncio.Task[Any]] = set()

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _in_loader(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._loader, func, *args)

    def _load_blob(self, name: str, version: str, sha256: str) -> OnnxModel:
        data = self.store.read_blob(sha256)
        return self._load_bytes(name, version, sha256, data)

    def _load_bytes(self, name: str, version: str | None, sha256: str, data: bytes) -> OnnxModel:
        if len(data) > self.max_model_bytes:
            raise ModelLoadError(f"model '{name}' is {len(data)} bytes, over the {self.max_model_bytes}-byte cap")
        model = OnnxModel(name, version, sha256, data, self.config)
        model.warm_up()
        return model

    # -- start-up --------------------------------------------------------------------------------

    async def restore(self) -> dict[str, str]:
        """Serve what the store says is active, falling back to last-known-good. Returns errors by model."""
        errors: dict[str, str] = {}
        records = await self._in_loader(self.store.records)
        for name in records:
            async with self._lock(name):
                try:
                    await self._restore_one(name)
                except (ModelLoadError, StoreError) as exc:
                    errors[name] = exc.message
                    log.error("model %s could not be restored: %s", name, exc.message)
        return errors

    async def restore_model(self, name: str) -> None:
        """Serve ``name`` again from the store (the repository API's load without a file)."""
        validate_name(name)
        async with self._lock(name):
            if self.store.get(name) is None:
                raise ModelNotFound(f"model '{name}' is not in the store")
            await self._restore_one(name)

    async def _restore_one(self, name: str) -> None:
        record = self.store.get(name)
        if record is None:
            return
        loaded: dict[str, OnnxModel] = {}
        failures: dict[str, str] = {}
        for entry in _by_priority(record):
            if len(loaded) >= self.memory.keep_loaded:
                break  # kept on disk only; a rollback or a load by version reads it again
            try:
                loaded[entry.version] = await self._in_loader(self._load_blob, name, entry.version, entry.sha256)
            except (ModelLoadError, StoreError) as exc:
                failures[entry.version] = exc.message
        active = loaded.get(record.active.version)
        if active is None and record.previous is not None and record.previous.version in loaded:
            log.warning(
                "model %s: active version %s failed (%s); serving last-known-good %s",
                name,
                record.active.version,
                failures.get(record.active.version),
                record.previous.version,
            )
            await self._in_loader(self.store.rollback, name)
            active = loaded[record.previous.version]
        if active is None:
            raise ModelLoadError(f"no servable version of model '{name}': {failures}")
        self.repository.publish(name, active, loaded)
        log.info("model %s version %s restored from the store", name, active.version)

    # -- changes ---------------------------------------------------------------------------------

    async def install_bytes(self, name: str, version: str, data: bytes) -> LoadReport:
        """Store ``data`` as a new version, load and warm it up, persist it as active, then swap."""
        validate_name(name)
        validate_version(version)
        if len(data) > self.max_model_bytes:
            raise ModelLoadError(f"model '{name}' is {len(data)} bytes, over the {self.max_model_bytes}-byte cap")
        sha256 = await self._in_loader(self.store.put_bytes, data)
        return await self.activate_blob(name, version, sha256)

    async def activate_blob(self, name: str, version: str, sha256: str) -> LoadReport:
        """Activate a blob already in the store. A failed load leaves the old version serving."""
        validate_name(name)
        validate_version(version)
        async with self._lock(name):
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                path = self.store.blob_path(sha256)
                size = await self._in_loader(lambda: path.stat().st_size)
                if self.vet_models and not self._already_vetted(name, sha256):
                    await self._make_room(name, self._child_baseline + int(size * LOAD_FACTOR), "vet")
                    report = await self._in_loader(check_in_subprocess, path, self.max_model_bytes)
                    self._child_baseline = report.baseline_bytes or self._child_baseline
                    need = report.model_bytes
                else:
                    need = int(size * LOAD_FACTOR)
                await self._make_room(name, need, "load")
                model = await self._in_loader(self._load_blob, name, version, sha256)
            except (ModelLoadError, StoreError):
                await self._in_loader(self.store.discard, sha256)
                raise
            record = await self._in_loader(self.store.activate, name, version, sha256)
            served = self.repository.served(name)
            kept = [v.version for v in _by_priority(record)][: self.memory.keep_loaded]
            versions = {v: m for v, m in (served.versions.items() if served else ()) if v in kept}
            versions[version] = model
            self.repository.publish(name, model, versions)
            elapsed = loop.time() - started
            replaced = served.active.version if served is not None and served.source == "store" else None
            if replaced is not None and replaced != version:
                self.guard.start(name, version, replaced)
            else:
                self.guard.forget(name)
        log.info("model %s version %s active (sha256 %s, %.3fs)", name, version, sha256[:12], elapsed)
        return LoadReport(name, version, sha256, model.service_time_ms, elapsed)

    async def vet_shadow(self, name: str, path: Path) -> int:
        """Vet a shadow release's file (after checking the vetting fits in memory) and return the memory it
        needs in a process that already runs onnxruntime. A shadow never unloads the last-known-good."""
        size = await self._in_loader(lambda: path.stat().st_size)
        if not self.vet_models:
            return int(size * LOAD_FACTOR)
        await self._make_room(name, self._child_baseline + int(size * LOAD_FACTOR), "vet as a shadow", evict=False)
        report = await self._in_loader(check_in_subprocess, path, self.max_model_bytes)
        self._child_baseline = report.baseline_bytes or self._child_baseline
        return report.model_bytes

    async def check_room(self, name: str, need: int, step: str, new_process: bool = False) -> None:
        """Raise InsufficientMemory unless ``need`` bytes (plus a new interpreter's, when ``new_process``) and
        the margin fit; unloads nothing."""
        await self._make_room(name, need + (self._child_baseline if new_process else 0), step, evict=False)

    async def _make_room(self, name: str, need: int, step: str, evict: bool = True) -> None:
        """Raise InsufficientMemory unless ``need`` bytes (plus the margin) fit, dropping ``name``'s spare
        loaded versions (the last-known-good session; its file stays in the store) first if that helps."""
        if not self.memory.check:
            return
        wanted = need + self.memory.margin_bytes
        room = await self._in_loader(headroom)
        if room.available >= wanted:
            return
        served = self.repository.served(name)
        if evict and served is not None and len(served.versions) > 1:
            dropped = [v for v in served.versions if v != served.active.version]
            self.repository.publish(name, served.active, {served.active.version: served.active}, served.source)
            del served
            room = await self._in_loader(_collected_headroom)
            log.warning(
                "model %s: unloaded version(s) %s (kept on disk) to make room: %s",
                name,
                ", ".join(dropped),
                room.describe(),
            )
            if room.available >= wanted:
                return
        raise InsufficientMemory(f"model '{name}' needs ~{need / MIB:.0f} MiB to {step}; {room.describe()}")

    def _already_vetted(self, name: str, sha256: str) -> bool:
        record = self.store.get(name)
        return record is not None and any(entry.sha256 == sha256 for entry in record.versions)

    async def rollback(self, name: str) -> LoadReport:
        self.guard.forget(name)  # an operator's rollback overrides a running probation
        async with self._lock(name):
            record = await self._in_loader(self.store.rollback, name)
            served = self.repository.served(name)
            model = served.versions.get(record.active.version) if served else None
            if model is None:
                model = await self._in_loader(self._load_blob, name, record.active.version, record.active.sha256)
            versions = dict(served.versions) if served else {}
            versions[record.active.version] = model
            self.repository.publish(name, model, versions)
        log.info("model %s rolled back to version %s", name, model.version)
        return LoadReport(name, model.version, model.sha256, model.service_time_ms, 0.0)

    def _probation_failed(self, probation: Probation) -> None:
        task = asyncio.get_running_loop().create_task(self._roll_back(probation))
        self._rejections.add(task)
        task.add_done_callback(self._rejections.discard)

    async def _roll_back(self, probation: Probation) -> None:
        why = probation.reason or f"{probation.signal} past its limit"
        try:
            await self.reject(probation.name, probation.version, why)
        finally:
            self.guard.rolled_back(probation)

    async def reject(self, name: str, version: str, why: str) -> LoadReport | None:
        """Swap the active ``version`` back to the previous one, unload it, and remember its release as rejected.

        Nothing happens when ``version`` is no longer active (a newer release or a rollback came first).
        """
        reason = f"rolled back after activation: {why}"
        async with self._lock(name):
            served = self.repository.served(name)
            if served is None or served.active.version != version:
                return None
            try:
                record = await self._in_loader(self.store.reject, name, version, reason)
                model = served.versions.get(record.active.version)
                if model is None:
                    model = await self._in_loader(self._load_blob, name, record.active.version, record.active.sha256)
            except (ModelLoadError, StoreError) as exc:
                log.error("model %s: could not roll back version %s: %s", name, version, exc.message)
                return None
            versions = {v: m for v, m in served.versions.items() if v != version}
            versions[record.active.version] = model
            self.repository.publish(name, model, versions)
        log.warning("model %s version %s %s; serving version %s", name, version, reason, model.version)
        for listener in self.rejection_listeners:
            listener(name, version, reason)
        return LoadReport(name, model.version, model.sha256, model.service_time_ms, 0.0)

    def rejection(self, name: str, version: str, sha256: str) -> str | None:
        """Why this release was rolled back after activation, or None when it never was."""
        record = self.store.get(name)
        found = record.rejection(version, sha256) if record is not None else None
        return found.reason if found is not None else None

    async def remove(self, name: str) -> bool:
        validate_name(name)
        self.guard.forget(name)
        async with self._lock(name):
            removed_from_store = await self._in_loader(self.store.remove, name)
            dropped = self.repository.drop(name)
        if not (removed_from_store or dropped):
            raise ModelNotFound(f"unknown model '{name}'")
        log.info("model %s removed", name)
        return True

    async def serve_file(self, name: str, path: Path, source: str = "file") -> LoadReport:
        """Serve a file without storing it (``--model`` and the bundled default)."""
        validate_name(name)
        self.guard.forget(name)
        data = await self._in_loader(path.read_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        async with self._lock(name):
            probe = await self._in_loader(self._load_bytes, name, None, sha256, data)
            self.repository.publish(name, probe, {probe.version: probe}, source=source)
        log.info("model %s version %s served from %s", name, probe.version, path)
        return LoadReport(name, probe.version, sha256, probe.service_time_ms, 0.0)


def _by_priority(record: ModelRecord) -> list[VersionRecord]:
    """Which versions to keep loaded first: the active one, the last-known-good, then the newest."""
    first = [record.active] + ([record.previous] if record.previous is not None else [])
    rest = [v for v in reversed(record.versions) if v.version not in {f.version for f in first}]
    return first + rest


def _collected_headroom() -> Headroom:
    gc.collect()  # dropped sessions are freed once no reference cycle holds them
    return headroom()
