"""Post-swap probation through the twin: the real module process, the real SDK over MQTT/TLS to mosquitto, a
release that fails on a share of live inputs, and live HTTP load across the swap and the swap back."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import httpx
import pytest

from tests.support.misbehaving_models import failing_on_long_sepals, failing_rows, iris_rows
from tests.support.models import iris_classifier
from tests.twin.conftest import EdgeFactory
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

PROBATION_ENV = {
    "EDGE_PROBATION_REQUESTS": "400",
    "EDGE_PROBATION_SECONDS": "120",
    "EDGE_PROBATION_MIN_REQUESTS": "50",
}
MAX_REQUESTS = 20_000  # a bound per load loop, never reached in practice


class Load:
    """Two client threads sending one iris row per request, cycling through all 150 rows."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[float, int, int, str | None]] = []  # (time, row, status, version)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.rows = itertools.cycle(enumerate(iris_rows()))
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(MAX_REQUESTS):
                if self.stop.is_set():
                    return
                with self.lock:
                    index, row = next(self.rows)
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}
                response = client.post("/v2/models/iris/infer", json=body)
                version = response.json().get("model_version") if response.status_code == 200 else None
                with self.lock:
                    self.results.append((time.monotonic(), index, response.status_code, version))

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def __enter__(self) -> Load:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(60)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_failing_release_is_rolled_back_under_load_and_not_applied_again(
    start_edge: EdgeFactory, releases: ReleaseServer
) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    edge = start_edge(desired={"models": {"iris": v1}}, env=PROBATION_ENV)
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    with Load(edge.module.url) as load:
        _wait(lambda: load.count() >= 200, 60, "a baseline of live requests on version 1")
        v2 = releases.release("iris", "2", failing_on_long_sepals("2"))
        patched = time.monotonic()
        edge.hub.patch_desired({"models": {"iris": v2}})
        block = edge.hub.wait_model_state("iris", "failed", timeout=120, activeVersion="1")
        rolled_back = time.monotonic()
        after = load.count()
        _wait(lambda: load.count() >= after + 300, 60, "live requests after the swap back")

    assert block["desiredVersion"] == "2" and block["sha256"] == v1["sha256"]
    assert block["error"].startswith("rolled back after activation: failure rate: ")
    probation = edge.hub.wait_reported(
        lambda r: r.get("models", {}).get("iris", {}).get("probation", {}).get("state") == "rolledBack"
    )["models"]["iris"]["probation"]
    failed = [(row, status) for _, row, status, _ in load.results if status != 200]
    long_sepals = failing_rows()
    # 0 failed requests beyond probation's own: each failure is version 2's on a long-sepal row, and counted.
    assert failed and all(status == 500 and long_sepals[row] for row, status in failed)
    assert probation["failures"] == len(failed), (probation, len(failed))
    assert probation["version"] == "2" and probation["previousVersion"] == "1"
    assert probation["signal"] == "failure_rate"
    last_failure = max(t for t, _, status, _ in load.results if status != 200)
    assert last_failure <= rolled_back
    assert {version for t, _, status, version in load.results if t > rolled_back and status == 200} == {"1"}
    status = edge.hub.reported["lastDesiredStatus"]
    assert status["code"] == 400 and "rolled back after activation" in status["description"]
    log.info(
        "probation: rolled back %.2f s after the patch (%s requests on version 2, %s failed)",
        rolled_back - patched,
        probation["requests"],
        probation["failures"],
    )

    # A restart reads the same desired release: it is refused from the store's memory, not downloaded again.
    downloads = len(releases.files["/models/iris/2/model.onnx"].requests)
    patches_before = len(edge.hub.reported_patches)
    edge.module.stop()
    edge.module.start(timeout=60)
    _wait(
        lambda: any(
            p.get("models", {}).get("iris", {}).get("state") == "failed"
            for p in edge.hub.reported_patches[patches_before:]
        ),
        60,
        "the restarted module to report the rejected release",
    )
    again = edge.hub.reported["models"]["iris"]
    assert again["activeVersion"] == "1" and again["error"].startswith("rolled back after activation: ")
    assert len(releases.files["/models/iris/2/model.onnx"].requests) == downloads
    assert edge.infer_version("iris", iris_rows()[:1]) == "1"

    # A new release (a good version 3) is applied as usual.
    v3 = releases.release("iris", "3", iris_classifier("3", n_estimators=12).onnx)
    edge.hub.patch_desired({"models": {"iris": v3}})
    edge.hub.wait_model_state("iris", "active", activeVersion="3", timeout=120)
