"""A shadow release end to end: the real module process, the real azure-iot-device SDK over MQTT/TLS to the
real mosquitto broker (tests/support/iothub.py), releases served over HTTP on 127.0.0.1."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.observability.test_status_page import Cells, chromium
from tests.support.models import iris_classifier
from tests.support.system import require_binary
from tests.twin.conftest import EdgeFactory, v2_request
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow


def _answers(message_id: str, message: Any) -> bool:
    return bool(message.properties.get("$.cid") == message_id)


def test_a_shadow_mirrors_live_traffic_its_agreement_matches_sklearn_and_null_unloads_it(
    start_edge: EdgeFactory, releases: ReleaseServer, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    keys_file = tmp_path / "trusted.pem"
    keys_file.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    active, candidate = iris_classifier("1"), iris_classifier("2", n_estimators=1)  # two different forests
    v1 = releases.release("iris", "1", active.onnx, key=key)
    v2 = releases.release("iris", "2", candidate.onnx, key=key)
    forged = releases.release("iris", "2", candidate.onnx, key=Ed25519PrivateKey.generate())
    env = {"EDGE_TRUSTED_KEYS": str(keys_file), "EDGE_TELEMETRY_INTERVAL": "1", "EDGE_SHADOW_SAMPLE_RATE": "1"}
    edge = start_edge(desired={"models": {"iris": v1}, "shadows": {"iris": forged}}, env=env)
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    # A shadow whose release signature is wrong is refused; so is a shadow of a model not served.
    refused = edge.hub.wait_reported(lambda r: (r.get("shadows", {}).get("iris") or {}).get("state") == "failed")
    assert "signature" in refused["shadows"]["iris"]["error"]
    edge.hub.patch_desired({"shadows": {"nope": releases.release("nope", "1", candidate.onnx, key=key)}})
    refused = edge.hub.wait_reported(lambda r: (r.get("shadows", {}).get("nope") or {}).get("state") == "failed")
    assert "not served" in refused["shadows"]["nope"]["error"]

    edge.hub.patch_desired({"shadows": {"iris": v2, "nope": None}})
    edge.hub.wait_reported(lambda r: (r.get("shadows", {}).get("iris") or {}).get("state") == "active")

    # Live traffic: one row per HTTP request, then rows in edgeHub messages of five.
    rows = active.x_test
    http_rows, hub_rows = rows[:40], rows[40:]
    with httpx.Client(base_url=edge.module.url, timeout=10) as client:
        for row in http_rows:
            response = client.post("/v2/models/iris/infer", json=v2_request(row[np.newaxis, :]))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_version"] == "1"
            label = next(o for o in body["outputs"] if o["name"] == "label")["data"]
            assert label == active.estimator.predict(row[np.newaxis, :]).tolist()
    for start in range(0, len(hub_rows), 5):
        batch = hub_rows[start : start + 5]
        message_id = f"s-{start}"
        edge.hub.send_input(v2_request(batch), properties={"model": "iris"}, message_id=message_id)
        reply = edge.hub.wait_output("predictions", functools.partial(_answers, message_id))
        assert reply.json()["model_version"] == "1"
        labels = next(o for o in reply.json()["outputs"] if o["name"] == "label")["data"]
        assert labels == active.estimator.predict(batch).tolist()

    requests = len(http_rows) + len(hub_rows) // 5
    reported = edge.hub.wait_reported(
        lambda r: (r.get("shadows", {}).get("iris") or {}).get("compared") == requests, timeout=60
    )
    block = reported["shadows"]["iris"]
    assert block["version"] == "2" and block["mirrored"] == requests and block["dropped"] == 0
    assert block["errors"] == 0
    # The queue never filled, so every row was compared: the agreement is sklearn's on the same rows.
    expected = float(np.mean(active.estimator.predict(rows) == candidate.estimator.predict(rows)))
    assert 0.5 < expected < 1.0  # the two models really differ
    assert block["agreement"] == pytest.approx(expected, abs=1e-9)
    diffs = np.abs(active.estimator.predict_proba(rows) - candidate.estimator.predict_proba(rows))
    assert block["meanAbsDiff"] == pytest.approx(float(diffs.mean()), abs=1e-5)
    assert block["shadowP99Ms"] > 0 and block["activeP99Ms"] > 0

    # The same figures on /metrics, the status page's data and the metrics telemetry output.
    with httpx.Client(base_url=edge.module.url, timeout=10) as client:
        metrics = client.get("/metrics").text
        assert f'edge_shadow_compared_total{{model="iris",version="2"}} {requests}' in metrics
        assert f'edge_shadow_agreement{{model="iris",version="2"}} {block["agreement"]}' in metrics
        status = next(m for m in client.get("/status.json").json()["models"] if m["name"] == "iris")
        assert status["shadow"]["version"] == "2" and status["shadow"]["compared"] == requests
    telemetry = edge.hub.wait_output(
        "metrics", lambda m: (m.json().get("shadows", {}).get("iris") or {}).get("compared") == requests
    )
    assert telemetry.json()["shadows"]["iris"]["agreement"] == pytest.approx(expected, abs=1e-9)
    cells = Cells()
    cells.feed(chromium(require_binary("chromium"), tmp_path / "profile", "--dump-dom", edge.module.url + "/").stdout)
    assert cells.rows[("iris", "1")]["shadow"].startswith(f"v2: {requests} compared, agreement {expected:.4f}")
    assert edge.module.process is not None
    worker = _children(edge.module.process.pid)
    assert len(worker) == 1  # the shadow runs in a worker process of its own

    # null stops and unloads the shadow: its worker process ends; the active version serves on.
    edge.hub.patch_desired({"shadows": {"iris": None}})
    edge.hub.wait_reported(lambda r: "iris" not in r.get("shadows", {}))
    assert edge.infer_version("iris", rows[:1]) == "1"
    logs = edge.module.logs()
    assert "shadow version 2 stopped and unloaded" in logs
    assert not Path(f"/proc/{worker[0]}").exists()
    with httpx.Client(base_url=edge.module.url, timeout=10) as client:
        assert "edge_shadow_compared_total{" not in client.get("/metrics").text


def _children(pid: int) -> list[int]:
    """The process's live child processes (vetting children come and go; the shadow worker stays)."""
    # Each thread lists the children it started; the worker is started from a thread of the pool.
    children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in _read(task / "children").split()]
    return [int(child) for child in children if "shadow.worker" in _cmdline(int(child))]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the thread ended meanwhile
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
