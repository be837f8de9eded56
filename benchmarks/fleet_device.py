"""Simulated devices for ``benchmarks/fleet.py``: the module's own twin code, many devices per process.

Each simulated device runs, unchanged, what the real module runs between its twin and its model store:
``edge_module.twin``'s ``Reconciler`` (desired state, ``$version`` ordering, merge patches, supersede and
cancel), ``ModelUpdater`` (ed25519 signature check, download spreading, the download with its timeouts,
``Range`` resume and retries, size and sha256 check, activation, every reported state) and
``ReportedState`` (coalesced reported patches), over a real ``ModelStore`` and ``ModelManager`` that load
each release into a real onnxruntime session.

What it does not run, and why (``docs/fleet-scale.md`` measures how close it stays to the real module):

- the ``azure-iot-device`` SDK: its clients start several threads and event loops each, which is what
  keeps a machine to about a hundred real modules. A device here is one paho MQTT client speaking IoT
  Hub's twin topics (GET, desired patch, reported patch, with ``$rid`` request ids), prefixed with
  ``fleet/<device>/`` so that many devices share one broker, over plain TCP instead of TLS;
- ``TwinSync``'s twin loop is re-done in ``SimulatedDevice`` (read the whole twin on every connect, feed
  desired patches to the reconciler, send reported patches when connected, put them back on failure):
  ``TwinSync`` needs a whole ``EdgeModule`` (HTTP, data plane, observability);
- the pre-activation model check in a subprocess (``EDGE_VET_MODELS``): a process per device per release;
- the memory headroom check before a load: many devices share one process, whose headroom says nothing
  about one device's;
- HTTP serving, edgeHub messages, direct methods, telemetry, and the post-swap probation (it watches served
  requests, and a simulated device serves none; the real module reports a ``probation`` block after a swap).

Run by ``benchmarks/fleet.py`` as ``python -m benchmarks.fleet_device CONFIG.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_module.manager import MemoryPolicy, ModelManager
from edge_module.release import load_public_keys
from edge_module.repository import ModelRepository
from edge_module.runtime import SessionConfig
from edge_module.store import ModelStore
from edge_module.twin.connection import HubEvent, HubUnavailable
from edge_module.twin.fetch import FetchPolicy
from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from edge_module.twin.reported import ReportedState
from edge_module.twin.spread import DownloadSpread

log = logging.getLogger("benchmarks.fleet_device")
TOPIC_PREFIX = "fleet"  # tests/support/fleet_hub.py's SHARED_PREFIX


@dataclass(frozen=True)
class DeviceSettings:
    """The module settings a simulated device uses (the fleet test's MODULE_SETTINGS by default)."""

    call_timeout: float = 30.0
    reconnect_min: float = 1.0
    reconnect_max: float = 2.0
    retry_interval: float = 3.0
    spread_seconds: float = 0.0
    download_timeout: float = 30.0
    download_attempts: int = 5
    download_backoff: float = 0.5
    max_model_bytes: int = 200 * 1024 * 1024


class TwinLink:
    """One device's MQTT connection, with ``HubConnection``'s twin calls and events (same types)."""

    def __init__(self, device: str, host: str, port: int, settings: DeviceSettings) -> None:
        import paho.mqtt.client as mqtt

        self.device = device
        self.host, self.port = host, port
        self.settings = settings
        self.events: asyncio.Queue[HubEvent] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, asyncio.Future[tuple[int, bytes]]] = {}
        self._rids = itertools.count(1)
        self._prefix = f"{TOPIC_PREFIX}/{device}/"
        self._client = mqtt.Client(client_id=f"sim-{device}", clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(settings.reconnect_min, settings.reconnect_max)
        self.connected = False

    def open(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # paho's thread -> our loop

    def _post(self, kind: str, payload: Any) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.events.put_nowait, HubEvent(kind, payload))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            return
        client.subscribe(self._prefix + "$iothub/twin/res/#", qos=1)
        client.subscribe(self._prefix + "$iothub/twin/PATCH/properties/desired/#", qos=1)
        self.connected = True
        self._post("connection", True)

    def _on_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        self.connected = False
        self._post("connection", False)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_pending)

    def _fail_pending(self) -> None:
        # A request whose answer was lost with the connection fails now, not after the call timeout:
        # the caller puts its patch back and sends it again once connected, as the SDK's client does.
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HubUnavailable("connection lost"))
        self._pending.clear()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        topic = msg.topic[len(self._prefix) :]
        if topic.startswith("$iothub/twin/res/"):
            status = int(topic.split("/")[3])
            rid = topic.split("$rid=")[1].split("&")[0]
            self._loop.call_soon_threadsafe(self._resolve, rid, status, bytes(msg.payload))
        elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
            self._post("patch", json.loads(msg.payload))

    def _resolve(self, rid: str, status: int, payload: bytes) -> None:
        future = self._pending.pop(rid, None)
        if future is not None and not future.done():
            future.set_result((status, payload))

    # the calls TwinSync makes

    async def _request(self, what: str, topic: str, payload: bytes) -> tuple[int, bytes]:
        if not self.connected:
            raise HubUnavailable(f"{what} failed: not connected")
        rid = str(next(self._rids))
        future: asyncio.Future[tuple[int, bytes]] = self._loop.create_future()
        self._pending[rid] = future
        self._client.publish(self._prefix + topic.format(rid=rid), payload, qos=1)
        try:
            status, body = await asyncio.wait_for(future, self.settings.call_timeout)
        except TimeoutError:
            raise HubUnavailable(f"{what} failed: no answer in {self.settings.call_timeout}s") from None
        except HubUnavailable as exc:
            raise HubUnavailable(f"{what} failed: {exc}") from None
        finally:
            self._pending.pop(rid, None)
        if status >= 300:
            raise HubUnavailable(f"{what} failed: status {status}")
        return status, body

    async def get_twin(self) -> dict[str, Any]:
        _, body = await self._request("get twin", "$iothub/twin/GET/?$rid={rid}", b"")
        twin: dict[str, Any] = json.loads(body)
        return twin

    async def patch_reported(self, patch: dict[str, Any]) -> None:
        topic = "$iothub/twin/PATCH/properties/reported/?$rid={rid}"
        await self._request("patch reported properties", topic, json.dumps(patch).encode())


