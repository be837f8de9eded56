"""The exposed surface on a real process: HTTPS, slow senders, connection caps."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.support.iothub import make_tls_files
from tests.support.models import WINE_ROW
from tests.support.rawhttp import read_response
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow
WINE = {
    "inputs": [
        {
            "name": "input",
            "datatype": "FP32",
            "shape": [1, 13],
            "data": WINE_ROW,
        }
    ]
}


def test_https_with_certificate_files(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    env = {"EDGE_TLS_CERT_FILE": str(tls.server_cert), "EDGE_TLS_KEY_FILE": str(tls.server_key)}
    with ModuleProcess(tmp_path / "store", env=env, ca_file=tls.ca_cert) as module:
        response = httpx.post(f"{module.url}/v2/models/wine/infer", json=WINE, verify=module.verify)
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{module.url}/v2/health/live")  # untrusted without the CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{module.port}/v2/health/live", timeout=5)  # no plain HTTP


def test_a_stalled_body_times_out_with_408_and_serving_continues(tmp_path: Path) -> None:
    with ModuleProcess(tmp_path / "store", env={"EDGE_REQUEST_TIMEOUT_S": "1"}) as module:
        with socket.create_connection(("127.0.0.1", module.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v2/models/wine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b'{"inputs": ['
            )
            started = time.monotonic()
            reply = read_response(sock, timeout=30)
            waited = time.monotonic() - started
        assert reply.status == 408, reply.raw
        assert b"not received within 1s" in reply.body
        assert waited < 20  # the 1 s body timeout, not the 30 s read deadline, ended the wait
        assert httpx.post(f"{module.url}/v2/models/wine/infer", json=WINE).status_code == 200


def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    with ModuleProcess(tmp_path / "store", env={"EDGE_MAX_CONNECTIONS": "2", "EDGE_REQUEST_TIMEOUT_S": "5"}) as module:
        idle = []
        try:
            for _ in range(2):
                sock = socket.create_connection(("127.0.0.1", module.port), timeout=10)
                sock.sendall(b"POST /v2/models/wine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
                idle.append(sock)
            # The server counts a connection once its event loop has accepted it: wait for that, bounded.
            deadline = time.monotonic() + 20
            while (status := httpx.get(f"{module.url}/v2/health/live", timeout=5).status_code) != 503:
                assert status == 200 and time.monotonic() < deadline, status
                time.sleep(0.05)
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{module.url}/v2/health/live", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_tls_settings_must_come_in_pairs(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edge_module"],
        env={"EDGE_TLS_CERT_FILE": str(tmp_path / "cert.pem"), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "EDGE_TLS_KEY_FILE" in result.stderr
    assert ssl.HAS_SNI  # the platform's ssl module supports what uvicorn needs
