from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.iothub import EmulatedHub, MosquittoBroker, WorkloadAPI, dev_mode_env
from tests.support.server import ModuleProcess
from tests.twin.release_server import ReleaseServer

# Short intervals so the end-to-end tests converge fast; production defaults are in settings.py.
FAST_SETTINGS = {
    "EDGE_ALLOW_INSECURE_URIS": "true",
    "EDGE_RECONNECT_INTERVAL": "1",
    "EDGE_CONNECT_BACKOFF_MAX": "2",
    "EDGE_HUB_CALL_TIMEOUT": "10",
    "EDGE_DOWNLOAD_TIMEOUT": "10",
    "EDGE_DOWNLOAD_ATTEMPTS": "5",
    "EDGE_DOWNLOAD_BACKOFF": "0.3",
    "EDGE_UPDATE_RETRY_INTERVAL": "3",
    "EDGE_SERVE_DEFAULT_MODEL": "false",
    "EDGE_LOG_LEVEL": "INFO",
}


@pytest.fixture
def releases() -> Iterator[ReleaseServer]:
    server = ReleaseServer().start()
    yield server
    server.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "broker")
    yield broker
    broker.close()


@pytest.fixture
def workload(broker: MosquittoBroker) -> Iterator[WorkloadAPI]:
    with WorkloadAPI(broker.ca_pem) as api:
        yield api


@dataclass
class Edge:
    broker: MosquittoBroker
    hub: EmulatedHub
    module: ModuleProcess

    def infer_version(self, name: str, rows: Any) -> str:
        response = httpx.post(f"{self.module.url}/v2/models/{name}/infer", json=v2_request(rows), timeout=10)
        assert response.status_code == 200, response.text
        version: str = response.json()["model_version"]
        return version


def v2_request(rows: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}


EdgeFactory = Callable[..., Edge]


@pytest.fixture
def start_edge(
    tmp_path: Path, model_dir: Path, broker: MosquittoBroker, workload: WorkloadAPI
) -> Iterator[EdgeFactory]:
    """Start broker (unless ``broker_up=False``), hub and the real module process with the IoT Edge env."""
    started: list[tuple[EmulatedHub | None, ModuleProcess]] = []

    def start(
        desired: dict[str, Any] | None = None,
        broker_up: bool = True,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        dev_mode: bool = False,
    ) -> Edge:
        hub = EmulatedHub(broker, desired=desired)
        if dev_mode:
            ca_file = tmp_path / "edgehub-ca.pem"
            ca_file.write_text(broker.ca_pem)
            connection_env = dev_mode_env(hub.device_id, hub.module_id, ca_file)
        else:
            connection_env = workload.module_env(hub.device_id, hub.module_id)
        module_env = {**FAST_SETTINGS, **connection_env, **(env or {})}
        module = ModuleProcess(model_dir, env=module_env)
        if broker_up:
            broker.start()
            hub.start()
        started.append((hub, module))
        module.start(wait_ready=wait_ready, timeout=60)
        return Edge(broker, hub, module)

    yield start
    for hub, module in reversed(started):
        code = module.stop()
        if hub is not None:
            hub.close()
        assert code == 0, f"module did not stop cleanly on SIGTERM (exit {code}): {module.logs()[-4000:]}"
