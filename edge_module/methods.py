"""Direct methods: ``getModelStatus``, ``rollback {"model": name}``, ``ping``. Unknown methods get 404."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edge_module import __version__
from edge_module.errors import EdgeError, InvalidRequest, ModelNotFound, StoreError
from edge_module.manager import ModelManager
from edge_module.store import ModelRecord

log = logging.getLogger(__name__)

MethodResult = tuple[int, dict[str, Any]]


class DirectMethods:
    def __init__(
        self,
        manager: ModelManager,
        reported_state: Callable[[str], dict[str, Any] | None] = lambda name: None,
        on_rollback: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.manager = manager
        self.reported_state = reported_state
        self.on_rollback = on_rollback
        self._methods: dict[str, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            "getModelStatus": self.get_model_status,
            "rollback": self.rollback,
            "ping": self.ping,
        }

    async def invoke(self, name: str, payload: Any) -> MethodResult:
        """Status and JSON payload for one method call. Never raises."""
        method = self._methods.get(name)
        if method is None:
            known = ", ".join(sorted(self._methods))
            return 404, {"error": f"unknown method '{name}'; this module supports: {known}"}
        try:
            return 200, await method(payload)
        except EdgeError as exc:
            return exc.status_code, {"error": exc.message}
        except Exception as exc:  # a method must never take the module down
            log.exception("direct method %s failed", name)
            return 500, {"error": f"internal error: {type(exc).__name__}"}

    async def ping(self, payload: Any) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "ready": self.manager.repository.ready}

    async def get_model_status(self, payload: Any) -> dict[str, Any]:
        records = await asyncio.to_thread(self.manager.store.records)
        served = self.manager.repository.snapshot()
        models: dict[str, Any] = {}
        for name in sorted(set(records) | set(served)):
            model = served.get(name)
            record = records.get(name)
            models[name] = {
                "loaded": model is not None,
                "source": model.source if model else None,
                "activeVersion": model.active.version if model else None,
                "sha256": model.active.sha256 if model else None,
                "loadedVersions": sorted(model.versions) if model else [],
                "stored": _stored(record),
                "twin": self.reported_state(name),
            }
        return {"models": models}

    async def rollback(self, payload: Any) -> dict[str, Any]:
        name = payload.get("model") if isinstance(payload, dict) else payload if isinstance(payload, str) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest('rollback needs the model name: {"model": "<name>"}')
        if await asyncio.to_thread(self.manager.store.get, name) is None:
            raise ModelNotFound(f"model '{name}' is not in the store")
        served = self.manager.repository.served(name)
        before = served.active.version if served else None
        try:
            report = await self.manager.rollback(name)
        except StoreError as exc:
            raise EdgeError(exc.message, 409) from exc
        self.on_rollback(name)
        log.warning("model %s rolled back from version %s to %s by direct method", name, before, report.version)
        return {"model": name, "activeVersion": report.version, "sha256": report.sha256, "previousVersion": before}


def _stored(record: ModelRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "activeVersion": record.active.version,
        "lastKnownGood": record.previous.version if record.previous else None,
        "versions": [entry.version for entry in record.versions],
    }
