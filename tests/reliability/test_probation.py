"""Post-swap probation in the real module (in-process app, real onnxruntime, real models on iris's rows).

A version that fails on a share of live inputs, and one much slower than its predecessor, are both swapped
back automatically; a good version passes; client errors never count against a version.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_module.module import EdgeModule
from edge_module.store import ModelStore
from tests.support.inprocess import ADMIN_TOKEN, running_module
from tests.support.misbehaving_models import failing_on_long_sepals, failing_rows, iris_rows, slow_iris
from tests.support.models import iris_classifier

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBATION: dict[str, Any] = {
    "probation_requests": 300,
    "probation_seconds": 120,
    "probation_min_requests": 50,
    "probation_max_failure_rate": 0.05,
}
log = logging.getLogger(__name__)
BOUND = 2000  # requests any one phase may send at most


def _load_body(onnx_bytes: bytes, version: str) -> dict[str, Any]:
    return {"parameters": {f"file:{version}/model.onnx": base64.b64encode(onnx_bytes).decode()}}


async def _load(client: httpx.AsyncClient, onnx_bytes: bytes, version: str) -> None:
    response = await client.post("/v2/repository/models/iris/load", json=_load_body(onnx_bytes, version), headers=ADMIN)
    assert response.status_code == 200, response.text


def _request(row: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}


class Traffic:
    """Live requests, one iris row each, cycling through all 150 rows; remembers what each got."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.rows = itertools.cycle(enumerate(iris_rows()))
        self.results: list[tuple[int, int, str | None]] = []  # (row index, status, model version)

    async def send(self) -> tuple[int, int, str | None]:
        index, row = next(self.rows)
        await asyncio.sleep(0)  # the in-process transport never suspends; a network client would
        response = await self.client.post("/v2/models/iris/infer", json=_request(row))
        version = response.json().get("model_version") if response.status_code == 200 else None
        result = (index, response.status_code, version)
        self.results.append(result)
        return result

    async def until(self, done: Any, bound: int = BOUND) -> None:
        for _ in range(bound):
            if done():
                return
            await self.send()
        raise AssertionError(f"condition not met within {bound} requests")


def _active(module: EdgeModule) -> str:
    served = module.repository.served("iris")
    assert served is not None
    return served.active.version


async def _serve_v1_with_baseline(module: EdgeModule, client: httpx.AsyncClient) -> Traffic:
    await _load(client, iris_classifier("1").onnx, "1")
    traffic = Traffic(client)
    for _ in range(150):
        await traffic.send()
    assert {status for _, status, _ in traffic.results} == {200}
    assert "iris" not in module.manager.guard.latest, "the first version has nothing to roll back to"
    return traffic


async def test_a_version_failing_on_live_inputs_is_rolled_back(model_dir: Path) -> None:
    # Only the failure rate may decide here: on a loaded machine a latency spike could come first.
    async with running_module(model_dir, **{**PROBATION, "probation_max_latency_ratio": 1e6}) as (module, client):
        traffic = await _serve_v1_with_baseline(module, client)
        await _load(client, failing_on_long_sepals("2"), "2")
        started = time.monotonic()
        probation = module.manager.guard.latest["iris"]
        assert (probation.version, probation.previous_version, probation.state) == ("2", "1", "running")
        assert probation.baseline_p99_ns is not None

        start = len(traffic.results)
        bad_shape = 0
        for _ in range(BOUND):
            if _active(module) == "1" and probation.state == "rolledBack":
                break
            await traffic.send()
            if len(traffic.results) % 10 == 0:  # a client mistake now and then: never the version's fault
                wrong = await client.post("/v2/models/iris/infer", json={"inputs": [{"name": "input"}]})
                assert wrong.status_code == 400
                bad_shape += 1
        assert _active(module) == "1" and probation.state == "rolledBack"
        log.info(
            "probation (failures): rolled back after %d requests, %.2f s; %s",
            len(traffic.results) - start,
            time.monotonic() - started,
            probation.reason,
        )
        after_swap = [await traffic.send() for _ in range(150)]

        during = traffic.results[start:]
        failed = [(index, status) for index, status, _ in during if status != 200]
        long_sepals = failing_rows()
        assert failed and all(status == 500 and long_sepals[index] for index, status in failed)
        # Every failure clients saw is counted; none of the 400s is.
        assert probation.failures == len(failed)
        assert probation.signal == "failure_rate" and bad_shape > 0
        # The reason gives the figures at the verdict; requests answered until the swap are counted on top.
        assert probation.reason is not None and probation.reason.startswith("failure rate: ")
        assert all(status == 200 and version == "1" for _, status, version in after_swap)
        answered_by = {version for _, status, version in during if status == 200}
        assert answered_by <= {"1", "2"}

        # Version 2 is unloaded and remembered as rejected, on disk.
        gone = await client.get("/v2/models/iris/versions/2")
        assert gone.status_code == 404
        sha256 = module.store.get("iris").find("1").sha256  # type: ignore[union-attr]
        assert sha256
        record = ModelStore(model_dir).get("iris")
        assert record is not None and record.active.version == "1" and record.find("2") is None
        reason = module.manager.rejection("iris", "2", record.rejected[-1].sha256)
        assert reason is not None and reason.startswith("rolled back after activation: failure rate")

        metrics = (await client.get("/metrics")).text
        assert 'edge_model_probation_rollbacks_total{model="iris",signal="failure_rate"} 1' in metrics
        assert f'edge_model_probation_failures{{model="iris",version="2"}} {len(failed)}' in metrics
        status = (await client.get("/status.json")).json()
        block = next(m for m in status["models"] if m["name"] == "iris")["probation"]
        assert block["state"] == "rolledBack" and block["failures"] == len(failed) and block["version"] == "2"


