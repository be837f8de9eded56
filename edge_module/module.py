"""The module: builds every part from settings and owns their start and stop."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edge_module.batching import BatchPolicy
from edge_module.dataplane import DataPlane
from edge_module.errors import EdgeError
from edge_module.manager import MemoryPolicy, ModelManager
from edge_module.memory import MIB
from edge_module.observability import Observability, ObservedModelManager
from edge_module.probation import ProbationPolicy
from edge_module.repository import ModelRepository
from edge_module.rest import create_app
from edge_module.rest.infer import ASGIApp
from edge_module.runtime import SessionConfig
from edge_module.settings import Settings
from edge_module.shadow.mirror import ShadowMirror
from edge_module.stats import InferenceStats
from edge_module.store import ModelStore
from edge_module.tls import LiveTLS

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    return Path(str(resources.files("edge_module") / "default_model"))


def default_model_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((default_model_dir() / "manifest.json").read_text())
    return manifest


@dataclass
class EdgeModule:
    settings: Settings
    store: ModelStore
    repository: ModelRepository
    stats: InferenceStats
    dataplane: DataPlane
    manager: ModelManager
    app: ASGIApp
    observability: Observability
    shadows: ShadowMirror
    # The live SSL context when EDGE_TLS is not off; its first certificate comes in server.serve.
    tls: LiveTLS | None = None
    extra_models: dict[str, Path] = field(default_factory=dict)
    startup_errors: dict[str, str] = field(default_factory=dict)
    # Set once start() has served what it could; the twin applies desired releases only after it.
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Serve what the store holds, then any ``--model`` files, then the default model if nothing else."""
        self.observability.start()
        try:
            await self._start()
        finally:
            self.started.set()

    async def _start(self) -> None:
        self.store.open()
        self.startup_errors.update(await self.manager.restore())
        for name, path in self.extra_models.items():
            try:
                await self.manager.serve_file(name, path)
            except (EdgeError, OSError) as exc:
                message = exc.message if isinstance(exc, EdgeError) else str(exc)
                self.startup_errors[name] = message
                log.error("model %s from %s could not be served: %s", name, path, message)
        if not self.repository.ready and self.settings.serve_default_model:
            await self._serve_default_model()

    async def _serve_default_model(self) -> None:
        manifest = default_model_manifest()
        name = self.settings.default_model_name or manifest["name"]
        await self.manager.serve_file(name, default_model_dir() / manifest["file"], source="default")

    def close(self) -> None:
        self.shadows.close()
        self.observability.close()
        self.dataplane.close()
        self.manager.close()


def build_module(settings: Settings, extra_models: dict[str, Path] | None = None) -> EdgeModule:
    store = ModelStore(settings.model_dir, keep_versions=settings.keep_versions)
    repository = ModelRepository()
    stats = InferenceStats()
    config = SessionConfig(
        intra_op_threads=settings.ort_intra_op_threads, inline_threshold_ms=settings.inline_threshold_ms
    )
    probation = ProbationPolicy(
        requests=settings.probation_requests,
        seconds=settings.probation_seconds,
        max_failure_rate=settings.probation_max_failure_rate,
        max_latency_ratio=settings.probation_max_latency_ratio,
        latency_slack_ms=settings.probation_latency_slack_ms,
        min_requests=settings.probation_min_requests,
    )
    manager = ObservedModelManager(
        store,
        repository,
        config,
        settings.max_model_bytes,
        settings.vet_models,
        probation=probation,
        memory=MemoryPolicy(settings.memory_check, settings.memory_margin_mib * MIB, settings.keep_loaded),
    )
    batching = BatchPolicy(max_size=settings.batch_max_size, max_delay_ms=settings.batch_max_delay_ms)
    dataplane = DataPlane(repository, stats, settings.inference_workers, batching)
    if probation.enabled:
        dataplane.observers.append(manager.guard.observe)
        dataplane.failure_observers.append(manager.guard.observe_failure)
    shadows = ShadowMirror(settings.ort_intra_op_threads, settings.shadow_sample_rate)
    observability = Observability(settings, dataplane, manager, shadows)
    # After the observability observers: capture decides first whether a request is sampled (capture.py).
    dataplane.observers.append(shadows.observe)
    tls = LiveTLS() if settings.tls_mode != "off" else None
    app = create_app(
        dataplane,
        manager,
        max_request_bytes=settings.max_request_bytes,
        request_timeout_s=settings.request_timeout_s,
        admin_token=settings.admin_token,
        api_token=settings.api_token,
        observability=observability,
        trust_bundle=(lambda: tls.trust_bundle) if tls is not None else (lambda: None),
    )
    return EdgeModule(
        settings=settings,
        store=store,
        repository=repository,
        stats=stats,
        dataplane=dataplane,
        manager=manager,
        app=app,
        observability=observability,
        shadows=shadows,
        tls=tls,
        extra_models=dict(extra_models or {}),
    )
