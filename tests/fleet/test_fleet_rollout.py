"""A fleet of real modules (``python -m edge_module``, one process each, the real SDK over TLS to a real
mosquitto per device) converges on a layered deployment made with ``deploy layered --apply`` against the
stand-in IoT Hub, the release file served by Azurite over a SAS URL."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
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


@pytest.mark.slow
def test_a_fleet_of_real_modules_converges_on_a_layered_release(
    tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = generate_key_pair(tmp_path / "keys", "release")
    fleet = devices(FLEET_SIZE)
    names = sorted(fleet)
    stand_in = StandInHub(
        tmp_path / "hub" / "state.json",
        load_public_keys(keys.public_path.read_text()),
        devices=fleet,
        simulate_devices=False,
    )
    model = tmp_path / "iris.onnx"
    model.write_bytes(iris_classifier("1").onnx)
    publisher = publisher_for("az://models", connection_string=azurite.connection_string)
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    release = make_release("iris", "1", model, sha256, publisher, load_private_key(keys.private_path))
    release_file = tmp_path / "release.json"
    release_file.write_text(json.dumps(models_block([release])))
    assert release.uri.startswith(azurite.endpoint) and "sig=" in release.uri

    modules: list[ModuleProcess] = []
    with (
        DeviceBrokers(tmp_path / "brokers", FLEET_SIZE) as brokers,
        WorkloadAPI(brokers.ca_pem) as workload,
        FleetHub(stand_in, brokers, names) as hub,
        HubServer(stand_in.respond) as rest,
    ):
        try:
            started = time.monotonic()
            for index, device in enumerate(names):
                env = {
                    **MODULE_SETTINGS,
                    **workload.module_env(device, MODULE),
                    "IOTEDGE_GATEWAYHOSTNAME": brokers.hosts[index],
                    "EDGE_TRUSTED_KEYS": str(keys.public_path),
                }
                store = tmp_path / "devices" / device / "models"
                store.mkdir(parents=True)
                module = ModuleProcess(store, env=env)
                modules.append(module.start(wait_ready=False, timeout=120))
            deadline = time.monotonic() + 180
            while hub.connected < FLEET_SIZE and time.monotonic() < deadline:
                time.sleep(0.2)
            assert hub.connected == FLEET_SIZE
            startup = time.monotonic() - started

            monkeypatch.setenv("IOTHUB_CONNECTION_STRING", stand_in.connection_string)
            applied = time.monotonic()
            args = ["deploy", "layered", "--release", str(release_file), "--id", "models-iris-1"]
            args += ["--target-condition", "tags.environment='prod'", "--priority", "10"]
            args += ["--out", str(tmp_path / "layered.json"), "--apply", "--hub-endpoint", rest.url]
            assert main(args) == 0, capsys.readouterr().err
            capsys.readouterr()

            credentials = HubCredentials.from_connection_string(stand_in.connection_string)
            with IoTHubClient(credentials, endpoint=rest.url) as client:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    seen = statuses(client)
                    if all(s.get("state") in ("active", "failed") for s in seen.values()):
                        break
                    time.sleep(0.5)
            converged = time.monotonic() - applied
            failed = {d: s for d, s in seen.items() if s.get("state") != "active"}
            assert failed == {}, f"{len(failed)} devices did not converge: {dict(list(failed.items())[:5])}"
            assert all(s.get("activeVersion") == "1" for s in seen.values())
            assert sorted(seen) == names  # every device reported, none missed

            assert main(["fleet", "status", "--json", "--hub-endpoint", rest.url]) == 0
            summary = json.loads(capsys.readouterr().out)["summary"]["iris"]
            assert summary["active"] == {"1": FLEET_SIZE} and summary["failed"] == {} and summary["pending"] == []
            assert hub.counts["desired patches"] == FLEET_SIZE
            print(f"\nfleet of {FLEET_SIZE}: modules connected in {startup:.1f}s, converged in {converged:.1f}s")
        finally:
            codes = [module.stop() for module in modules]
        assert codes == [0] * len(modules)
