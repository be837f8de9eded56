"""The IoT Edge service: one edgeHub connection feeding twin sync, input messages and direct methods.

Runs beside HTTP on the module's event loop (``serve(module, services=(iot_edge_service,))``) and
until cancelled. Serving never waits for it: the module serves from its store while this connects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_module.messages import MessageRouter
from edge_module.methods import DirectMethods
from edge_module.module import EdgeModule, default_model_manifest
from edge_module.release import load_public_keys
from edge_module.shadow import install as shadow_install  # a module: install.py imports edge_module.twin
from edge_module.twin.connection import HubConnection, HubEvent, HubUnavailable
from edge_module.twin.fetch import FetchPolicy
from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from edge_module.twin.reported import ReportedState
from edge_module.twin.spread import DownloadSpread

log = logging.getLogger(__name__)
MAX_CONCURRENT_REQUESTS = 16


async def iot_edge_service(module: EdgeModule) -> None:
    sync = await TwinSync.create(module)
    await sync.run()


def _read_keys(path: Path) -> tuple[list[Any], str | None]:
    try:
        keys = load_public_keys(path.read_text())
    except (OSError, ValueError) as exc:
        return [], f"EDGE_TRUSTED_KEYS file {path} is unreadable: {exc}"
    if not keys:
        return [], f"EDGE_TRUSTED_KEYS file {path} holds no ed25519 public key"
    return keys, None


class TwinSync:
    def __init__(self, module: EdgeModule, keys: list[Any], keys_error: str | None, default_model: str) -> None:
        settings = module.settings
        self.module = module
        self.connection = HubConnection(
            settings.hub_call_timeout, settings.reconnect_interval, settings.connect_backoff_max
        )
        self.reported = ReportedState()
        policy = FetchPolicy(
            allow_insecure=settings.allow_insecure_uris,
            max_bytes=settings.max_model_bytes,
            timeout=settings.download_timeout,
            attempts=settings.download_attempts,
            backoff=settings.download_backoff,
        )
        spread = DownloadSpread(settings.download_spread_s)
        updater = ModelUpdater(module.manager, policy, keys, self.reported, keys_error, spread)
        self.reconciler = Reconciler(updater, self.reported, settings.update_retry_interval)
        self.shadows = shadow_install.ShadowInstaller(
            module.manager, module.shadows, policy, keys, self.reported, keys_error
        )
        self.shadows.updating = self.reconciler.updating
        self.router = MessageRouter(module.dataplane, default_model)
        self.methods = DirectMethods(module.manager, self.reported.model, self._on_rollback)
        module.manager.rejection_listeners.append(self.reconciler.record_rejection)
        module.manager.guard.listeners.append(lambda p: self.reported.set_probation(p.name, p.reported()))
        self._online = asyncio.Event()
        self._capacity = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sync_task: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, module: EdgeModule) -> TwinSync:
        settings = module.settings
        keys: list[Any] = []
        keys_error = None
        if settings.trusted_keys is not None:
            keys, keys_error = await asyncio.to_thread(_read_keys, settings.trusted_keys)
            if keys_error:
                log.error("%s: every release will be refused", keys_error)
        default_model = settings.default_model_name or (await asyncio.to_thread(default_model_manifest))["name"]
        return cls(module, keys, keys_error, default_model)

    async def run(self) -> None:
        try:
            await self.connection.open()
            self._online.set()
            self.module.observability.sender = self._send_json
            # Apply the twin only once the store is served, so updates start from what is active.
            await self.module.started.wait()
            self._spawn(self._report_loop(), "twin-reporter")
            self._spawn(self._drift_loop(), "drift-reporter")
            self._spawn(self._shadow_loop(), "shadow-reporter")
            self._start_full_sync()
            while True:
                await self._dispatch(await self.connection.events.get())
        finally:
            self.module.observability.sender = None
            for task in [*self._tasks, *([self._sync_task] if self._sync_task else [])]:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.reconciler.close()
            await self.shadows.close()
            await self.connection.close()

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _dispatch(self, event: HubEvent) -> None:
        if event.kind == "connection":
            if event.payload:
                log.info("edgeHub connection restored: reading the twin")
                self._online.set()
                self._start_full_sync()
                self.reported.changed.set()
            else:
                log.warning("edgeHub connection lost: serving on, reconnecting")
                self._online.clear()
        elif event.kind == "patch":
            if isinstance(event.payload, dict):
                self.module.observability.apply(event.payload.get("observability"))
                self.reconciler.apply_patch(event.payload)
                if "shadows" in event.payload:
                    self.shadows.apply(event.payload["shadows"], full=False)
        elif event.kind in ("message", "method"):
            await self._capacity.acquire()
            handler = self._handle_message if event.kind == "message" else self._handle_method
            self._spawn(handler(event.payload), event.kind)

    # -- twin --------------------------------------------------------------------------------------

    def _start_full_sync(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
        self._sync_task = asyncio.create_task(self._full_sync(), name="twin-sync")

    async def _full_sync(self) -> None:
        delay = 1.0
        while True:
            try:
                twin = await self.connection.get_twin()
                break
            except HubUnavailable as exc:
                log.warning("cannot read the twin yet: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.module.settings.connect_backoff_max)
        self.module.observability.apply((twin.get("desired") or {}).get("observability"))
        self.reported.resync((twin.get("reported") or {}).get("models"))
        self.reconciler.apply_twin(twin)
        self.shadows.apply((twin.get("desired") or {}).get("shadows"), full=True)

    async def _report_loop(self) -> None:
        delay = 1.0
        while True:
            await self.reported.changed.wait()
            self.reported.changed.clear()
            await self._online.wait()
            patch = self.reported.take()
            if not patch:
                continue
            try:
                await self.connection.patch_reported(patch)
                delay = 1.0
            except HubUnavailable as exc:
                log.warning("reported properties not delivered yet: %s", exc)
                self.reported.restore(patch)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.module.settings.connect_backoff_max)

    # -- observability -----------------------------------------------------------------------------

    async def _send_json(
        self, output: str, body: bytes, properties: Mapping[str, str] | None = None, message_id: str | None = None
    ) -> None:
        """Telemetry and captured data to an output; edgeHub stores and forwards them while the hub is away.

        Returns once edgeHub acknowledged the message (MQTT PUBACK), which is when a capture segment may go.
        contentType and contentEncoding let IoT Hub routing read the body as JSON (routing queries on the
        body, and the JSON encoding of a storage endpoint).
        """
        from azure.iot.device import Message as _Message

        if not self._online.is_set():
            raise HubUnavailable("not connected to edgeHub")
        new_message: Callable[..., Any] = _Message  # the SDK is untyped
        message = new_message(body, message_id=message_id, content_encoding="utf-8", content_type="application/json")
        if properties:
            message.custom_properties = dict(properties)
        await self.connection.send_output(message, output)

    async def _drift_loop(self) -> None:
        """Raise (and clear) ``models.<name>.drift`` in reported properties when drift passes the threshold."""
        observability = self.module.observability
        checked = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(1.0)
            if asyncio.get_running_loop().time() - checked < observability.config.telemetry_interval:
                continue
            checked = asyncio.get_running_loop().time()
            changes = observability.drift_changes()
            if not changes or not self._online.is_set():
                continue
            try:
                await self.connection.patch_reported({"models": {n: {"drift": b} for n, b in changes.items()}})
            except HubUnavailable as exc:
                log.warning("drift not reported yet: %s", exc)
                continue
            observability.drift_reported(changes)

    async def _shadow_loop(self) -> None:
        """``shadows.<name>`` comparison figures in reported properties at the telemetry interval."""
        while True:
            await asyncio.sleep(max(1.0, self.module.observability.config.telemetry_interval))
            self.shadows.report_all()

    def _on_rollback(self, name: str) -> None:
        self.reconciler.record_rollback(name)
        served = self.module.repository.served(name)
        target = self.reconciler.state(name)
        self.reported.set_model(
            name,
            "active",
            target.version if target else None,
            served.active.version if served else None,
            served.active.sha256 if served else None,
        )

    # -- messages and methods ----------------------------------------------------------------------

    async def _handle_message(self, message: Any) -> None:
        try:
            output, reply = await self.router.route(message)
            try:
                await self.connection.send_output(reply, output)
            except HubUnavailable as exc:
                log.warning("output message for input %s dropped: %s", message.message_id, exc)
        finally:
            self._capacity.release()

    async def _handle_method(self, request: Any) -> None:
        from azure.iot.device import MethodResponse

        try:
            status, payload = await self.methods.invoke(request.name, request.payload)
            response = MethodResponse.create_from_method_request(request, status, payload)
            try:
                await self.connection.send_method_response(response)
            except HubUnavailable as exc:
                log.warning("response to method %s not delivered: %s", request.name, exc)
        finally:
            self._capacity.release()