class SimulatedDevice:
    def __init__(self, link: TwinLink, store_root: Path, trusted_keys: list[Any], settings: DeviceSettings) -> None:
        self.link = link
        self.settings = settings
        store = ModelStore(store_root)
        store.open()
        self.manager = ModelManager(
            store, ModelRepository(), SessionConfig(), settings.max_model_bytes, vet_models=False,
            memory=MemoryPolicy(check=False),
        )  # fmt: skip
        self.reported = ReportedState()
        policy = FetchPolicy(
            allow_insecure=True,  # Azurite serves http on 127.0.0.1
            max_bytes=settings.max_model_bytes,
            timeout=settings.download_timeout,
            attempts=settings.download_attempts,
            backoff=settings.download_backoff,
        )
        spread = DownloadSpread(settings.spread_seconds)
        updater = ModelUpdater(self.manager, policy, trusted_keys, self.reported, spread=spread)
        self.reconciler = Reconciler(updater, self.reported, settings.retry_interval)
        self._online = asyncio.Event()
        self._sync: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """``TwinSync.run``'s twin part: connect, read the twin on every (re)connect, apply patches, report."""
        await self.manager.restore()  # as the module does before it reads the twin: serve what the store holds
        reporter = asyncio.create_task(self._report_loop())
        try:
            self.link.open()
            while True:
                event = await self.link.events.get()
                if event.kind == "connection":
                    if event.payload:
                        self._online.set()
                        self._start_full_sync()
                        self.reported.changed.set()
                    else:
                        self._online.clear()
                elif event.kind == "patch" and isinstance(event.payload, dict):
                    self.reconciler.apply_patch(event.payload)
        finally:
            reporter.cancel()
            if self._sync is not None:
                self._sync.cancel()
            await self.reconciler.close()
            self.link.close()
            self.manager.close()

    def _start_full_sync(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
        self._sync = asyncio.create_task(self._full_sync())

    async def _full_sync(self) -> None:
        delay = 1.0
        while True:
            try:
                twin = await self.link.get_twin()
                break
            except HubUnavailable as exc:
                log.info("%s: cannot read the twin yet: %s", self.link.device, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)
        self.reconciler.apply_twin(twin)

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
                await self.link.patch_reported(patch)
                delay = 1.0
            except HubUnavailable as exc:
                log.info("%s: reported properties not delivered yet: %s", self.link.device, exc)
                self.reported.restore(patch)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max)


async def run_devices(config: dict[str, Any]) -> None:
    """Run ``config["devices"]`` until SIGTERM or SIGINT."""
    settings = DeviceSettings(**config.get("settings", {}))
    keys = load_public_keys(Path(config["trusted_keys"]).read_text()) if config.get("trusted_keys") else []
    root = Path(config["store_root"])
    host, port = config["broker"]
    devices = [
        SimulatedDevice(TwinLink(name, host, port, settings), root / name, keys, settings) for name in config["devices"]
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(device.run(), name=device.link.device) for device in devices]
    await stop.wait()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = json.loads(Path(argv[0]).read_text())
    asyncio.run(run_devices(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
