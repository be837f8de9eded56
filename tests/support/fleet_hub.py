"""The MQTT side of the stand-in IoT Hub for a fleet: each device's module twin is driven from the
configurations that target it, as IoT Hub does.

The REST side is ``tests.pipeline.local_hub.StandInHub`` (configurations, priorities, target conditions,
queries). This part holds one MQTT connection per device broker (``fleet_brokers.DeviceBrokers``) and:

- answers the module's twin GET with the desired properties the targeting configurations give that
  device (highest priority wins per ``properties.desired.<path>``, layered deployments merge) and the
  reported properties it has;
- when a configuration is created, changed or deleted, sends each device whose desired properties changed
  a desired patch (a JSON merge patch, with the next ``$version``), as IoT Hub does for automatic
  deployments;
- merges the module's reported patches into its twin and hands the ``models`` and ``shadows`` parts to the stand-in, so
  ``fleet status`` (a REST query) reads what the real modules reported.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.pipeline.local_hub import StandInHub
from tests.support.fleet_brokers import DeviceBrokers
from tests.support.iothub import _query, merge_patch

MODULE = "edge-inference"
SHARED_PREFIX = "fleet"


def merge_diff(old: dict[str, Any], new: dict[str, Any], depth: int = 2) -> dict[str, Any]:
    """A JSON merge patch (RFC 7396) that turns ``old`` into ``new``, objects below ``depth`` sent whole.

    IoT Hub does not document the exact patch it sends a device when an automatic deployment changes its
    desired properties. We send each changed release block whole (``models.<name>``), as ``deploy twin``
    does. The module merges a patch into a model's block field by field, as RFC 7386 says
    (``edge_module/twin/reconcile.py``), so a field-by-field diff would work as well; whole blocks keep
    each patch readable on its own.
    """
    patch: dict[str, Any] = dict.fromkeys(old.keys() - new.keys())
    for key, value in new.items():
        if key in old and old[key] == value:
            continue
        if depth > 1 and isinstance(value, dict) and isinstance(old.get(key), dict):
            patch[key] = merge_diff(old[key], value, depth - 1)
        else:
            patch[key] = copy.deepcopy(value)
    return patch


@dataclass
class DeviceTwin:
    desired: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported: dict[str, Any] = field(default_factory=dict)
    reported_version: int = 1


class FleetHub:
    """The hub's MQTT side. With ``brokers`` (one per real module) it holds one connection per broker and
    IoT Hub's own twin topics; with ``shared`` (host, port) it holds one connection to a single broker and
    the device-named topics ``fleet/<device>/$iothub/twin/...`` that ``benchmarks/fleet_device.py``'s
    simulated devices use (they are not the SDK, so they can name themselves in the topic).

    The twins (desired, reported, versions) are the hub's durable state: ``restart`` drops every MQTT
    connection and makes new ones, keeping them, as a hub restart does."""

    def __init__(
        self,
        stand_in: StandInHub,
        brokers: DeviceBrokers | None,
        devices: list[str],
        shared: tuple[str, int] | None = None,
        on_reported: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if (brokers is None) == (shared is None):
            raise ValueError("give either one broker per device or a shared broker")
        if brokers is not None and len(devices) != brokers.count:
            raise ValueError("one broker per device")
        self.stand_in = stand_in
        self.brokers = brokers
        self.shared = shared
        self.devices = devices
        self.on_reported = on_reported
        self.twins = {device: DeviceTwin() for device in devices}
        self.counts: Counter[str] = Counter()  # twin GETs, desired patches sent, reported patches received
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._connected: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="fleet-hub-refresh", daemon=True)
        # Two hub sides (real modules and simulated devices) may serve one stand-in: each is told.
        self._earlier = stand_in.on_configurations_changed
        stand_in.on_configurations_changed = self._configurations_changed

    def _configurations_changed(self) -> None:
        if self._earlier is not None:
            self._earlier()
        self._wake.set()

    def _connect(self) -> None:
        import paho.mqtt.client as mqtt

        if self.shared is not None:
            client = mqtt.Client(client_id="fleet-hub", clean_session=False)
            client.user_data_set(None)
            self._clients = {device: client for device in self.devices}
            targets = [(client, self.shared)]
        else:
            assert self.brokers is not None
            self._clients = {}
            targets = []
            for index, device in enumerate(self.devices):
                client = mqtt.Client(client_id=f"fleet-hub-{device}", clean_session=False)
                client.user_data_set(device)
                self._clients[device] = client
                targets.append((client, (self.brokers.hosts[index], self.brokers.plain_port)))
        for client, (host, port) in targets:
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.reconnect_delay_set(0.1, 1)
            client.connect_async(host, port, keepalive=10)
            client.loop_start()

    def _disconnect(self) -> None:
        for client in set(self._clients.values()):
            client.disconnect()
            client.loop_stop()
        with self._lock:
            self._connected.clear()

    def start(self) -> FleetHub:
        with self.stand_in.lock:
            for device in self.devices:
                self.twins[device].desired = self.stand_in.desired_for(device)
        self._connect()
        self._refresher.start()
        return self

    def restart(self, while_down: Callable[[], None] = lambda: None) -> None:
        """Drop every MQTT connection, run ``while_down`` (e.g. restart the brokers), connect again."""
        self._disconnect()
        while_down()
        self._connect()
        self._wake.set()  # configurations changed while down are sent now

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._refresher.join(10)
        self._disconnect()

    def __enter__(self) -> FleetHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> int:
        """Per-device brokers: the brokers connected to. Shared broker: 1 once connected."""
        with self._lock:
            return len(self._connected)

    def _on_connect(self, client: Any, device: str | None, flags: Any, rc: int) -> None:
        if rc != 0:
            return
        prefix = "" if device is not None else f"{SHARED_PREFIX}/+/"
        for topic in ("$iothub/twin/GET/#", "$iothub/twin/PATCH/properties/reported/#"):
            client.subscribe(prefix + topic, qos=1)
        with self._lock:
            self._connected.add(device or "shared")

    def _on_disconnect(self, client: Any, device: str | None, rc: int) -> None:
        with self._lock:
            self._connected.discard(device or "shared")

    def _send(self, device: str, topic: str, payload: str | bytes) -> None:
        prefix = "" if self.shared is None else f"{SHARED_PREFIX}/{device}/"
        self._clients[device].publish(prefix + topic, payload, qos=1)

    def _on_message(self, client: Any, device: str | None, msg: Any) -> None:
        topic: str = msg.topic
        if device is None:
            _, device, topic = topic.split("/", 2)
            if device not in self.twins:
                return
        rid = _query(topic).get("$rid", "")
        if topic.startswith("$iothub/twin/GET/"):
            self._refresh(device)
            with self._lock:
                self.counts["twin GETs"] += 1
                twin = self.twins[device]
                body = {
                    "desired": {**copy.deepcopy(twin.desired), "$version": twin.desired_version},
                    "reported": {**copy.deepcopy(twin.reported), "$version": twin.reported_version},
                }
            self._send(device, f"$iothub/twin/res/200/?$rid={rid}", json.dumps(body))
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            patch = json.loads(msg.payload)
            with self._lock:
                self.counts["reported patches"] += 1
                twin = self.twins[device]
                merge_patch(twin.reported, patch)
                twin.reported_version += 1
                version = twin.reported_version
                models = copy.deepcopy(twin.reported.get("models") or {})
                shadows = copy.deepcopy(twin.reported.get("shadows") or {})
            with self.stand_in.lock:
                self.stand_in.set_reported(device, models, shadows)
            if self.on_reported is not None:
                self.on_reported(device, models)
            self._send(device, f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"")

    def _refresh(self, device: str) -> dict[str, Any] | None:
        """Recompute the device's desired properties; the patch to send when they changed."""
        with self.stand_in.lock:
            desired = self.stand_in.desired_for(device)
        with self._lock:
            twin = self.twins[device]
            if desired == twin.desired:
                return None
            patch = merge_diff(twin.desired, desired)
            twin.desired = desired
            twin.desired_version += 1
            return {**patch, "$version": twin.desired_version}

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            for device in self.devices:
                patch = self._refresh(device)
                if patch is not None:
                    with self._lock:
                        self.counts["desired patches"] += 1
                    topic = f"$iothub/twin/PATCH/properties/desired/?$version={patch['$version']}"
                    self._send(device, topic, json.dumps(patch))
