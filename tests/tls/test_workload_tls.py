"""HTTPS from the IoT Edge workload API: the real module process with ``EDGE_TLS=workload``, the workload API
stand-in issuing server certificates signed by the device CA (the CA that also signs the broker's, as on a real
gateway), real clients verifying the chain against that CA, and renewal under load."""

from __future__ import annotations

import datetime
import logging
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography import x509

from edge_module.workload import WorkloadClient, WorkloadError
from tests.support.iothub import GATEWAY_HOSTNAME, EmulatedHub, MosquittoBroker, WorkloadAPI
from tests.support.models import iris_classifier
from tests.support.server import ModuleProcess
from tests.twin.conftest import FAST_SETTINGS

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
IRIS = iris_classifier()
ROWS = IRIS.x_test[:2]
REQUEST = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(ROWS.shape), "data": ROWS.ravel().tolist()}]}


@dataclass
class Gateway:
    broker: MosquittoBroker
    workload: WorkloadAPI
    module: ModuleProcess
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
def gateway(tmp_path: Path, model_dir: Path) -> Iterator[Any]:
    started: list[tuple[MosquittoBroker, WorkloadAPI, EmulatedHub, ModuleProcess]] = []

    def start(env: dict[str, str] | None = None, unix_socket: bool = False) -> Gateway:
        broker = MosquittoBroker(tmp_path / "broker")
        socket_path = tmp_path / "workload.sock" if unix_socket else None
        workload = WorkloadAPI(broker.ca_pem, signer=broker.tls, socket_path=socket_path).start()
        hub = EmulatedHub(broker)
        broker.start()
        hub.start()
        (model_dir / "seed").mkdir(parents=True, exist_ok=True)
        model_file = model_dir / "seed" / "iris.onnx"
        model_file.write_bytes(IRIS.onnx)
        module_env = {
            **FAST_SETTINGS,
            **workload.module_env(hub.device_id, hub.module_id),
            "EDGE_TLS": "workload",
            **(env or {}),
        }
        module = ModuleProcess(
            model_dir,
            env=module_env,
            args=["--model", f"iris={model_file}"],
            ca_file=broker.tls.ca_cert,
            url_host=GATEWAY_HOSTNAME,
        )
        started.append((broker, workload, hub, module))
        module.start(timeout=60)
        return Gateway(broker, workload, module, broker.tls.ca_cert)

    yield start
    for broker, workload, hub, module in reversed(started):
        code = module.stop()
        hub.close()
        workload.close()
        broker.close()
        assert code == 0, module.logs()[-3000:]


def _peer_serial(response: httpx.Response) -> int:
    stream = response.extensions["network_stream"]
    der = stream.get_extra_info("ssl_object").getpeercert(True)
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_the_module_serves_https_with_a_certificate_from_the_workload_api(gateway: Any) -> None:
    edge: Gateway = gateway()
    url = edge.module.url
    with httpx.Client(verify=edge.client_context()) as client:
        response = client.post(f"{url}/v2/models/iris/infer", json=REQUEST)
        assert response.status_code == 200
        labels = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
        assert labels == IRIS.estimator.predict(ROWS).tolist()
        assert _peer_serial(response) == edge.workload.issued[-1]
        # The status page and /metrics are behind the same TLS.
        assert client.get(f"{url}/metrics").status_code == 200
        assert client.get(f"{url}/").status_code == 200
        bundle = client.get(f"{url}/trust-bundle.pem")
        assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/x-pem-file"
        assert bundle.text == edge.workload.ca_pem

    # The certificate: CN and SAN are the gateway's host name; issued by the device CA.
    der = ssl.get_server_certificate(("127.0.0.1", edge.module.port))
    leaf = x509.load_pem_x509_certificate(der.encode())
    assert leaf.subject.rfc4514_string() == f"CN={GATEWAY_HOSTNAME}"
    assert leaf.issuer == x509.load_pem_x509_certificate(edge.workload.ca_pem.encode()).subject

    # The image's HEALTHCHECK command probes over HTTPS when TLS is on.
    probe_env = {"PATH": "/usr/bin:/bin", "EDGE_TLS": "workload", "EDGE_PORT": str(edge.module.port)}
    probe = [sys.executable, "-m", "edge_module.healthcheck"]
    assert subprocess.run(probe, env=probe_env, capture_output=True, timeout=30).returncode == 0
    plain = subprocess.run(probe, env={**probe_env, "EDGE_TLS": "off"}, capture_output=True, timeout=30)
    assert plain.returncode == 1

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/v2/health/live")  # the system's CAs do not know the device CA
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{edge.module.port}/v2/health/live", timeout=5)  # no plain HTTP


