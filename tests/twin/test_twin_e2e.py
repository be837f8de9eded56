"""The module twin end to end: the real module process, the real azure-iot-device SDK, a real mosquitto
broker playing IoT Hub (tests/support/iothub.py), releases served over HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_module.store import ModelStore
from tests.support.models import iris_classifier
from tests.twin.conftest import EdgeFactory, v2_request
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow

IRIS_ROWS = iris_classifier().x_test[:3]


def test_cold_start_then_patch_swaps_with_zero_failed_requests(
    start_edge: EdgeFactory, releases: ReleaseServer
) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    edge = start_edge(desired={"models": {"iris": v1}})
    block = edge.hub.wait_model_state("iris", "active", activeVersion="1")
    assert block["sha256"] == v1["sha256"] and "error" not in block
    assert edge.infer_version("iris", IRIS_ROWS) == "1"
    applied = edge.hub.wait_reported(lambda r: r.get("lastDesiredStatus", {}).get("code") == 200)
    assert applied["lastDesiredVersion"] == 1

    # Concurrent HTTP load across the swap: every request must succeed, on one version or the other.
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    saw_v2 = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=edge.module.url, timeout=10) as client:
            while not stop.is_set() and len(statuses) < 20000:
                response = client.post("/v2/models/iris/infer", json=v2_request(IRIS_ROWS))
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])
                    if response.json()["model_version"] == "2":
                        saw_v2.set()

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        v2 = releases.release("iris", "2", iris_classifier("2").onnx)
        version = edge.hub.patch_desired({"models": {"iris": v2}})
        edge.hub.wait_model_state("iris", "active", activeVersion="2", sha256=v2["sha256"])
        assert saw_v2.wait(30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert statuses and set(statuses) == {200}, f"failed requests during the swap: {set(statuses)}"
    assert versions == {"1", "2"}
    reported = edge.hub.wait_reported(lambda r: r.get("lastDesiredVersion") == version)
    assert reported["lastDesiredStatus"]["code"] == 200
    steps = [
        patch["models"]["iris"]["state"]
        for patch in edge.hub.reported_patches
        if patch.get("models", {}).get("iris", {}).get("desiredVersion") == "2"
    ]
    # Patches coalesce while one is in flight, so a step may be skipped; the order never changes.
    assert steps[-1] == "active" and steps == sorted(steps, key=["downloading", "verifying", "loading", "active"].index)

    # The same release again (a patch touching something else) downloads nothing.
    downloads = len(releases.files["/models/iris/2/model.onnx"].requests)
    later = edge.hub.patch_desired({"unrelated": {"x": 1}})
    edge.hub.wait_reported(lambda r: r.get("lastDesiredVersion") == later)
    edge.hub.patch_desired({"models": {"iris": v2}})
    edge.hub.wait_reported(lambda r: r.get("lastDesiredVersion") == later + 1)
    assert len(releases.files["/models/iris/2/model.onnx"].requests) == downloads
    # The SAS query string never reaches the logs.
    assert "SECRET-SAS-SIGNATURE" not in edge.module.logs()


def test_bad_releases_fail_with_a_reason_and_the_old_version_keeps_serving(
    start_edge: EdgeFactory, releases: ReleaseServer, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    keys_file = tmp_path / "trusted.pem"
    keys_file.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    good = iris_classifier("1").onnx
    other = iris_classifier("2").onnx
    v1 = releases.release("iris", "1", good, key=key)
    # Two download attempts: the unreachable and truncated cases fail fast.
    env = {"EDGE_TRUSTED_KEYS": str(keys_file), "EDGE_DOWNLOAD_ATTEMPTS": "2"}
    edge = start_edge(desired={"models": {"iris": v1}}, env=env)
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    wrong_key = Ed25519PrivateKey.generate()
    corrupt = b"\x08\x07this is not an ONNX model" * 64
    cases = {
        "bad-sha": (releases.release("iris", "bad-sha", other, key=key, sha256="0" * 64), "sha256 mismatch"),
        "bad-signature": (releases.release("iris", "bad-signature", other, key=wrong_key), "signature"),
        "unsigned": (releases.release("iris", "unsigned", other), "unsigned"),
        "unreachable": (
            {**releases.release("iris", "unreachable", other, key=key), "uri": "http://127.0.0.1:9/model.onnx?sig=x"},
            "failed after",
        ),
        "truncated": (
            releases.release("iris", "truncated", other, key=key, always_truncate_at=len(other) // 2),
            "failed after",
        ),
        "corrupt-onnx": (releases.release("iris", "corrupt-onnx", corrupt, key=key), "not a loadable ONNX"),
    }
    for version, (block, reason) in cases.items():
        edge.hub.patch_desired({"models": {"iris": block}})
        failed = edge.hub.wait_model_state("iris", "failed", desiredVersion=version)
        assert reason in failed["error"], (version, failed["error"])
        assert failed["activeVersion"] == "1"
        assert edge.infer_version("iris", IRIS_ROWS) == "1"
        status = edge.hub.wait_reported(lambda r: r.get("lastDesiredStatus", {}).get("code") == 400)
        assert "iris" in status["lastDesiredStatus"]["description"]
    assert "SECRET-SAS-SIGNATURE" not in edge.module.logs()
    assert "SECRET-SAS-SIGNATURE" not in str(edge.hub.reported)


def test_offline_start_serves_from_the_store_then_converges(
    start_edge: EdgeFactory, releases: ReleaseServer, model_dir: Path
) -> None:
    store = ModelStore(model_dir)
    store.open()
    sha1 = store.put_bytes(iris_classifier("1").onnx)
    store.activate("iris", "1", sha1)
    v2 = releases.release("iris", "2", iris_classifier("2").onnx)

    edge = start_edge(desired={"models": {"iris": v2}}, broker_up=False)
    assert edge.infer_version("iris", IRIS_ROWS) == "1"  # offline: the store serves

    edge.broker.start()
    edge.hub.start()
    edge.hub.wait_model_state("iris", "active", activeVersion="2", timeout=90)
    assert edge.infer_version("iris", IRIS_ROWS) == "2"


def test_network_drop_mid_download_resumes_and_recovers(start_edge: EdgeFactory, releases: ReleaseServer) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    edge = start_edge(desired={"models": {"iris": v1}})
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    data = iris_classifier("2").onnx
    v2 = releases.release("iris", "2", data, stall_first_at=len(data) // 2)
    edge.hub.patch_desired({"models": {"iris": v2}})
    assert releases.stalled.wait(60), "the download never started"
    # The network goes: broker and file server both unreachable, the half-done response is cut.
    edge.broker.stop()
    releases.down = True
    releases.release_stall.set()
    assert edge.infer_version("iris", IRIS_ROWS) == "1"
    assert releases.refused.acquire(timeout=60), "the module did not retry while the network was down"
    releases.down = False
    edge.broker.start()

    edge.hub.wait_model_state("iris", "active", activeVersion="2", timeout=90)
    assert edge.infer_version("iris", IRIS_ROWS) == "2"
    ranges = releases.files["/models/iris/2/model.onnx"].requests
    assert any(r and r.startswith(f"bytes={len(data) // 2}-") for r in ranges), ranges


def test_a_patch_missed_while_disconnected_is_applied_after_reconnect(
    start_edge: EdgeFactory, releases: ReleaseServer
) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    edge = start_edge(desired={"models": {"iris": v1}})
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    edge.broker.stop()
    v2 = releases.release("iris", "2", iris_classifier("2").onnx)
    version = edge.hub.patch_desired({"models": {"iris": v2}}, publish=False)
    edge.broker.start()
    edge.hub.wait_connected()

    edge.hub.wait_model_state("iris", "active", activeVersion="2", timeout=90)
    assert edge.hub.wait_reported(lambda r: r.get("lastDesiredVersion") == version)["lastDesiredStatus"]["code"] == 200
    assert edge.infer_version("iris", IRIS_ROWS) == "2"


def test_input_messages_round_trip_and_direct_methods_work(start_edge: EdgeFactory, releases: ReleaseServer) -> None:
    iris = iris_classifier("1")
    v1 = releases.release("iris", "1", iris.onnx)
    edge = start_edge(desired={"models": {"iris": v1}})
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    features = dict(zip(iris.feature_names, map(float, iris.x_test[0]), strict=True))
    expected = int(iris.estimator.predict(iris.x_test[:1])[0])
    edge.hub.send_input(features, properties={"model": "iris", "site": "north plant"}, message_id="m-1")
    reply = edge.hub.wait_output("predictions", lambda m: m.properties.get("$.cid") == "m-1")
    assert reply.properties["site"] == "north plant"
    body = reply.json()
    assert body["model_name"] == "iris" and body["model_version"] == "1"
    labels = next(o for o in body["outputs"] if o["name"] == "label")
    assert labels["data"] == [expected]

    # A list of rows, with the model taken as the default (the only one served).
    edge.hub.send_input([features, features], message_id="m-2")
    reply = edge.hub.wait_output("predictions", lambda m: m.properties.get("$.cid") == "m-2")
    assert next(o for o in reply.json()["outputs"] if o["name"] == "label")["shape"] == [2]

    # A V2 inference request as the body.
    edge.hub.send_input(v2_request(iris.x_test[:3]), properties={"model": "iris"}, message_id="m-3")
    reply = edge.hub.wait_output("predictions", lambda m: m.properties.get("$.cid") == "m-3")
    assert next(o for o in reply.json()["outputs"] if o["name"] == "label")["shape"] == [3]

    bad = {
        "m-bad-json": (b"{not json", "not JSON"),
        "m-missing": ({"petal width (cm)": 1.0}, "lacks feature"),
        "m-type": ({**features, "petal width (cm)": "wide"}, "must be a number"),
        "m-unknown-model": (features, "unknown model"),
    }
    for message_id, (payload, _) in bad.items():
        props = {"model": "nope"} if message_id == "m-unknown-model" else {"model": "iris"}
        edge.hub.send_input(payload, properties=props, message_id=message_id)
    for message_id, (_, reason) in bad.items():

        def answers(message: Any, mid: str = message_id) -> bool:
            return bool(message.properties.get("$.cid") == mid)

        error = edge.hub.wait_output("errors", answers)
        assert reason in error.json()["error"], (message_id, error.json())
    # After all that, the module still answers.
    assert edge.infer_version("iris", IRIS_ROWS) == "1"

    status, pong = edge.hub.invoke_method("ping")
    assert status == 200 and pong["pong"] is True
    status, unknown = edge.hub.invoke_method("reboot", {})
    assert status == 404 and "unknown method" in unknown["error"]

    v2 = releases.release("iris", "2", iris_classifier("2").onnx)
    edge.hub.patch_desired({"models": {"iris": v2}})
    edge.hub.wait_model_state("iris", "active", activeVersion="2")
    status, report = edge.hub.invoke_method("getModelStatus")
    assert status == 200
    iris_status = report["models"]["iris"]
    assert iris_status["activeVersion"] == "2" and iris_status["sha256"] == v2["sha256"]
    assert iris_status["stored"]["lastKnownGood"] == "1" and iris_status["loaded"] is True

    status, rolled = edge.hub.invoke_method("rollback", {"model": "iris"})
    assert status == 200 and rolled["activeVersion"] == "1" and rolled["previousVersion"] == "2"
    assert edge.infer_version("iris", IRIS_ROWS) == "1"
    block = edge.hub.wait_model_state("iris", "active", activeVersion="1")
    assert block["desiredVersion"] == "2"
    status, missing = edge.hub.invoke_method("rollback", {"model": "ghost"})
    assert status == 404, missing
    status, _ = edge.hub.invoke_method("rollback", {})
    assert status == 400


def test_dev_mode_connection_string_and_removal_by_null(start_edge: EdgeFactory, releases: ReleaseServer) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    # IoT Edge dev mode (EdgeHubConnectionString + CA file) instead of the workload API.
    edge = start_edge(desired={"models": {"iris": v1}}, dev_mode=True)
    edge.hub.wait_model_state("iris", "active", activeVersion="1")
    edge.hub.patch_desired({"models": {"iris": None}})
    edge.hub.wait_model_state("iris", "removed")
    response = httpx.post(f"{edge.module.url}/v2/models/iris/infer", json=v2_request(IRIS_ROWS), timeout=10)
    assert response.status_code == 404
