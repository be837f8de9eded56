"""The edgeHub connection: the SDK client's lifecycle, bounded calls, and its events on our event loop.

The SDK runs handlers on its own threads and loops; every handler here only hands its argument to
our loop's queue, so all twin, message and method logic runs on the module's one event loop.
The SDK's quirks this class contains (see the twin issue): ``connect()`` is not retried after a first
failure, handlers must be assigned after ``connect()`` succeeds, and no call has a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

EDGE_VARIABLES = (
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_APIVERSION",
)
DEV_MODE_VARIABLES = ("EdgeHubConnectionString", "EdgeModuleCACertificateFile")


def edge_environment(environ: dict[str, str] | None = None) -> bool:
    """True inside IoT Edge (workload API) or its dev mode; False means standalone."""
    env = os.environ if environ is None else environ
    return all(env.get(name) for name in EDGE_VARIABLES) or all(env.get(name) for name in DEV_MODE_VARIABLES)


class HubUnavailable(Exception):
    """A hub call that did not complete: not connected, timed out, or refused."""


@dataclass(frozen=True)
class HubEvent:
    kind: str  # "connection", "patch", "message", "method"
    payload: Any


class HubConnection:
    def __init__(self, call_timeout: float, reconnect_interval: int, backoff_max: float) -> None:
        self.call_timeout = call_timeout
        self.reconnect_interval = reconnect_interval
        self.backoff_max = backoff_max
        self.events: asyncio.Queue[HubEvent] = asyncio.Queue()
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return bool(self._client is not None and self._client.connected)

    async def open(self) -> None:
        """Create the client and connect, retrying with backoff for as long as it takes."""
        self._loop = asyncio.get_running_loop()
        self._client = await self._retrying("create the IoT Hub client", self._create)
        await self._retrying("connect to edgeHub", self._connect)
        # Assigning a handler subscribes (a blocking call on the SDK's loop): keep it off ours.
        await asyncio.to_thread(self._attach_handlers)
        log.info("connected to edgeHub")

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = 1.0
        failures = 0
        while True:
            try:
                return await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the SDK's public errors and OS errors alike: keep trying
                failures += 1
                level = logging.WARNING if failures in (1, 10) or failures % 60 == 0 else logging.INFO
                log.log(level, "cannot %s yet (attempt %d): %s: %s", what, failures, type(exc).__name__, exc)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)

    async def _create(self) -> Any:
        from azure.iot.device.aio import IoTHubModuleClient

        # The SDK's transport uses ssl.PROTOCOL_TLSv1_2 (deprecated); that one warning is not ours to fix.
        warnings.filterwarnings("ignore", message=r"ssl\.PROTOCOL_TLS", category=DeprecationWarning)

        # Reads the workload API over HTTP without a timeout: bound it, off the loop.
        return await asyncio.wait_for(
            asyncio.to_thread(
                IoTHubModuleClient.create_from_edge_environment,
                connection_retry_interval=self.reconnect_interval,
            ),
            self.call_timeout,
        )

    async def _connect(self) -> None:
        await asyncio.wait_for(self._client.connect(), self.call_timeout)

    def _attach_handlers(self) -> None:
        client = self._client
        client.on_background_exception = self._on_background_exception
        client.on_connection_state_change = self._on_connection_state_change
        client.on_twin_desired_properties_patch_received = lambda patch: self._post("patch", patch)
        client.on_message_received = lambda message: self._post("message", message)
        client.on_method_request_received = lambda request: self._post("method", request)

    def _post(self, kind: str, payload: Any) -> None:
        # Called on SDK threads.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.events.put_nowait, HubEvent(kind, payload))

    def _on_connection_state_change(self) -> None:
        self._post("connection", self.connected)

    def _on_background_exception(self, error: Exception) -> None:
        log.info("IoT SDK background error: %s: %s", type(error).__name__, error)

    # -- bounded calls -----------------------------------------------------------------------------

    async def call(self, what: str, coroutine: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(coroutine, self.call_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise HubUnavailable(f"{what} failed: {type(exc).__name__}: {exc}") from exc

    async def get_twin(self) -> dict[str, Any]:
        twin: dict[str, Any] = await self.call("get twin", self._client.get_twin())
        return twin

    async def patch_reported(self, patch: dict[str, Any]) -> None:
        await self.call("patch reported properties", self._client.patch_twin_reported_properties(patch))

    async def send_output(self, message: Any, output: str) -> None:
        await self.call(f"send to output {output}", self._client.send_message_to_output(message, output))

    async def send_method_response(self, response: Any) -> None:
        await self.call("send method response", self._client.send_method_response(response))

    async def close(self) -> None:
        if self._client is None:
            return
        try:
            # IoT Edge gives a stopping module about 10 s before SIGKILL.
            await asyncio.wait_for(self._client.shutdown(), min(self.call_timeout, 5.0))
        except Exception as exc:  # shutting down: nothing more to do about it
            log.info("IoT SDK shutdown: %s: %s", type(exc).__name__, exc)
        self._client = None