def test_tritonclient_verifies_the_chain_against_the_device_ca(gateway: Any) -> None:
    import tritonclient.http as triton

    edge: Gateway = gateway()
    ca_file = str(edge.ca_file)
    client = triton.InferenceServerClient(
        f"{GATEWAY_HOSTNAME}:{edge.module.port}",
        ssl=True,
        ssl_context_factory=lambda: ssl.create_default_context(cafile=ca_file),
    )
    try:
        assert client.is_server_ready()
        tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(ROWS))
        result = client.infer("iris", [tensor], outputs=[triton.InferRequestedOutput("label", binary_data=True)])
        assert result.as_numpy("label").tolist() == IRIS.estimator.predict(ROWS).tolist()
    finally:
        client.close()
    untrusting = triton.InferenceServerClient(
        f"{GATEWAY_HOSTNAME}:{edge.module.port}", ssl=True, ssl_context_factory=ssl.create_default_context
    )
    try:
        with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            untrusting.is_server_ready()
    finally:
        untrusting.close()


def test_grpc_shares_the_workload_certificate_and_its_renewals(gateway: Any) -> None:
    import grpc
    import tritonclient.grpc as triton_grpc

    from tests.support.server import free_port

    grpc_port = free_port()
    edge: Gateway = gateway(
        {"EDGE_GRPC_PORT": str(grpc_port), "EDGE_TLS_CERTIFICATE_LIFETIME_S": "6", "EDGE_TLS_RENEW_AT": "0.5"}
    )
    target = f"{GATEWAY_HOSTNAME}:{grpc_port}"
    client = triton_grpc.InferenceServerClient(target, ssl=True, root_certificates=str(edge.ca_file))
    try:
        assert client.is_server_ready()
        tensor = triton_grpc.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(ROWS))
        assert client.infer("iris", [tensor]).as_numpy("label").tolist() == IRIS.estimator.predict(ROWS).tolist()
    finally:
        client.close()

    def served_serial() -> int:
        pem = ssl.get_server_certificate(("127.0.0.1", grpc_port))
        return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)

    first = served_serial()
    assert first in edge.workload.issued
    # gRPC asks for the current certificate at each handshake: a renewed one serves new connections.
    deadline = time.monotonic() + 30
    while (now_served := served_serial()) == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now_served != first and now_served in edge.workload.issued
    # A plaintext channel never becomes ready on the TLS port.
    with grpc.insecure_channel(target) as plain, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(plain).result(timeout=3)


def test_renewal_under_load_fails_no_request(gateway: Any) -> None:
    # A 6-second certificate renewed at half its life: several renewals within the run.
    edge: Gateway = gateway({"EDGE_TLS_CERTIFICATE_LIFETIME_S": "6", "EDGE_TLS_RENEW_AT": "0.5"})
    context = edge.client_context()
    failures: list[str] = []
    serials: set[int] = set()
    requests = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def load(reconnect_every: int) -> None:
        # One client keeps its connection across renewals; the other opens a new one every few requests.
        client = httpx.Client(verify=context, timeout=10)
        sent = 0
        while not stop.is_set() and sent < 100_000:
            if reconnect_every and sent % reconnect_every == 0:
                client.close()
                client = httpx.Client(verify=context, timeout=10)
            try:
                response = client.post(f"{edge.module.url}/v2/models/iris/infer", json=REQUEST)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                serial = _peer_serial(response)
                with lock:
                    serials.add(serial)
                    requests[0] += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            sent += 1
        client.close()

    workers = [threading.Thread(target=load, args=(every,)) for every in (0, 25)]
    started = time.monotonic()
    issued_before = len(edge.workload.issued)  # start-up on a busy machine may already have seen a renewal
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(edge.workload.issued) < issued_before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a little traffic on the last certificate
    stop.set()
    for worker in workers:
        worker.join(30)
    elapsed = time.monotonic() - started

    renewals = len(edge.workload.issued) - issued_before
    assert renewals >= 3, f"only {renewals} renewals in {elapsed:.1f} s"
    assert not failures, failures[:5]
    # The certificate in place when the load began and at least the next two were all served.
    assert len(serials & set(edge.workload.issued[issued_before - 1 :])) >= 3, "new connections saw renewals"
    log.info("TLS renewal under load: %d renewals, %d requests in %.1f s, 0 failed", renewals, requests[0], elapsed)


