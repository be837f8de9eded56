"""The broker (edgeHub) restarting in the middle of an update, under HTTP load.

The update finishes while the broker is down; its outcome must reach the twin once the module reconnects,
HTTP serving must not notice, and the store must hold exactly the new version and its predecessor.
Related: tests/twin/test_twin_e2e.py covers a patch missed while the broker was down and the broker down at start.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.reliability.store_check import assert_store_intact
from tests.support.models import iris_classifier
from tests.twin.conftest import EdgeFactory, v2_request
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow
ROWS = iris_classifier().x_test[:5]


def test_an_update_finished_while_the_broker_restarts_is_reported_after_reconnect(
    start_edge: EdgeFactory, releases: ReleaseServer
) -> None:
    edge = start_edge(desired={"models": {"iris": releases.release("iris", "1", iris_classifier("1", 3).onnx)}})
    edge.hub.wait_model_state("iris", "active", activeVersion="1")
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=edge.module.url, timeout=10) as client:
            while not stop.is_set() and len(statuses) < 100_000:
                statuses.append(client.post("/v2/models/iris/infer", json=v2_request(ROWS)).status_code)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        data = iris_classifier("2", 7).onnx
        version = edge.hub.patch_desired(
            {"models": {"iris": releases.release("iris", "2", data, stall_first_at=len(data) // 2)}}
        )
        assert releases.stalled.wait(60), "the download never started"
        edge.broker.stop()
        releases.release_stall.set()  # the download resumes and the model activates with the broker down
        for _ in range(600):  # bounded: 30 s
            if edge.infer_version("iris", ROWS) == "2":
                break
            time.sleep(0.05)
        else:
            pytest.fail("version 2 was never served while the broker was down")
        # The hub has not heard of version 2 (its last word may be "downloading", or v1 "active" when that
        # report was still in flight as the broker went down).
        heard = edge.hub.reported["models"]["iris"]
        assert (heard["state"], heard.get("activeVersion")) != ("active", "2"), heard
        edge.broker.start()
        block = edge.hub.wait_model_state("iris", "active", activeVersion="2", timeout=90)
        assert block["desiredVersion"] == "2" and "error" not in block
        status = edge.hub.wait_reported(lambda r: r.get("lastDesiredVersion") == version)["lastDesiredStatus"]
        assert status["code"] == 200
    finally:
        stop.set()
        worker.join(30)
    assert statuses and set(statuses) == {200}, f"HTTP failures across the broker restart: {set(statuses)}"
    assert_store_intact(edge.module.model_dir, {"iris": "2"})
