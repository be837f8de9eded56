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
from dataclasses import dataclass, field
from typing import Any

from tests.pipeline.local_hub import StandInHub
from tests.support.fleet_brokers import DeviceBrokers
from tests.support.iothub import _query, merge_patch

MODULE = "edge-inference"


def merge_diff(old: dict[str, Any], new: dict[str, Any], depth: int = 2) -> dict[str, Any]:
    """A JSON merge patch (RFC 7396) that turns ``old`` into ``new``, objects below ``depth`` sent whole.

    IoT Hub does not document the exact patch it sends a device when an automatic deployment changes its
    desired properties. We send each changed release block whole (``models.<name>``), as ``deploy twin``
    does: the module replaces a model's block from a patch rather than merging into it
    (``edge_module/twin/reconcile.py``), so a field-by-field diff would hand it a partial, unverifiable
    release (it then reports ``failed``: signature mismatch).
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
    def __init__(self, stand_in: StandInHub, brokers: DeviceBrokers, devices: list[str]) -> None:
        import paho.mqtt.client as mqtt

        if len(devices) != brokers.count:
            raise ValueError("one broker per device")
        self.stand_in = stand_in
        self.devices = devices
        self.twins = {device: DeviceTwin() for device in devices}
        self.counts: Counter[str] = Counter()  # twin GETs, desired patches sent, reported patches received
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._connected: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="fleet-hub-refresh", daemon=True)
        for index, device in enumerate(devices):
            client = mqtt.Client(client_id=f"fleet-hub-{device}", clean_session=False)
            client.user_data_set(device)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.reconnect_delay_set(0.1, 1)
            client.connect_async(brokers.hosts[index], brokers.plain_port, keepalive=10)
            self._clients[device] = client
        stand_in.on_configurations_changed = self._wake.set

    def start(self) -> FleetHub:
        with self.stand_in.lock:
            for device in self.devices:
                self.twins[device].desired = self.stand_in.desired_for(device)
        for client in self._clients.values():
            client.loop_start()
        self._refresher.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._refresher.join(10)
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> FleetHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> int:
        with self._lock:
            return len(self._connected)

    def _on_connect(self, client: Any, device: str, flags: Any, rc: int) -> None:
        if rc != 0:
            return
        for topic in ("$iothub/twin/GET/#", "$iothub/twin/PATCH/properties/reported/#"):
            client.subscribe(topic, qos=1)
        with self._lock:
            self._connected.add(device)

    def _on_disconnect(self, client: Any, device: str, rc: int) -> None:
        with self._lock:
            self._connected.discard(device)

    def _on_message(self, client: Any, device: str, msg: Any) -> None:
        topic: str = msg.topic
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
            client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(body), qos=1)
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
            client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=1)

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
                    self._clients[device].publish(topic, json.dumps(patch), qos=1)