def test_a_workload_outage_keeps_the_current_certificate_then_renews(gateway: Any) -> None:
    edge: Gateway = gateway({"EDGE_TLS_CERTIFICATE_LIFETIME_S": "20", "EDGE_TLS_RENEW_AT": "0.2"})
    context = edge.client_context()
    edge.workload.failing = True
    time.sleep(6)  # past the renewal point (4 s): renewals fail meanwhile
    with httpx.Client(verify=context) as client:
        assert client.get(f"{edge.module.url}/v2/health/ready").status_code == 200
    assert len(edge.workload.issued) == 1
    assert "TLS certificate renewal failed" in edge.module.logs()
    edge.workload.failing = False
    deadline = time.monotonic() + 30
    while len(edge.workload.issued) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(edge.workload.issued) >= 2
    # Issued is not yet installed: wait (bounded) until a new connection is served the renewed certificate.
    deadline = time.monotonic() + 30
    while True:
        with httpx.Client(verify=context) as client:
            response = client.get(f"{edge.module.url}/v2/health/ready")
            serial = _peer_serial(response)
        assert response.status_code == 200
        if serial in edge.workload.issued[1:] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert serial in edge.workload.issued[1:]


def test_a_unix_socket_workload_uri(gateway: Any) -> None:
    edge: Gateway = gateway(unix_socket=True)
    assert edge.workload.url.startswith("unix://")
    with httpx.Client(verify=edge.client_context()) as client:
        assert client.get(f"{edge.module.url}/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IOTEDGE_WORKLOADURI": "http://127.0.0.1:9/"}, "no server certificate from the IoT Edge workload API"),
        ({"IOTEDGE_WORKLOADURI": ""}, "missing IOTEDGE_WORKLOADURI"),
    ],
)
def test_without_a_certificate_the_module_exits_with_the_reason(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    full_env = {
        "PATH": "/usr/bin:/bin",
        "EDGE_MODEL_DIR": str(tmp_path / "models"),
        "EDGE_PORT": "0",
        "EDGE_TLS": "workload",
        "EDGE_TLS_STARTUP_TIMEOUT_S": "2",
        "IOTEDGE_MODULEID": "edge-inference",
        "IOTEDGE_MODULEGENERATIONID": "g",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-m", "edge_module"], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert message in result.stdout + result.stderr


def test_the_workload_client_against_the_stand_in(tmp_path: Path) -> None:
    broker_dir = tmp_path / "tls"
    from tests.support.iothub import make_tls_files

    files = make_tls_files(broker_dir)
    with WorkloadAPI(files.ca_pem, signer=files, socket_path=tmp_path / "w.sock") as api:
        api.module_env("device", "edge-inference")
        client = WorkloadClient(api.url, "edge-inference", "test-generation")
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        issued = client.server_certificate("gateway.local", expires)
        leaf = x509.load_pem_x509_certificates(issued.chain_pem)[0]
        assert leaf.subject.rfc4514_string() == "CN=gateway.local"
        assert client.trust_bundle().decode() == files.ca_pem
        with pytest.raises(WorkloadError, match="400 'Invalid commonName"):
            client.server_certificate("x" * 65, expires)
        with pytest.raises(WorkloadError, match="400 'Invalid expiration"):
            client.server_certificate("gateway.local", expires - datetime.timedelta(hours=2))
        with pytest.raises(WorkloadError, match="404 'Module not found"):
            WorkloadClient(api.url, "another-module", "test-generation").server_certificate("g", expires)
        api.failing = True
        with pytest.raises(WorkloadError, match="500"):
            client.server_certificate("gateway.local", expires)
