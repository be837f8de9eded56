"""A hot swap under gRPC load: every request succeeds, on the old version or the new one, never in between."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton

from tests.support.inprocess import ADMIN_TOKEN
from tests.support.models import iris_classifier
from tests.support.server import ModuleProcess, free_port

pytestmark = pytest.mark.slow
CLIENTS = 4
MAX_REQUESTS = 20_000  # per client: the loop is bounded whatever happens to the swap
AFTER_SWAP = 200  # requests each client still sends once the new version has answered


def _load(module: ModuleProcess, version: str, onnx: bytes) -> None:
    body = {"parameters": {f"file:{version}/model.onnx": base64.b64encode(onnx).decode()}}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = httpx.post(f"{module.url}/v2/repository/models/iris/load", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text


def test_a_hot_swap_under_grpc_load_fails_no_request(tmp_path: Path) -> None:
    old, new = iris_classifier("1", 10), iris_classifier("2", 40)
    x = old.x_test[:16]
    expected = {"1": old.estimator.predict(x).tolist(), "2": new.estimator.predict(x).tolist()}
    assert (
        expected["1"] != expected["2"]
        or old.estimator.predict_proba(x).tolist() != new.estimator.predict_proba(x).tolist()
    )
    grpc_port = free_port()
    env = {"EDGE_ADMIN_TOKEN": ADMIN_TOKEN, "EDGE_GRPC_PORT": str(grpc_port)}
    with ModuleProcess(tmp_path / "store", env=env) as module:
        _load(module, "1", old.onnx)
        swapped = threading.Event()
        failures: list[str] = []
        wrong: list[str] = []
        seen: dict[str, int] = {"1": 0, "2": 0}
        lock = threading.Lock()

        def client_loop() -> None:
            client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            remaining = AFTER_SWAP
            deadline = time.monotonic() + 120
            try:
                for _ in range(MAX_REQUESTS):
                    if time.monotonic() > deadline:
                        failures.append("deadline passed before the swap finished")
                        return
                    try:
                        result = client.infer("iris", [tensor])
                    except Exception as exc:  # any failure is what the test counts
                        failures.append(repr(exc))
                        continue
                    version = result.get_response().model_version
                    labels = result.as_numpy("label").tolist()
                    with lock:
                        seen[version] = seen.get(version, 0) + 1
                        if labels != expected.get(version):
                            wrong.append(f"version {version} answered {labels}")
                    if swapped.is_set():
                        remaining -= 1
                        if remaining == 0:
                            return
            finally:
                client.close()

        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while seen["1"] < 50 and time.monotonic() < deadline:  # the load is on before the swap
            time.sleep(0.01)
        _load(module, "2", new.onnx)
        swapped.set()
        for thread in threads:
            thread.join(180)
        assert not any(thread.is_alive() for thread in threads)
    assert failures == [] and wrong == []
    assert seen["1"] >= 50 and seen["2"] >= CLIENTS * AFTER_SWAP // 2, seen
