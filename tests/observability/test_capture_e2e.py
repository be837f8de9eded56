"""Capture end to end: the real module, the real IoT SDK, mosquitto playing edgeHub.

Correlation ids from HTTP (JSON and binary) and edgeHub messages reach the capture records; a quiet device
delivers by age; captured rows survive a broker outage in the ring and all arrive once it is back.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest

from tests.observability.conftest import cancer_request
from tests.observability.models import breast_cancer_model
from tests.observability.test_capture import binary_request
from tests.support.inprocess import ADMIN_TOKEN
from tests.support.iothub import EmulatedHub, OutputMessage
from tests.twin.conftest import EdgeFactory, broker, releases, start_edge, workload  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
Key = tuple[str, int]  # (correlationId, row): the join key


def install_cancer(client: httpx.Client) -> None:
    body = {"parameters": {"file:1/model.onnx": base64.b64encode(breast_cancer_model().onnx).decode()}}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = client.post("/v2/repository/models/cancer/load", json=body, headers=headers)
    assert response.status_code == 200, response.text


def records_of(message: OutputMessage) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in message.body.splitlines() if line]


def captured(hub: EmulatedHub) -> dict[Key, dict[str, Any]]:
    return {(r["correlationId"], r["row"]): r for m in hub.outputs("capture") for r in records_of(m)}


def wait_captured(hub: EmulatedHub, keys: set[Key], timeout: float) -> dict[Key, dict[str, Any]]:
    hub.wait_output("capture", lambda _: keys <= set(captured(hub)), timeout)
    return captured(hub)


def metric(client: httpx.Client, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def test_correlation_ids_reach_the_records_and_a_quiet_device_delivers_by_age(
    start_edge: EdgeFactory,  # noqa: F811
) -> None:
    env = {
        "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EDGE_SERVE_DEFAULT_MODEL": "true",
        "EDGE_CAPTURE_RATE": "1.0",
        "EDGE_CAPTURE_FLUSH_SECONDS": "1",
        "EDGE_DEVICE_ID": "not-used-inside-iot-edge",
    }  # no EDGE_CAPTURE_DIR: the default, inside the model store
    edge = start_edge(env=env)
    x = breast_cancer_model().x_holdout
    names = breast_cancer_model().feature_names
    expected: set[Key] = set()
    with httpx.Client(base_url=edge.module.url, timeout=30) as client:
        install_cancer(client)
        response = client.post("/v2/models/cancer/infer", json={**cancer_request(x[:2]), "id": "http-1"})
        assert response.json()["id"] == "http-1"
        expected |= {("http-1", 0), ("http-1", 1)}
        generated = client.post("/v2/models/cancer/infer", json=cancer_request(x[2:3])).json()["id"]
        assert GENERATED_ID.match(generated)
        expected.add((generated, 0))
        content, headers = binary_request(x[3:4])
        response = client.post("/v2/models/cancer/infer", content=content, headers=headers)
        length = int(response.headers["inference-header-content-length"])
        binary_id = orjson.loads(response.content[:length])["id"]
        assert GENERATED_ID.match(binary_id) and binary_id != generated
        expected.add((binary_id, 0))

        # edgeHub input messages: named features with a message id; a V2 request with its own id; no id at all.
        features = [dict(zip(names, map(float, row), strict=True)) for row in x[4:7]]
        edge.hub.send_input(features, properties={"model": "cancer"}, message_id="msg-1")
        v2_request = {**cancer_request(x[7:8]), "id": "v2-7"}
        edge.hub.send_input(v2_request, properties={"model": "cancer"}, message_id="msg-2")
        edge.hub.send_input(features[:1], properties={"model": "cancer"})
        edge.hub.wait_output("predictions", lambda _: len(edge.hub.outputs("predictions")) == 3)
        predictions = edge.hub.outputs("predictions")
        by_cid = {m.properties.get("$.cid"): m for m in predictions}
        assert by_cid["msg-1"].json()["id"] == "msg-1" and by_cid["v2-7"].json()["id"] == "v2-7"
        (anonymous,) = set(by_cid) - {"msg-1", "v2-7"}
        assert anonymous and GENERATED_ID.match(anonymous) and by_cid[anonymous].json()["id"] == anonymous
        assert len(predictions) == 3
        expected |= {("msg-1", 0), ("msg-1", 1), ("msg-1", 2), ("v2-7", 0), (anonymous, 0)}

        # Eleven rows are far below a segment (192 KB): only the age flush (1 s here) sends them.
        records = wait_captured(edge.hub, expected, timeout=60)
        assert metric(client, "edge_capture_segments") <= 1
    assert set(records) == expected
    for record in records.values():
        assert record["deviceId"] == edge.hub.device_id  # IOTEDGE_DEVICEID wins over EDGE_DEVICE_ID
        assert record["model"] == "cancer" and record["version"] == "1" and list(record["inputs"]) == list(names)
    assert records[("msg-1", 2)]["inputs"] == features[2]
    for message in edge.hub.outputs("capture"):
        props = message.properties
        assert (props["$.ct"], props["$.ce"], props["type"]) == ("application/json", "utf-8", "capture")
        assert props["$.mid"] == props["segment"] == hashlib.sha256(message.body).hexdigest()
        assert len(message.body) <= 192 * 1024
    assert (edge.module.model_dir / "capture").is_dir()  # the ring lives on the store volume by default


def test_captured_rows_survive_a_broker_outage_and_all_arrive(start_edge: EdgeFactory) -> None:  # noqa: F811
    budget = 4 * 1024 * 1024
    env = {
        "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EDGE_SERVE_DEFAULT_MODEL": "true",
        "EDGE_CAPTURE_RATE": "1.0",
        "EDGE_CAPTURE_FLUSH_SECONDS": "1",
        "EDGE_CAPTURE_BUDGET_BYTES": str(budget),
    }
    edge = start_edge(env=env)
    x = breast_cancer_model().x_holdout
    sent: list[str] = []  # correlation ids of 2-row requests, in order
    statuses: list[int] = []
    stop = threading.Event()
    paused = threading.Event()

    def produce() -> None:
        """Two rows per request at a bounded pace (about 20 a second, 60 KB/s of records: the budget holds a minute)."""
        with httpx.Client(base_url=edge.module.url, timeout=30) as client:
            i = 0
            while not stop.is_set() and i < 5000:
                start = (2 * i) % (len(x) - 2)
                body = {**cancer_request(x[start : start + 2]), "id": f"r{i}"}
                response = client.post("/v2/models/cancer/infer", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    sent.append(response.json()["id"])
                i += 1
                paused.wait(0.05)  # pacing, not synchronisation

    high_water = 0.0
    with httpx.Client(base_url=edge.module.url, timeout=30) as client:
        install_cancer(client)
        worker = threading.Thread(target=produce)
        worker.start()
        try:
            wait_captured(edge.hub, {("r0", 0), ("r0", 1)}, timeout=60)  # flowing while the broker is up
            edge.broker.stop()
            during = len(sent)
            # Serving goes on; the ring fills: several segments closed by age, none sent.
            for _ in range(1200):  # bounded: 60 s
                high_water = max(high_water, metric(client, "edge_capture_bytes"))
                if metric(client, "edge_capture_segments") >= 3 and len(sent) > during + 60:
                    break
                paused.wait(0.05)
            else:
                pytest.fail("the ring did not fill while the broker was down")
            failed = metric(client, 'edge_capture_messages_total{outcome="failed"}')
            edge.broker.start()
            edge.hub.wait_connected()
            stopped_at = len(sent) + 40
            while len(sent) < stopped_at:  # some more after the outage
                high_water = max(high_water, metric(client, "edge_capture_bytes"))
                paused.wait(0.05)
        finally:
            stop.set()
            worker.join(60)
        expected = {(cid, row) for cid in sent for row in (0, 1)}
        wait_captured(edge.hub, expected, timeout=120)
        for _ in range(200):  # bounded: 10 s, the last segment's removal follows its acknowledgement
            if metric(client, "edge_capture_segments") == 0:
                break
            paused.wait(0.05)
        dropped = sum(
            metric(client, f'edge_capture_dropped_records_total{{reason="{reason}"}}')
            for reason in ("budget", "oversize", "queue")
        )
        assert metric(client, "edge_capture_segments") == 0 and metric(client, "edge_capture_bytes") == 0
    assert statuses and set(statuses) == {200}, f"HTTP failures across the outage: {Counter(statuses)}"
    assert failed >= 1  # the forwarder did meet the outage
    assert 0 < high_water <= budget and dropped == 0

    # At least once, and no more than that allows: a message id may repeat (a segment sent again after an
    # unacknowledged send), always with the same bytes; no row is ever in two different segments.
    bodies: dict[str, bytes] = {}
    for message in edge.hub.outputs("capture"):
        assert bodies.setdefault(message.properties["$.mid"], message.body) == message.body
    rows = Counter((r["correlationId"], r["row"]) for body in bodies.values() for r in records_of_body(body))
    assert set(rows) == expected and max(rows.values()) == 1


def records_of_body(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines() if line]
