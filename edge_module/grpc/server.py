"""The gRPC server: V2 inference on its own port, in the module's process and on its event loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from edge_module.grpc.service import InferenceService
from edge_module.module import EdgeModule
from edge_module.tls import LiveTLS

log = logging.getLogger(__name__)

# Returns the current (certificate chain PEM, private key PEM). Called on every TLS handshake: must be cheap.
CertificateSource = Callable[[], tuple[bytes, bytes]]
STOP_GRACE_S = 5.0
STREAMS_PER_CONNECTION = 128


def live_certificates(live: LiveTLS) -> CertificateSource:
    """What HTTPS presents now (EDGE_TLS files or workload): a renewal reaches gRPC's next handshake too."""

    def current() -> tuple[bytes, bytes]:
        certificate = live.current
        assert certificate is not None  # start_tls installed one before gRPC starts
        return certificate.chain_pem, certificate.key_pem

    return current


def server_credentials(source: CertificateSource) -> grpc.ServerCredentials:
    """TLS credentials that follow ``source``: a renewed certificate serves new connections from then on."""
    lock = threading.Lock()  # gRPC calls the fetcher from its own threads
    current = source()

    def configuration(pair: tuple[bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        chain, key = pair
        return grpc.ssl_server_certificate_configuration([(key, chain)])

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal current
        pair = source()
        with lock:
            if pair == current:
                return None  # unchanged: gRPC keeps the configuration it has
            current = pair
        log.info("gRPC TLS certificate renewed")
        return configuration(pair)

    return grpc.dynamic_ssl_server_credentials(configuration(current), fetch, require_client_authentication=False)


class GrpcServer:
    """The running server and the port it bound (EDGE_GRPC_PORT=0 picks a free one)."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port

    @classmethod
    async def start(cls, module: EdgeModule, certificates: CertificateSource | None = None) -> GrpcServer:
        """Bind EDGE_HOST:EDGE_GRPC_PORT with the module's TLS (or ``certificates``) and start serving."""
        server, port = build_server(module, certificates)
        await server.start()
        log.info("gRPC (V2 inference) listening on %s:%d", module.settings.host, port)
        return cls(server, port)

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """In-flight calls get ``grace`` seconds to finish; new ones are refused at once."""
        await self.server.stop(grace)


def build_server(module: EdgeModule, certificates: CertificateSource | None = None) -> tuple[grpc.aio.Server, int]:
    settings = module.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            # Without this, a second server on a busy port binds it too and takes half the connections.
            ("grpc.so_reuseport", 0),
            # Calls in flight per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS), so one client cannot queue
            # unbounded work. grpc.aio's maximum_concurrent_rpcs would bound the total too, but costs about 15% CPU
            # per call (benchmarks/grpc_compare.py).
            ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
        ],
    )
    server.add_generic_rpc_handlers((InferenceService(module.dataplane, settings.api_token).handler(),))
    address = f"{_host(settings.host)}:{settings.grpc_port or 0}"
    if certificates is None and module.tls is not None:
        if module.tls.current is None:
            raise RuntimeError("EDGE_TLS is on but HTTPS has no certificate yet: start gRPC after start_tls")
        certificates = live_certificates(module.tls)
    try:
        if certificates is not None:
            port = server.add_secure_port(address, server_credentials(certificates))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports a port it cannot bind this way
        raise OSError(f"gRPC could not bind {address}: address already in use or unavailable ({exc})") from exc
    return server, int(port)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
