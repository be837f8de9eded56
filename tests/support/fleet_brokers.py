"""One real mosquitto per simulated device, each on its own loopback address, for fleet tests.

Why not one broker: the device SDK's twin topics (``$iothub/twin/GET/?$rid=N``, ``$iothub/twin/res/...``)
do not name the device. IoT Hub keeps them apart per connection; one shared mosquitto would deliver every
twin response to every module. mosquitto's per-listener ``mount_point`` separates what devices publish, but
mosquitto 2.0.11 also prefixes what they receive, which the SDK then does not recognise. The SDK hard-codes
port 8883, so each device gets its own address: device k talks TLS to ``127.0.0.(k+2):8883`` and the hub
side uses that broker's plain listener on the same address. One certificate names every address.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.iothub import SDK_PORT
from tests.support.server import free_port
from tests.support.system import require_binary

_LOCK = Path("/tmp/edge-module-tests-fleet-brokers.lock")
FIRST_HOST = 2  # 127.0.0.1 stays for the single-device broker of the other tests


def device_host(index: int) -> str:
    return f"127.0.0.{FIRST_HOST + index}"


def write_tls(directory: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """A throw-away CA, and one server certificate for every host address."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-module fleet test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host)) for host in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet-broker")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


class DeviceBrokers:
    """``count`` mosquitto processes; ``host(k)`` is device k's address, ``plain_port`` the hub side's port."""

    def __init__(self, directory: Path, count: int, lock_timeout: float = 600.0) -> None:
        self.binary = require_binary("mosquitto")
        self.directory = directory
        self.count = count
        self.hosts = [device_host(k) for k in range(count)]
        self.ca_path, self.cert_path, self.key_path = write_tls(directory / "tls", self.hosts)
        self.plain_port = free_port()
        self.lock_timeout = lock_timeout
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._lock: Any = None

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def _config(self, index: int) -> Path:
        host = self.hosts[index]
        folder = self.directory / f"broker-{index}"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",  # a restarted broker keeps sessions, like the hub
            f"persistence_location {folder / 'data'}/",
            "autosave_interval 5",
            f"log_dest file {folder / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            f"listener {SDK_PORT} {host}",
            f"cafile {self.ca_path}",
            f"certfile {self.cert_path}",
            f"keyfile {self.key_path}",
            f"listener {self.plain_port} {host}",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        path = folder / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> DeviceBrokers:
        self._lock = _LOCK.open("a")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another test session holds the fleet brokers' addresses") from None
                time.sleep(0.2)
        for index in range(self.count):
            self.start_one(index)
        for index in range(self.count):
            self._wait(index, open_=True)
        return self

    def start_one(self, index: int, wait: bool = False) -> None:
        if self._processes[index] is None:
            self._processes[index] = subprocess.Popen(
                [self.binary, "-c", str(self._config(index))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        if wait:
            self._wait(index, open_=True)

    def stop_one(self, index: int) -> None:
        process = self._processes[index]
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._processes[index] = None
        self._wait(index, open_=False)

    def _wait(self, index: int, open_: bool, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if (sock.connect_ex((self.hosts[index], self.plain_port)) == 0) == open_:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"broker {index} on {self.hosts[index]} did not {'open' if open_ else 'close'}")

    def close(self) -> None:
        for index in range(self.count):
            self.stop_one(index)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> DeviceBrokers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
