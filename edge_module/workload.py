"""A client of the IoT Edge workload API's certificate endpoints (server certificates and the trust bundle).

IoT Edge gives each module the API's address and the module's identity in its environment:
``IOTEDGE_WORKLOADURI`` (``unix:///var/run/iotedge/workload.sock`` by default, or ``http://host:port``),
``IOTEDGE_MODULEID``, ``IOTEDGE_MODULEGENERATIONID`` and ``IOTEDGE_APIVERSION``. Requests and replies follow
the workload API's specification (Azure/iotedge, ``edgelet/api/workloadVersion_2019_01_30.yaml``):

- ``POST /modules/{name}/genid/{genid}/certificate/server?api-version=...`` with
  ``{"commonName": str, "expiration": ISO 8601}`` → 201 ``{"privateKey": {"type": "key", "bytes": PEM},
  "certificate": PEM chain (server certificate first, then the device CA chain), "expiration": ISO 8601}``;
- ``GET /trust-bundle?api-version=...`` → 200 ``{"certificate": PEM}`` (the CAs leaf devices trust);
- errors: 4xx/5xx with ``{"message": str}``.

The calls are blocking (``http.client``, a few per day); callers run them in a thread.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DEFAULT_API_VERSION = "2019-01-30"


class WorkloadError(Exception):
    """The workload API is unreachable, or refused or garbled a request."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: bytes
    key_pem: bytes
    expiration: str


@dataclass(frozen=True)
class WorkloadClient:
    uri: str
    module_id: str
    generation_id: str
    api_version: str = DEFAULT_API_VERSION
    timeout: float = 30.0

    @classmethod
    def from_environment(cls, timeout: float = 30.0) -> WorkloadClient:
        missing = [
            name
            for name in ("IOTEDGE_WORKLOADURI", "IOTEDGE_MODULEID", "IOTEDGE_MODULEGENERATIONID")
            if not os.environ.get(name)
        ]
        if missing:
            raise WorkloadError(f"EDGE_TLS=workload needs the IoT Edge environment; missing {', '.join(missing)}")
        return cls(
            uri=os.environ["IOTEDGE_WORKLOADURI"],
            module_id=os.environ["IOTEDGE_MODULEID"],
            generation_id=os.environ["IOTEDGE_MODULEGENERATIONID"],
            api_version=os.environ.get("IOTEDGE_APIVERSION") or DEFAULT_API_VERSION,
            timeout=timeout,
        )

    def server_certificate(self, common_name: str, expiration: datetime) -> IssuedCertificate:
        module = urllib.parse.quote(self.module_id, safe="")
        genid = urllib.parse.quote(self.generation_id, safe="")
        body = {"commonName": common_name, "expiration": _iso(expiration)}
        reply = self._call("POST", f"/modules/{module}/genid/{genid}/certificate/server", body, expect=(200, 201))
        try:
            key = reply["privateKey"]
            if key.get("type") != "key" or not isinstance(key.get("bytes"), str):
                raise WorkloadError(
                    f"the workload API returned a private key of type {key.get('type')!r}, not PEM bytes"
                )
            return IssuedCertificate(
                reply["certificate"].encode(), key["bytes"].encode(), str(reply.get("expiration", ""))
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise WorkloadError(f"unexpected certificate reply from the workload API: missing {exc}") from exc

    def trust_bundle(self) -> bytes:
        reply = self._call("GET", "/trust-bundle", None, expect=(200,))
        certificate = reply.get("certificate")
        if not isinstance(certificate, str) or "BEGIN CERTIFICATE" not in certificate:
            raise WorkloadError("the workload API's trust bundle holds no PEM certificate")
        return certificate.encode()

    def _connection(self) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlsplit(self.uri)
        if parsed.scheme == "unix":
            return _UnixConnection(parsed.path, self.timeout)
        if parsed.scheme == "http" and parsed.hostname:
            return http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=self.timeout)
        raise WorkloadError(f"IOTEDGE_WORKLOADURI {self.uri!r}: expected unix:///path or http://host:port")

    def _call(self, method: str, path: str, body: dict[str, Any] | None, expect: tuple[int, ...]) -> dict[str, Any]:
        query = urllib.parse.urlencode({"api-version": self.api_version})
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection = self._connection()
        try:
            connection.request(method, f"{path}?{query}", body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as exc:
            raise WorkloadError(f"workload API {self.uri} unreachable: {exc}") from exc
        finally:
            connection.close()
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise WorkloadError(f"workload API {method} {path}: {response.status}, body is not JSON") from exc
        if response.status not in expect:
            message = reply.get("message") if isinstance(reply, dict) else None
            raise WorkloadError(f"workload API {method} {path}: {response.status} {message or raw[:200]!r}")
        if not isinstance(reply, dict):
            raise WorkloadError(f"workload API {method} {path}: the reply is not a JSON object")
        return reply


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
