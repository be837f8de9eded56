"""IoT Hub played by a real MQTT broker, for end-to-end tests with the real ``azure-iot-device`` SDK.

Three parts, each usable alone:

- ``MosquittoBroker``: Debian's mosquitto with a throw-away CA. TLS on 127.0.0.1:8883 (the SDK hard-codes
  8883) for the module, and a plain listener on a free port for the test-side hub. Persistence is on,
  so ``restart()`` keeps sessions and subscriptions like a real hub. A file lock serialises port 8883
  between concurrent test sessions on one machine.
- ``WorkloadAPI``: the IoT Edge workload API the SDK's ``create_from_edge_environment`` calls
  (trust bundle, HMAC signing), on ``http://127.0.0.1:PORT/``.
- ``EmulatedHub``: a paho-mqtt client that keeps one module twin and answers the module's twin GETs
  and reported patches, publishes desired patches, delivers input messages, invokes direct methods and
  collects output messages. Its API is synchronous and thread-safe; waits take a condition and a timeout.

Typical use (see tests/twin/conftest.py)::

    with MosquittoBroker(tmp_path / "broker") as broker, WorkloadAPI(broker.ca_pem) as workload:
        with EmulatedHub(broker, desired={"models": {...}}) as hub:
            env = workload.module_env(hub.device_id, hub.module_id)   # IOTEDGE_* for the module
            ...  # start ``python -m edge_module`` with env
            hub.wait_reported(lambda r: r.get("models", {}).get("iris", {}).get("state") == "active")
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import fcntl
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.server import free_port
from tests.support.system import require_binary

SDK_PORT = 8883  # hard-coded in azure-iot-device's MQTT transport
GATEWAY_HOSTNAME = "localhost"
_PORT_LOCK = Path("/tmp/edge-module-tests-mqtt-8883.lock")


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path  # the device CA's key: the workload API stand-in signs module server certificates with it

    @property
    def ca_pem(self) -> str:
        return self.ca_cert.read_text()


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a certificate for ``localhost``/127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-module test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GATEWAY_HOSTNAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(GATEWAY_HOSTNAME), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "ca.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    files.ca_key.write_bytes(ca_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files.server_key.chmod(0o644)  # mosquitto may drop privileges before reading it
    return files


def _wait_port(port: int, timeout: float, open_: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            is_open = sock.connect_ex(("127.0.0.1", port)) == 0
        if is_open == open_:
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still {'closed' if open_ else 'open'} after {timeout}s")


# -- broker -------------------------------------------------------------------------------------


class MosquittoBroker:
    """A real mosquitto: TLS on 127.0.0.1:8883 for the SDK, plain on ``plain_port`` for the test hub."""

    def __init__(self, directory: Path, lock_timeout: float = 600.0) -> None:
        self.binary = require_binary("mosquitto")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_files(directory / "tls")
        self.plain_port = free_port()
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.lock_timeout = lock_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_handle: Any = None
        (directory / "data").mkdir(exist_ok=True)
        self.config_path.write_text(self._config())

    @property
    def ca_pem(self) -> str:
        return self.tls.ca_pem

    def _config(self) -> str:
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory / 'data'}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 10000",
            f"listener {SDK_PORT} 127.0.0.1",
            f"cafile {self.tls.ca_cert}",
            f"certfile {self.tls.server_cert}",
            f"keyfile {self.tls.server_key}",
            f"listener {self.plain_port} 127.0.0.1",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        return "\n".join(lines) + "\n"

    def _acquire_port(self) -> None:
        self._lock_handle = _PORT_LOCK.open("a")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"port {SDK_PORT} stayed taken by another test session") from None
                time.sleep(0.2)

    def start(self) -> MosquittoBroker:
        if self._lock_handle is None:
            self._acquire_port()
        if self._process is not None:
            return self
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", SDK_PORT)) == 0:
                raise RuntimeError(f"port {SDK_PORT} is taken by a process outside the tests (a mosquitto service?)")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_port(SDK_PORT, 15.0)
            _wait_port(self.plain_port, 15.0)
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"mosquitto did not start: {self.logs()}") from None
        return self

    def stop(self) -> None:
        """Stop the broker (it saves its persistence file first). The port stays reserved for a restart."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        _wait_port(SDK_PORT, 10.0, open_=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None

    def close(self) -> None:
        self.stop()
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- workload API ---------------------------------------------------------------------------------


