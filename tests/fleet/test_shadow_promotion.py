"""Shadow releases on a fleet of real modules (``python -m edge_module``, the real SDK over TLS to a mosquitto
per device) driven by ``rollout shadow`` and ``rollout promote-if-agrees`` against the stand-in IoT Hub, the
release files served by Azurite over SAS URLs: an agreeing shadow is promoted on its ring; a shadow that
disagrees on one device's live traffic is not, and that device is named."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cloud.__main__ import main
from cloud.releases.iothub import HubCredentials, IoTHubClient
from cloud.releases.keys import generate_key_pair, load_private_key
from cloud.releases.publish import publisher_for
from cloud.releases.signing import make_release, models_block
from edge_module.release import load_public_keys
from tests.fleet.test_fleet_rollout import MODULE_SETTINGS, azurite
from tests.pipeline.local_hub import MODULE, StandInHub
from tests.release.azurite import Azurite
from tests.release.hub_server import HubServer
from tests.support.fleet_brokers import DeviceBrokers
from tests.support.fleet_hub import FleetHub
from tests.support.iothub import WorkloadAPI
from tests.support.models import TrainedModel, iris_classifier
from tests.support.server import ModuleProcess
from tests.twin.conftest import v2_request

__all__ = ["azurite"]
DEVICES = {f"site-{n}": {"environment": "prod"} for n in range(3)}
PROD = "tags.environment='prod'"
WAIT = ["--poll", "0.5", "--timeout", "180"]


def publish(tmp_path: Path, azurite: Azurite, keys: Any, version: str, trained: TrainedModel) -> Path:
    model = tmp_path / f"iris-{version}.onnx"
    model.write_bytes(trained.onnx)
    publisher = publisher_for("az://models", connection_string=azurite.connection_string)
    sha256 = hashlib.sha256(trained.onnx).hexdigest()
    release = make_release("iris", version, model, sha256, publisher, load_private_key(keys.private_path))
    path = tmp_path / f"release-{version}.json"
    path.write_text(json.dumps(models_block([release])))
    return path


def twins(client: IoTHubClient) -> dict[str, dict[str, Any]]:
    found = client.query(f"SELECT * FROM devices.modules WHERE moduleId = '{MODULE}'")
    return {t["deviceId"]: t["properties"]["reported"] for t in found}


def infer(module: ModuleProcess, rows: np.ndarray) -> None:
    with httpx.Client(base_url=module.url, timeout=10) as client:
        for row in rows:
            response = client.post("/v2/models/iris/infer", json=v2_request(row[np.newaxis, :]))
            assert response.status_code == 200, response.text


def wait_until(check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_agreeing_shadow_is_promoted_and_a_disagreeing_one_is_refused_naming_its_device(
    tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = generate_key_pair(tmp_path / "keys", "release")
    names = sorted(DEVICES)
    stand_in = StandInHub(
        tmp_path / "hub" / "state.json",
        load_public_keys(keys.public_path.read_text()),
        devices=DEVICES,
        simulate_devices=False,
    )
    v1, v2, v3 = iris_classifier("1"), iris_classifier("2"), iris_classifier("3", n_estimators=1)
    rows = v1.x_test
    # v2 is the same forest under another version: it agrees everywhere. v3 (one tree) disagrees on some rows.
    differ = v2.estimator.predict(rows) != v3.estimator.predict(rows)
    assert 0 < differ.sum() < len(rows)
    release_1 = publish(tmp_path, azurite, keys, "1", v1)
    release_2 = publish(tmp_path, azurite, keys, "2", v2)
    release_3 = publish(tmp_path, azurite, keys, "3", v3)
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
            for index, device in enumerate(names):
                env = {
                    **MODULE_SETTINGS,
                    **workload.module_env(device, MODULE),
                    "IOTEDGE_GATEWAYHOSTNAME": brokers.hosts[index],
                    "EDGE_TRUSTED_KEYS": str(keys.public_path),
                    "EDGE_SHADOW_SAMPLE_RATE": "1",
                    "EDGE_TELEMETRY_INTERVAL": "1",
                }
                store = tmp_path / "devices" / device / "models"
                store.mkdir(parents=True)
                modules.append(ModuleProcess(store, env=env))
                modules[-1].start(wait_ready=False, timeout=120)
            wait_until(lambda: hub.connected == len(names))
            hub_args = ["--hub-endpoint", rest.url]
            deploy = ["rollout", "deploy", "--release", str(release_1), "--ring", "canary", "--target-condition", PROD]
            assert main([*deploy, *WAIT, *hub_args]) == 0

            # An agreeing shadow: every device compares its own live traffic, then it is promoted.
            shadow = ["rollout", "shadow", "iris", "--release", str(release_2), "--target-condition", PROD]
            assert main([*shadow, *WAIT, *hub_args]) == 0
            for module in modules:
                infer(module, rows[:20])
            capsys.readouterr()
            assert main(["fleet", "status", *hub_args]) == 0
            assert "SHADOW OF" in capsys.readouterr().out
            promote = ["rollout", "promote-if-agrees", "iris", "--min-agreement", "0.95", "--min-compared", "20"]
            promote += ["--ring", "canary", "--out", str(tmp_path / "verdict-2.json")]
            assert main([*promote, *WAIT, *hub_args]) == 0
            verdict = json.loads((tmp_path / "verdict-2.json").read_text())
            assert sorted(verdict["passed"]) == names and verdict["disagree"] == {}
            assert all(row["agreement"] == 1.0 and row["compared"] >= 20 for row in verdict["passed"].values())
            reported = wait_until(
                lambda: (r := twins(client)) and all("iris" not in t.get("shadows", {}) for t in r.values()) and r
            )
            assert all(t["models"]["iris"]["activeVersion"] == "2" for t in reported.values())
            assert [c["id"] for c in client.list_configurations() if c["id"].endswith("-shadow")] == []

            # A shadow that disagrees on one site's inputs: that site gets the rows where v3 differs.
            shadow = ["rollout", "shadow", "iris", "--release", str(release_3), "--target-condition", PROD]
            assert main([*shadow, *WAIT, *hub_args]) == 0
            infer(modules[0], np.repeat(rows[differ], 10 // int(differ.sum()) + 1, axis=0)[:10])
            for module in modules[1:]:
                infer(module, rows[~differ][:10])
            promote = ["rollout", "promote-if-agrees", "iris", "--min-agreement", "0.95", "--min-compared", "10"]
            promote += ["--ring", "canary", "--out", str(tmp_path / "verdict-3.json")]
            capsys.readouterr()
            assert main([*promote, *WAIT, *hub_args]) == 7
            err = capsys.readouterr().err
            assert f"1 device(s) disagree: {names[0]}: agreement 0.0000 < 0.95" in err
            verdict = json.loads((tmp_path / "verdict-3.json").read_text())
            assert sorted(verdict["passed"]) == names[1:] and list(verdict["disagree"]) == [names[0]]
            reported = twins(client)
            assert all(t["models"]["iris"]["activeVersion"] == "2" for t in reported.values())  # nothing promoted
            assert all(t["shadows"]["iris"]["version"] == "3" for t in reported.values())  # still shadowing
        finally:
            codes = [module.stop() for module in modules]
        assert codes == [0] * len(modules)
