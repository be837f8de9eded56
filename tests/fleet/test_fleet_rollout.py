"""A fleet of real modules (``python -m edge_module``, one process each, the real SDK over TLS to a real
mosquitto per device) converges on a layered deployment made with ``deploy layered --apply`` against the
stand-in IoT Hub, the release file served by Azurite over a SAS URL."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.releases.iothub import HubCredentials, IoTHubClient
from cloud.releases.keys import generate_key_pair, load_private_key
from cloud.releases.publish import publisher_for
from cloud.releases.signing import make_release, models_block
from edge_module.release import load_public_keys
from tests.pipeline.local_hub import MODULE, StandInHub
from tests.release.azurite import Azurite
from tests.release.hub_server import HubServer
from tests.support.fleet_brokers import DeviceBrokers
from tests.support.fleet_hub import FleetHub
from tests.support.iothub import WorkloadAPI
from tests.support.models import iris_classifier
from tests.support.server import ModuleProcess

FLEET_SIZE = int(os.environ.get("FLEET_TEST_DEVICES", "100"))
# Lean module processes: no default model, short reconnect and retry intervals so the fleet converges fast.
MODULE_SETTINGS = {
    "EDGE_ALLOW_INSECURE_URIS": "true",  # Azurite serves http on 127.0.0.1
    "EDGE_SERVE_DEFAULT_MODEL": "false",
    "EDGE_RECONNECT_INTERVAL": "1",
    "EDGE_CONNECT_BACKOFF_MAX": "2",
    "EDGE_HUB_CALL_TIMEOUT": "30",
    "EDGE_DOWNLOAD_TIMEOUT": "30",
    "EDGE_DOWNLOAD_ATTEMPTS": "5",
    "EDGE_DOWNLOAD_BACKOFF": "0.5",
    "EDGE_UPDATE_RETRY_INTERVAL": "3",
    "EDGE_LOG_LEVEL": "WARNING",
}


def devices(count: int) -> dict[str, dict[str, str]]:
    return {f"gw-{n:03d}": {"environment": "prod", **({"ring": "canary"} if n < 5 else {})} for n in range(count)}


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


def statuses(client: IoTHubClient) -> dict[str, dict[str, Any]]:
    twins = client.query(f"SELECT * FROM devices.modules WHERE moduleId = '{MODULE}'")
    return {t["deviceId"]: (t["properties"]["reported"].get("models") or {}).get("iris", {}) for t in twins}


def wait_for(client: IoTHubClient, devices: list[str], version: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Poll the hub (a REST query, as ``fleet status`` does) until ``devices`` are done with ``version``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = statuses(client)
        done = [seen.get(d, {}).get("desiredVersion") == version and seen[d].get("state") in ("active", "failed")
                for d in devices]  # fmt: skip
        if all(done) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def start_modules(
    modules: list[ModuleProcess],
    names: list[str],
    tmp_path: Path,
    brokers: DeviceBrokers,
    workload: WorkloadAPI,
    trusted_keys: Path,
) -> None:
    """Start one module per device, a few at a time (start-up is CPU-bound: more would only queue)."""

    def start(index: int) -> ModuleProcess:
        device = names[index]
        env = {
            **MODULE_SETTINGS,
            **workload.module_env(device, MODULE),
            "IOTEDGE_GATEWAYHOSTNAME": brokers.hosts[index],
            "EDGE_TRUSTED_KEYS": str(trusted_keys),
        }
        store = tmp_path / "devices" / device / "models"
        store.mkdir(parents=True)
        module = ModuleProcess(store, env=env)
        modules.append(module)  # list.append is atomic: the caller stops whatever was started
        return module.start(wait_ready=False, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(start, range(len(names))))


def not_active_on(seen: dict[str, dict[str, Any]], devices: list[str], version: str) -> dict[str, Any]:
    """The devices (with what they report) that are not active on ``version``."""
    return {
        d: seen.get(d)
        for d in devices
        if (seen.get(d) or {}).get("state") != "active" or seen[d].get("activeVersion") != version
    }


def publish(tmp_path: Path, azurite: Azurite, keys: Any, version: str) -> Path:
    """Sign and publish iris ``version`` to Azurite; the release file ``deploy layered`` reads."""
    model = tmp_path / f"iris-{version}.onnx"
    model.write_bytes(iris_classifier(version).onnx)
    publisher = publisher_for("az://models", connection_string=azurite.connection_string)
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    release = make_release("iris", version, model, sha256, publisher, load_private_key(keys.private_path))
    assert release.uri.startswith(azurite.endpoint) and "sig=" in release.uri
    path = tmp_path / f"release-{version}.json"
    path.write_text(json.dumps(models_block([release])))
    return path


def deploy(tmp_path: Path, release_file: Path, version: str, priority: int, hub_url: str) -> None:
    args = ["deploy", "layered", "--release", str(release_file), "--id", f"models-iris-{version}"]
    args += ["--target-condition", "tags.environment='prod'", "--priority", str(priority)]
    args += ["--out", str(tmp_path / f"layered-{version}.json"), "--apply", "--hub-endpoint", hub_url]
    assert main(args) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fleet_of_real_modules_converges_and_a_tenth_offline_catches_up(
    tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Release 1 to the whole fleet: every device active on it. Release 2 (a higher-priority layered
    deployment) while a tenth of the devices are offline: the others take it, the offline ones keep 1;
    back online, they take 2 as well. No device fails, none is missed."""
    keys = generate_key_pair(tmp_path / "keys", "release")
    fleet = devices(FLEET_SIZE)
    names = sorted(fleet)
    offline = names[::10]
    online = [d for d in names if d not in offline]
    stand_in = StandInHub(
        tmp_path / "hub" / "state.json",
        load_public_keys(keys.public_path.read_text()),
        devices=fleet,
        simulate_devices=False,
    )
    release_1 = publish(tmp_path, azurite, keys, "1")
    release_2 = publish(tmp_path, azurite, keys, "2")
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", stand_in.connection_string)
    credentials = HubCredentials.from_connection_string(stand_in.connection_string)

    modules: list[ModuleProcess] = []
    with (
        DeviceBrokers(tmp_path / "brokers", FLEET_SIZE) as brokers,
        WorkloadAPI(brokers.ca_pem) as workload,
        FleetHub(stand_in, brokers, names) as hub,
        HubServer(stand_in.respond) as rest,
        IoTHubClient(credentials, endpoint=rest.url) as client,
    ):
        try:
            started = time.monotonic()
            start_modules(modules, names, tmp_path, brokers, workload, keys.public_path)
            deadline = time.monotonic() + 420  # 100 module start-ups are CPU-bound: ~2 minutes on 2 busy cores
            while hub.connected < FLEET_SIZE and time.monotonic() < deadline:
                time.sleep(0.2)
            assert hub.connected == FLEET_SIZE
            startup = time.monotonic() - started

            applied = time.monotonic()
            deploy(tmp_path, release_1, "1", 10, rest.url)
            seen = wait_for(client, names, "1", timeout=300)
            first = time.monotonic() - applied
            not_active = not_active_on(seen, names, "1")
            assert not_active == {}, f"{len(not_active)} devices not active on 1: {dict(list(not_active.items())[:5])}"
            assert sorted(seen) == names  # every device reported, none missed
            capsys.readouterr()
            assert main(["fleet", "status", "--json", "--hub-endpoint", rest.url]) == 0
            summary = json.loads(capsys.readouterr().out)["summary"]["iris"]
            assert summary["active"] == {"1": FLEET_SIZE} and summary["failed"] == {} and summary["pending"] == []

            for device in offline:
                brokers.stop_one(names.index(device))
            applied = time.monotonic()
            deploy(tmp_path, release_2, "2", 20, rest.url)
            seen = wait_for(client, online, "2", timeout=300)
            second = time.monotonic() - applied
            lagging = not_active_on(seen, online, "2")
            assert lagging == {}, f"{len(lagging)} online devices not active on 2: {dict(list(lagging.items())[:3])}"
            assert all(seen[d].get("activeVersion") == "1" for d in offline)  # untouched while offline
            for device in offline:
                brokers.start_one(names.index(device), wait=True)
            back = time.monotonic()
            seen = wait_for(client, names, "2", timeout=300)
            caught_up = time.monotonic() - back
            not_active = not_active_on(seen, names, "2")
            assert not_active == {}, f"{len(not_active)} devices not active on 2: {dict(list(not_active.items())[:5])}"
            capsys.readouterr()
            assert main(["fleet", "status", "--json", "--hub-endpoint", rest.url]) == 0
            summary = json.loads(capsys.readouterr().out)["summary"]["iris"]
            assert summary["active"] == {"2": FLEET_SIZE} and summary["failed"] == {} and summary["pending"] == []
            sys.stderr.write(
                f"\nfleet of {FLEET_SIZE}: modules connected in {startup:.1f}s; release 1 active everywhere"
                f" {first:.1f}s after deploy; release 2 on the {len(online)} online in {second:.1f}s; the"
                f" {len(offline)} offline caught up {caught_up:.1f}s after coming back; hub {dict(hub.counts)}\n"
            )
        finally:
            codes = [module.stop() for module in modules]
        assert codes == [0] * len(modules)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_broken_release_stops_at_the_canary_ring(
    tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release signed with a key the devices do not trust goes to the canary ring with ``rollout deploy``:
    the canary modules report it ``failed``, the wait step sees that and stops (exit 7), and no device of
    the wider fleet is sent anything."""
    trusted = generate_key_pair(tmp_path / "keys", "release")
    untrusted = generate_key_pair(tmp_path / "other-keys", "release")
    fleet = devices(10)
    names = sorted(fleet)
    canary = [d for d in names if fleet[d].get("ring") == "canary"]
    stand_in = StandInHub(
        tmp_path / "hub" / "state.json",
        load_public_keys(trusted.public_path.read_text()),
        devices=fleet,
        simulate_devices=False,
    )
    broken = publish(tmp_path, azurite, untrusted, "1")
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", stand_in.connection_string)

    modules: list[ModuleProcess] = []
    with (
        DeviceBrokers(tmp_path / "brokers", len(names)) as brokers,
        WorkloadAPI(brokers.ca_pem) as workload,
        FleetHub(stand_in, brokers, names) as hub,
        HubServer(stand_in.respond) as rest,
    ):
        try:
            start_modules(modules, names, tmp_path, brokers, workload, trusted.public_path)
            deadline = time.monotonic() + 300
            while hub.connected < len(names) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert hub.connected == len(names)

            args = ["rollout", "deploy", "--release", str(broken), "--ring", "canary"]
            args += ["--target-condition", "tags.ring='canary'", "--poll", "0.5", "--timeout", "240"]
            args += ["--hub-endpoint", rest.url]
            capsys.readouterr()
            assert main(args) == 7
            err = capsys.readouterr().err
            assert f"iris version 1 failed on {len(canary)} device(s)" in err and "signature" in err
            credentials = HubCredentials.from_connection_string(stand_in.connection_string)
            with IoTHubClient(credentials, endpoint=rest.url) as client:
                seen = statuses(client)
                ids = [c["id"] for c in client.list_configurations()]
            assert all(seen[d].get("state") == "failed" and "signature" in seen[d].get("error", "") for d in canary)
            wider = [d for d in names if d not in canary]
            assert all(seen[d] == {} for d in wider)  # nothing reported about iris: never asked to run it
            assert len(ids) == 1 and ids[0].endswith("-canary")  # no fleet ring was created
            assert hub.counts["desired patches"] == len(canary)  # nothing sent to the wider fleet
        finally:
            codes = [module.stop() for module in modules]
        assert codes == [0] * len(modules)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_fleet_converges_across_a_hub_restart_mid_rollout(
    tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release goes out with download spreading; once every module has taken it (and most are still
    waiting to download), the hub's MQTT side and every broker restart. The modules reconnect, read their
    twin again, keep the update they were running, and all end active on the release: none failed."""
    keys = generate_key_pair(tmp_path / "keys", "release")
    fleet = {f"gw-{n:03d}": {"environment": "prod"} for n in range(10)}
    names = sorted(fleet)
    stand_in = StandInHub(
        tmp_path / "hub" / "state.json",
        load_public_keys(keys.public_path.read_text()),
        devices=fleet,
        simulate_devices=False,
    )
    release = publish(tmp_path, azurite, keys, "1")
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", stand_in.connection_string)
    credentials = HubCredentials.from_connection_string(stand_in.connection_string)

    modules: list[ModuleProcess] = []
    with (
        DeviceBrokers(tmp_path / "brokers", len(names)) as brokers,
        WorkloadAPI(brokers.ca_pem) as workload,
        FleetHub(stand_in, brokers, names) as hub,
        HubServer(stand_in.respond) as rest,
        IoTHubClient(credentials, endpoint=rest.url) as client,
    ):
        try:
            start_modules(modules, names, tmp_path, brokers, workload, keys.public_path)
            deadline = time.monotonic() + 300
            while hub.connected < len(names) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert hub.connected == len(names)

            args = ["deploy", "layered", "--release", str(release), "--id", "models-iris-1", "--priority", "10"]
            args += ["--target-condition", "tags.environment='prod'", "--spread-seconds", "20"]
            args += ["--out", str(tmp_path / "layered.json"), "--apply", "--hub-endpoint", rest.url]
            assert main(args) == 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # every module took the release (most now wait to download)
                seen = statuses(client)
                if all(seen.get(d, {}).get("desiredVersion") == "1" for d in names):
                    break
                time.sleep(0.2)
            waiting = [d for d in names if seen[d].get("state") == "downloading" and seen[d].get("downloadStartsAt")]
            active_before = sum(seen[d].get("state") == "active" for d in names)
            gets_before = hub.counts["twin GETs"]

            def brokers_down_and_up() -> None:
                for index in range(len(names)):
                    brokers.stop_one(index)
                for index in range(len(names)):
                    brokers.start_one(index, wait=True)

            hub.restart(brokers_down_and_up)
            seen = wait_for(client, names, "1", timeout=300)
            not_active = not_active_on(seen, names, "1")
            assert not_active == {}, f"{len(not_active)} devices not active on 1: {not_active}"
            assert active_before < len(names) and waiting  # the restart came mid-rollout
            assert hub.counts["twin GETs"] >= gets_before + len(names)  # every module read its twin again
            assert all(seen[d].get("downloadStartsAt") is None for d in names)
            capsys.readouterr()
            assert main(["fleet", "status", "--json", "--hub-endpoint", rest.url]) == 0
            summary = json.loads(capsys.readouterr().out)["summary"]["iris"]
            assert summary["active"] == {"1": len(names)} and summary["failed"] == {} and summary["pending"] == []
            sys.stderr.write(
                f"\nhub restart: {active_before} of {len(names)} active and {len(waiting)} waiting when it restarted;"
                f" hub {dict(hub.counts)}\n"
            )
        finally:
            codes = [module.stop() for module in modules]
        assert codes == [0] * len(modules)