class WorkloadAPI:
    """The IoT Edge workload API, as far as ``create_from_edge_environment`` and ``EDGE_TLS=workload`` use it.

    Shapes from the API's specification (Azure/iotedge ``edgelet/api/workloadVersion_2019_01_30.yaml``):
    ``POST /modules/{name}/genid/{genid}/sign``; ``GET /trust-bundle`` → ``{"certificate"}``; and, with ``signer``
    (the device CA's files), ``POST /modules/{name}/genid/{genid}/certificate/server`` with ``{commonName,
    expiration}`` → 201 ``{privateKey: {type: "key", bytes}, certificate, expiration}``, the chain being the
    server certificate then the CA. Like IoT Edge, it refuses (``{"message"}`` bodies): a module or generation
    id other than the module's (404), a missing or over-64-character common name or an unparsable or past
    expiration (400); it caps the lifetime at ``max_lifetime`` (IoT Edge's ``srv_cert_max_duration``, 90 days by
    default) and puts the common name in the certificate's DNS SAN. ``failing`` makes every certificate request
    answer 500 (an outage). ``socket_path`` serves on a unix socket (IoT Edge's ``unix://`` default) instead.
    """

    def __init__(
        self,
        ca_pem: str,
        module_key: bytes = b"edge-module-test-key",
        signer: TlsFiles | None = None,
        socket_path: Path | None = None,
        max_lifetime: datetime.timedelta = datetime.timedelta(days=90),
    ) -> None:
        self.ca_pem = ca_pem
        self.module_key = module_key
        self.sign_requests = 0
        self.signer = signer
        self.max_lifetime = max_lifetime
        self.issued: list[int] = []  # serial numbers of the server certificates issued
        self.failing = False
        self.module: tuple[str, str] | None = None  # (module id, generation id), set by module_env
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path == "/trust-bundle":
                    self._reply(200, {"certificate": api.ca_pem})
                else:
                    self._reply(404, {"message": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                path = urllib.parse.urlsplit(self.path).path
                if path.endswith("/certificate/server") and api.signer is not None:
                    status, body = api.server_certificate(path, request)
                    self._reply(status, body)
                    return
                if not path.endswith("/sign"):
                    self._reply(404, {"message": "not found"})
                    return
                data = base64.b64decode(request["data"])
                digest = hmac.new(api.module_key, data, hashlib.sha256).digest()
                api.sign_requests += 1
                self._reply(200, {"digest": base64.b64encode(digest).decode()})

        if socket_path is not None:
            self._server: socketserver.BaseServer = _UnixHTTPServer(str(socket_path), Handler)
            self.url = f"unix://{socket_path}"
        else:
            tcp = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            tcp.daemon_threads = True
            self._server = tcp
            self.url = f"http://127.0.0.1:{tcp.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="workload-api", daemon=True)

    def server_certificate(self, path: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        assert self.signer is not None
        parts = path.strip("/").split("/")  # modules/{name}/genid/{genid}/certificate/server
        if self.module is not None and (len(parts) != 6 or (parts[1], parts[3]) != self.module):
            return 404, {"message": f"Module not found: {'/'.join(parts[1:4])}"}
        if self.failing:
            return 500, {"message": "Could not create server certificate: the certificate service is unavailable"}
        common_name = request.get("commonName")
        if not isinstance(common_name, str) or not 0 < len(common_name) <= 64:
            return 400, {"message": "Invalid commonName: 1 to 64 characters required"}
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            expiration = datetime.datetime.fromisoformat(str(request.get("expiration")).replace("Z", "+00:00"))
        except ValueError:
            return 400, {"message": "Invalid expiration: an ISO 8601 date-time is required"}
        if expiration.tzinfo is None or expiration <= now:
            return 400, {"message": "Invalid expiration: it must be a future UTC date-time"}
        not_after = min(expiration, now + self.max_lifetime)
        ca_cert = x509.load_pem_x509_certificate(self.signer.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.signer.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(seconds=1))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        self.issued.append(serial)
        chain = certificate.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return 201, {
            "privateKey": {"type": "key", "bytes": key_pem.decode()},
            "certificate": chain.decode(),
            "expiration": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def module_env(
        self, device_id: str, module_id: str, hub_hostname: str = "test-hub.azure-devices.net"
    ) -> dict[str, str]:
        """The ``IOTEDGE_*`` variables IoT Edge gives a module."""
        self.module = (module_id, "test-generation")
        return {
            "IOTEDGE_IOTHUBHOSTNAME": hub_hostname,
            "IOTEDGE_DEVICEID": device_id,
            "IOTEDGE_MODULEID": module_id,
            "IOTEDGE_GATEWAYHOSTNAME": GATEWAY_HOSTNAME,
            "IOTEDGE_MODULEGENERATIONID": "test-generation",
            "IOTEDGE_WORKLOADURI": self.url,
            "IOTEDGE_APIVERSION": "2019-01-30",
        }

    def start(self) -> WorkloadAPI:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WorkloadAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("unix", 0)  # BaseHTTPRequestHandler formats a (host, port) client address


def dev_mode_env(device_id: str, module_id: str, ca_file: Path, key: bytes = b"edge-module-test-key") -> dict[str, str]:
    """IoT Edge dev mode's variables (what VS Code's simulator sets) instead of the workload API."""
    connection = (
        f"HostName=test-hub.azure-devices.net;GatewayHostName={GATEWAY_HOSTNAME};DeviceId={device_id};"
        f"ModuleId={module_id};SharedAccessKey={base64.b64encode(key).decode()}"
    )
    return {"EdgeHubConnectionString": connection, "EdgeModuleCACertificateFile": str(ca_file)}


# -- the hub ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputMessage:
    output: str
    body: bytes
    properties: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Twin:
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported_version: int = 1


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """IoT Hub's twin patch semantics: objects merge, null deletes, anything else replaces."""
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = _without_nulls(copy.deepcopy(value))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _query(topic: str) -> dict[str, str]:
    _, _, query = topic.partition("?")
    return {k: v for k, _, v in (part.partition("=") for part in query.split("&") if part)}


class EmulatedHub:
    """One module twin and its message routes, served over the broker's plain listener."""

    def __init__(
        self,
        broker: MosquittoBroker,
        device_id: str = "edge-device",
        module_id: str = "edge-inference",
        desired: dict[str, Any] | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.broker = broker
        self.device_id = device_id
        self.module_id = module_id
        self._twin = _Twin(desired=copy.deepcopy(desired or {}))
        self._cond = threading.Condition()
        self._outputs: list[OutputMessage] = []
        self._method_responses: dict[str, tuple[int, Any]] = {}
        self.twin_gets = 0
        self.reported_patches: list[dict[str, Any]] = []
        self._rids = itertools.count(1)
        self._connected = False
        self._client = mqtt.Client(client_id=f"emulated-hub-{os.getpid()}-{id(self)}", clean_session=False)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 1)

    @property
    def _base(self) -> str:
        return f"devices/{self.device_id}/modules/{self.module_id}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> EmulatedHub:
        self._client.connect_async("127.0.0.1", self.broker.plain_port, keepalive=5)
        self._client.loop_start()
        self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout: float = 30.0) -> None:
        self._wait(lambda: self._connected, timeout, "hub connected to the broker")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> EmulatedHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            return
        for topic in (
            "$iothub/twin/GET/#",
            "$iothub/twin/PATCH/properties/reported/#",
            "$iothub/methods/res/#",
            f"{self._base}/messages/events/#",
        ):
            client.subscribe(topic, qos=1)
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    # -- what the module publishes -------------------------------------------------------------

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        topic: str = msg.topic
        if topic.startswith("$iothub/twin/GET/"):
            self._answer_get(_query(topic)["$rid"])
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            self._answer_reported(_query(topic)["$rid"], msg.payload)
        elif topic.startswith("$iothub/methods/res/"):
            status = int(topic.split("/")[3])
            payload = json.loads(msg.payload) if msg.payload else None
            with self._cond:
                self._method_responses[_query(topic)["$rid"]] = (status, payload)
                self._cond.notify_all()
        elif topic.startswith(f"{self._base}/messages/events/"):
            raw = topic[len(f"{self._base}/messages/events/") :]
            props = {
                urllib.parse.unquote(k): urllib.parse.unquote(v)
                for k, _, v in (p.partition("=") for p in raw.split("&") if p)
            }
            with self._cond:
                self._outputs.append(OutputMessage(props.get("$.on", ""), msg.payload, props))
                self._cond.notify_all()

    def _answer_get(self, rid: str) -> None:
        with self._cond:
            self.twin_gets += 1
            twin = {
                "desired": {**copy.deepcopy(self._twin.desired), "$version": self._twin.desired_version},
                "reported": {**copy.deepcopy(self._twin.reported), "$version": self._twin.reported_version},
            }
        self._client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(twin), qos=1)

    def _answer_reported(self, rid: str, payload: bytes) -> None:
        patch = json.loads(payload)
        with self._cond:
            merge_patch(self._twin.reported, patch)
            self._twin.reported_version += 1
            version = self._twin.reported_version
            self.reported_patches.append(patch)
            self._cond.notify_all()
        self._client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=1)

    # -- what tests do -----------------------------------------------------------------------

    @property
    def desired(self) -> dict[str, Any]:
        with self._cond:
            return {**copy.deepcopy(self._twin.desired), "$version": self._twin.desired_version}

    @property
    def reported(self) -> dict[str, Any]:
        with self._cond:
            return copy.deepcopy(self._twin.reported)

    def patch_desired(self, patch: dict[str, Any], publish: bool = True) -> int:
        """Apply a desired patch and (unless ``publish`` is False: a patch the module misses) send it."""
        with self._cond:
            merge_patch(self._twin.desired, patch)
            self._twin.desired_version += 1
            version = self._twin.desired_version
        if publish:
            body = json.dumps({**patch, "$version": version})
            self._client.publish(f"$iothub/twin/PATCH/properties/desired/?$version={version}", body, qos=1)
        return version

    def send_input(
        self,
        body: bytes | str | Any,
        input_name: str = "input1",
        properties: dict[str, str] | None = None,
        message_id: str | None = None,
    ) -> None:
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        props: list[tuple[str, str]] = []
        if message_id is not None:
            props.append(("$.mid", message_id))
        props.extend((properties or {}).items())
        encoded = urllib.parse.urlencode(props, quote_via=urllib.parse.quote)
        topic = f"{self._base}/inputs/{urllib.parse.quote(input_name, safe='')}/{encoded}"
        self._client.publish(topic, body, qos=1)

    def invoke_method(self, name: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        rid = f"m{next(self._rids)}"
        body = json.dumps(payload) if payload is not None else "null"
        self._client.publish(f"$iothub/methods/POST/{name}/?$rid={rid}", body, qos=1)
        self._wait(lambda: rid in self._method_responses, timeout, f"response to method {name}")
        with self._cond:
            return self._method_responses.pop(rid)

    def outputs(self, output: str | None = None) -> list[OutputMessage]:
        with self._cond:
            return [m for m in self._outputs if output is None or m.output == output]

    def wait_output(
        self, output: str, predicate: Callable[[OutputMessage], bool] = lambda m: True, timeout: float = 30.0
    ) -> OutputMessage:
        found: list[OutputMessage] = []

        def check() -> bool:
            found[:] = [m for m in self._outputs if m.output == output and predicate(m)]
            return bool(found)

        self._wait(check, timeout, f"a message on output {output}")
        return found[0]

    def wait_reported(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0, what: str = "reported properties"
    ) -> dict[str, Any]:
        self._wait(lambda: predicate(self._twin.reported), timeout, what)
        return self.reported

    def wait_model_state(self, name: str, state: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """Wait until reported ``models.<name>`` has ``state`` (and the given fields); return that block."""

        def check(reported: dict[str, Any]) -> bool:
            block = reported.get("models", {}).get(name) or {}
            return bool(block.get("state") == state and all(block.get(k) == v for k, v in fields.items()))

        reported = self.wait_reported(check, timeout, f"models.{name}.state == {state} with {fields}")
        block: dict[str, Any] = reported["models"][name]
        return block

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; reported={self._twin.reported}")
                self._cond.wait(min(remaining, 0.5))


@contextlib.contextmanager
def iot_edge(
    directory: Path, desired: dict[str, Any] | None = None
) -> Iterator[tuple[MosquittoBroker, EmulatedHub, dict[str, str]]]:
    """Broker, workload API and hub together; yields them with the module's ``IOTEDGE_*`` environment."""
    with (
        MosquittoBroker(directory) as broker,
        WorkloadAPI(broker.ca_pem) as workload,
        EmulatedHub(broker, desired=desired) as hub,
    ):
        yield broker, hub, workload.module_env(hub.device_id, hub.module_id)