async def test_a_version_much_slower_than_its_predecessor_is_rolled_back(model_dir: Path) -> None:
    async with running_module(model_dir, **PROBATION) as (module, client):
        traffic = await _serve_v1_with_baseline(module, client)
        await _load(client, slow_iris("2"), "2")
        probation = module.manager.guard.latest["iris"]
        start, started = len(traffic.results), time.monotonic()
        await traffic.until(lambda: probation.state == "rolledBack" and _active(module) == "1", bound=400)
        log.info(
            "probation (latency): rolled back after %d requests, %.2f s; %s",
            len(traffic.results) - start,
            time.monotonic() - started,
            probation.reason,
        )

        assert probation.signal == "latency", probation.reason
        assert probation.failures == 0
        assert all(status == 200 for _, status, _ in traffic.results[start:])
        assert probation.requests >= PROBATION["probation_min_requests"]
        p99, baseline = probation.window.p99_ns(), probation.baseline_p99_ns
        assert p99 is not None and baseline is not None and p99 > 3 * baseline
        metrics = (await client.get("/metrics")).text
        assert 'edge_model_probation_rollbacks_total{model="iris",signal="latency"} 1' in metrics


async def test_a_good_version_passes_probation_and_keeps_serving(model_dir: Path) -> None:
    async with running_module(model_dir, **PROBATION) as (module, client):
        traffic = await _serve_v1_with_baseline(module, client)
        await _load(client, iris_classifier("2", n_estimators=12).onnx, "2")
        probation = module.manager.guard.latest["iris"]
        await traffic.until(lambda: probation.state != "running", bound=PROBATION["probation_requests"] + 10)

        assert probation.state == "passed" and probation.failures == 0
        assert probation.requests == PROBATION["probation_requests"]
        assert _active(module) == "2"
        metrics = (await client.get("/metrics")).text
        assert 'edge_model_probation{model="iris",version="2"} 0' in metrics
        assert "edge_model_probation_rollbacks_total{" not in metrics


async def test_probation_ends_by_time_on_a_quiet_model(model_dir: Path) -> None:
    settings = {**PROBATION, "probation_requests": 0, "probation_seconds": 0.5}
    async with running_module(model_dir, **settings) as (module, client):
        await _serve_v1_with_baseline(module, client)
        await _load(client, iris_classifier("2", n_estimators=12).onnx, "2")
        probation = module.manager.guard.latest["iris"]
        assert probation.state == "running"
        for _ in range(200):  # the timer fires on the event loop; status reads give it turns
            if probation.state != "running":
                break
            await client.get("/v2/health/live")
            await asyncio.sleep(0.05)
        assert probation.state == "passed" and probation.requests == 0


async def test_probation_off_leaves_a_failing_version_in_place(model_dir: Path) -> None:
    async with running_module(model_dir, probation_requests=0, probation_seconds=0) as (module, client):
        traffic = await _serve_v1_with_baseline(module, client)
        await _load(client, failing_on_long_sepals("2"), "2")
        for _ in range(150):
            await traffic.send()
        assert _active(module) == "2" and not module.manager.guard.latest


@pytest.mark.parametrize("reopen", [False, True])
def test_the_store_remembers_a_rejected_release(tmp_path: Path, reopen: bool) -> None:
    store = ModelStore(tmp_path)
    store.open()
    one, two = store.put_bytes(b"one"), store.put_bytes(b"two")
    store.activate("m", "1", one)
    store.activate("m", "2", two)
    record = store.reject("m", "2", "rolled back after activation: latency")
    assert record.active.version == "1" and record.previous is None and record.find("2") is None
    if reopen:
        store = ModelStore(tmp_path)
        store.open()
    stored = store.get("m")
    assert stored is not None
    rejection = stored.rejection("2", two)
    assert rejection is not None and rejection.reason == "rolled back after activation: latency"
    assert stored.rejection("2", one) is None, "a different release of the same version is not rejected"
    # Activating it again by hand takes it off the list.
    store.activate("m", "2", store.put_bytes(b"two"))
    again = store.get("m")
    assert again is not None and again.rejection("2", two) is None
