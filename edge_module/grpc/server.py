"""The gRPC server: V2 inference on its own port, in the module's process and on its event loop.

gRPC runs over our own HTTP/2 connection (edge_module/http2), not grpcio: grpcio's Python server costs
250-300 µs of CPU per call before any of our code runs, several times our whole HTTP request, and its C
extension would add 17 MB to the edge image (docs/grpc.md).
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from edge_module import eager
from edge_module.grpc.errors import status_of
from edge_module.grpc.service import Handler, InferenceService, Parser
from edge_module.grpc.status import GrpcError, StatusCode
from edge_module.grpc.wire import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    Call,
    NotGrpc,
    frame_message,
    read_call,
    read_message,
    trailers_only,
)
from edge_module.http2.connection import HANDSHAKE_TIMEOUT_S, Connection, Stream
from edge_module.module import EdgeModule

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
STREAMS_PER_CONNECTION = 128
_PREFIX_BYTES = 5  # a gRPC message's compressed flag and length


class GrpcApplication:
    """Calls from every connection: each runs as a task, answered with its message or its status."""

    def __init__(self, methods: dict[bytes, tuple[Parser, Handler]], max_message: int) -> None:
        self.methods = methods
        self.max_message = max_message
        self.tasks: set[asyncio.Task[None]] = set()

    def request(self, connection: Connection, stream: Stream) -> None:
        try:
            call = read_call(stream.headers)
            method = self.methods.get(call.path)
            if method is None:
                raise GrpcError(StatusCode.UNIMPLEMENTED, f"method {call.path.decode('latin-1')} is not served")
            message = read_message(stream.body(), call.encoding, self.max_message)
        except NotGrpc as exc:
            connection.respond(stream, trailers_only(StatusCode.INTERNAL, exc.message, exc.status))
            return
        except GrpcError as exc:
            connection.respond(stream, trailers_only(exc.code, exc.message))
            return
        task = eager.start(self._run(connection, stream, method, message, call))
        if task is None:
            return  # answered already: the model ran inline
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        stream.on_reset = task.cancel
        if call.timeout is not None:
            timer = asyncio.get_running_loop().call_later(call.timeout, self._expired, connection, stream, task)
            task.add_done_callback(lambda _: timer.cancel())

    @staticmethod
    def _expired(connection: Connection, stream: Stream, task: asyncio.Task[None]) -> None:
        # A call that finished without waiting needs no timer; one that waits is answered here when its
        # deadline passes, and its task is cancelled (its late answer would find the stream answered).
        if not stream.answered:
            connection.respond(stream, trailers_only(StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed"))
        task.cancel()

    def too_large(self, connection: Connection, stream: Stream) -> None:
        text = f"received message larger than max ({stream.size - _PREFIX_BYTES}+ vs. {self.max_message})"
        connection.respond(stream, trailers_only(StatusCode.RESOURCE_EXHAUSTED, text))

    async def _run(
        self, connection: Connection, stream: Stream, method: tuple[Parser, Handler], message: bytes, call: Call
    ) -> None:
        parse, handle = method
        try:
            try:
                request = parse(message)
            except Exception as exc:  # protobuf's DecodeError, or worse: the bytes are not the message
                raise GrpcError(StatusCode.INTERNAL, f"the request message does not parse: {exc}") from None
            reply = await handle(request, call)
            body = frame_message(reply)
        except asyncio.CancelledError:
            connection.abandon(stream)  # the client reset the stream, its deadline passed, or the server stops
            return
        except Exception as exc:
            code, text = status_of(exc)
            if not stream.answered:
                connection.respond(stream, trailers_only(code, text))
            return
        if not stream.answered:
            connection.respond(stream, RESPONSE_HEADERS, body, OK_TRAILERS)


class GrpcServer:
    """The listening socket, its connections and the port it bound (EDGE_GRPC_PORT=0 picks a free one)."""

    def __init__(self, application: GrpcApplication, max_connections: int | None) -> None:
        self.application = application
        self.max_connections = max_connections
        self.connections: set[Connection] = set()
        self.handshake_timeout = HANDSHAKE_TIMEOUT_S  # seconds for a client's preface and SETTINGS
        self.server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, module: EdgeModule, tls: ssl.SSLContext | None = None) -> GrpcServer:
        """Bind EDGE_HOST:EDGE_GRPC_PORT with the module's TLS (or ``tls``) and start serving."""
        settings = module.settings
        methods = InferenceService(module.dataplane, settings.api_token).methods()
        server = cls(GrpcApplication(methods, settings.max_request_bytes), settings.max_connections)
        if tls is None and module.tls is not None:
            if module.tls.current is None:
                raise RuntimeError("EDGE_TLS is on but HTTPS has no certificate yet: start gRPC after start_tls")
            tls = module.tls.derive(["h2"])
        await server.listen(settings.host, settings.grpc_port or 0, tls)
        log.info("gRPC (V2 inference) listening on %s:%d", settings.host, server.port)
        return server

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            # No SO_REUSEPORT: a second server on a busy port must fail, not take half its connections.
            if tls is None:
                self.server = await loop.create_server(self._connection, host, port, reuse_port=False)
            else:
                self.server = await loop.create_server(
                    self._connection, host, port, ssl=tls, reuse_port=False, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
                )
        except OSError as exc:
            raise OSError(exc.errno, f"gRPC could not bind {host}:{port}: {exc.strerror or exc}") from exc
        self.port = int(self.server.sockets[0].getsockname()[1])

    def _connection(self) -> Connection:
        full = self.max_connections is not None and len(self.connections) >= self.max_connections
        connection = Connection(
            self.application,
            max_body=self.application.max_message + _PREFIX_BYTES,
            max_streams=STREAMS_PER_CONNECTION,
            handshake_timeout=self.handshake_timeout,
            on_close=self.connections.discard,
            refuse="too many connections" if full else None,
        )
        self.connections.add(connection)
        return connection

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """In-flight calls get ``grace`` seconds to finish; new ones are refused at once."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.shutdown()
        waits = [asyncio.ensure_future(connection.closed.wait()) for connection in self.connections]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for waiting in pending:
                waiting.cancel()
        for connection in list(self.connections):
            connection.close()
        for task in list(self.application.tasks):
            task.cancel()
        if self.application.tasks:
            await asyncio.gather(*self.application.tasks, return_exceptions=True)
