"""HTTPS for the module: one live SSL context whose certificate is replaced in place when it is renewed.

``EDGE_TLS`` picks where the certificate comes from:

- ``off``: plain HTTP;
- ``files``: ``EDGE_TLS_CERT_FILE`` and ``EDGE_TLS_KEY_FILE`` (PEM), for standalone use;
- ``workload``: inside IoT Edge, the workload API issues a server certificate signed by the device CA, which
  leaf devices already trust (edge_module/workload.py). It is renewed when ``EDGE_TLS_RENEW_AT`` of its
  lifetime has passed. A renewal loads the new chain into the same ``SSLContext``: handshakes after it
  present the new certificate; open connections keep theirs, and nothing is dropped.

The trust bundle (the CA chain clients verify against) is kept beside it and served at
``/trust-bundle.pem``. gRPC serves from a context derived from it (ALPN h2), renewed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509

from edge_module.settings import Settings
from edge_module.workload import WorkloadClient, WorkloadError

log = logging.getLogger(__name__)


class TLSConfigError(Exception):
    """The TLS settings cannot produce a certificate."""


@dataclass(frozen=True)
class ServerCertificate:
    chain_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: int
    subject: str

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes) -> ServerCertificate:
        try:
            leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        except (ValueError, IndexError) as exc:
            raise TLSConfigError(f"the certificate chain is not PEM: {exc}") from exc
        return cls(
            chain_pem,
            key_pem,
            leaf.not_valid_before_utc,
            leaf.not_valid_after_utc,
            leaf.serial_number,
            leaf.subject.rfc4514_string(),
        )


class LiveTLS:
    """The server's SSL context and the certificate it presents now."""

    def __init__(self, trust_bundle: bytes | None = None) -> None:
        self.context = _server_context()
        self.current: ServerCertificate | None = None
        self.trust_bundle = trust_bundle
        self._derived: list[ssl.SSLContext] = []

    def derive(self, alpn: list[str]) -> ssl.SSLContext:
        """Another live context with the same certificate and its renewals, offering ``alpn`` (gRPC: h2).

        HTTPS keeps its own context without ALPN, so HTTP/2-capable clients stay on HTTP/1.1 there."""
        context = _server_context()
        context.set_alpn_protocols(alpn)
        if self.current is not None:
            _load(context, self.current)
        self._derived.append(context)
        return context

    def install(self, certificate: ServerCertificate) -> None:
        for context in (self.context, *self._derived):
            _load(context, certificate)
        self.current = certificate


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _load(context: ssl.SSLContext, certificate: ServerCertificate) -> None:
    # load_cert_chain takes paths only: the key touches disk in a private directory, for a moment.
    with tempfile.TemporaryDirectory(prefix="edge-tls-") as directory:
        chain, key = Path(directory) / "chain.pem", Path(directory) / "key.pem"
        chain.write_bytes(certificate.chain_pem)
        descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(certificate.key_pem)
        try:
            context.load_cert_chain(chain, key)
        except ssl.SSLError as exc:
            raise TLSConfigError(f"the certificate and key do not load: {exc}") from exc


def common_name(settings: Settings) -> str:
    """The name leaf devices reach the gateway by: the setting, else IoT Edge's gateway host name, else ours."""
    return settings.tls_common_name or os.environ.get("IOTEDGE_GATEWAYHOSTNAME") or socket.gethostname()


def install_files(settings: Settings, live: LiveTLS) -> None:
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    try:
        chain, key = settings.tls_cert_file.read_bytes(), settings.tls_key_file.read_bytes()
        live.trust_bundle = settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS files: {exc}") from exc
    live.install(ServerCertificate.from_pem(chain, key))


async def start_tls(settings: Settings, live: LiveTLS) -> WorkloadCertificates | None:
    """Give ``live`` its first certificate; in workload mode, return the renewer to run beside the server."""
    if settings.tls_mode == "files":
        install_files(settings, live)
        return None
    try:
        client = WorkloadClient.from_environment(timeout=settings.hub_call_timeout)
    except WorkloadError as exc:
        raise TLSConfigError(str(exc)) from exc
    renewer = WorkloadCertificates(client, settings, live)
    await renewer.start(settings.tls_startup_timeout_s)
    return renewer


class WorkloadCertificates:
    """Server certificates from the IoT Edge workload API, renewed in the background before they expire."""

    def __init__(self, client: WorkloadClient, settings: Settings, live: LiveTLS) -> None:
        self.client = client
        self.common_name = common_name(settings)
        self.lifetime = timedelta(seconds=settings.tls_certificate_lifetime_s)
        self.renew_at = settings.tls_renew_at
        self.retry_max = settings.tls_retry_max_s
        self.live = live

    def _issue(self) -> ServerCertificate:
        issued = self.client.server_certificate(self.common_name, datetime.now(timezone.utc) + self.lifetime)
        return ServerCertificate.from_pem(issued.chain_pem, issued.key_pem)

    async def start(self, deadline_s: float) -> None:
        """The first certificate and the trust bundle, retried until ``deadline_s``: HTTPS cannot start without."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        delay = 0.5
        while True:
            try:
                certificate = await asyncio.to_thread(self._issue)
                self.live.trust_bundle = await asyncio.to_thread(self.client.trust_bundle)
                self.live.install(certificate)
                log.info(
                    "TLS certificate from the workload API: %s, valid until %s",
                    certificate.subject,
                    certificate.not_after,
                )
                return
            except (WorkloadError, TLSConfigError) as exc:
                if loop.time() + delay > give_up:
                    raise TLSConfigError(f"no server certificate from the IoT Edge workload API: {exc}") from exc
                log.warning("no server certificate yet (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    def renewal_due(self, certificate: ServerCertificate) -> datetime:
        return certificate.not_before + (certificate.not_after - certificate.not_before) * self.renew_at

    async def run(self) -> None:
        """Renew each certificate when it is due; on failure keep the current one and retry with backoff."""
        delay = 1.0
        while True:
            current = self.live.current
            assert current is not None
            wait = (self.renewal_due(current) - datetime.now(timezone.utc)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                certificate = await asyncio.to_thread(self._issue)
                with contextlib.suppress(WorkloadError):
                    self.live.trust_bundle = await asyncio.to_thread(self.client.trust_bundle)
                self.live.install(certificate)
                delay = 1.0
                log.info(
                    "TLS certificate renewed: serial %x, valid until %s", certificate.serial, certificate.not_after
                )
            except (WorkloadError, TLSConfigError) as exc:
                left = (current.not_after - datetime.now(timezone.utc)).total_seconds()
                log.error("TLS certificate renewal failed (%s); the current one expires in %.0f s", exc, left)
                await asyncio.sleep(min(delay, max(left / 10, 0.5)))
                delay = min(delay * 2, self.retry_max)
