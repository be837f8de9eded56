"""gRPC over HTTP/2 for unary calls, as grpc/doc/PROTOCOL-HTTP2.md and grpc/doc/compression.md define it.

- A call is a POST whose ``:path`` is ``/<service>/<method>`` and whose ``content-type`` begins with
  ``application/grpc``; anything else is answered with HTTP 415 (the document's "SHOULD").
- ``grpc-timeout`` is at most 8 digits and a unit (H, M, S, m, u, n).
- A message is length-prefixed: a compressed flag byte, a 4-byte big-endian length, the message. The flag may
  be 1 only with a ``grpc-encoding`` we support (gzip, deflate); an encoding we don't support is UNIMPLEMENTED,
  answered with our ``grpc-accept-encoding``. A unary request carries exactly one message.
- The response is headers, one message and trailers (``grpc-status``, ``grpc-message`` percent-encoded), or,
  for a failure, "Trailers-Only": a single header block carrying the status.
"""

from __future__ import annotations

import struct
import zlib

from edge_module.grpc.status import GrpcError, StatusCode
from edge_module.http2.connection import Headers
from edge_module.http2.hpack_encode import encode_headers

ACCEPT_ENCODING = b"identity,deflate,gzip"
CONTENT_TYPE = b"application/grpc"
_PREFIX = struct.Struct(">BI")
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
MAX_STATUS_MESSAGE = 2048  # characters of grpc-message: a status line, not a payload

RESPONSE_HEADERS = encode_headers(
    [(b":status", b"200"), (b"content-type", CONTENT_TYPE), (b"grpc-accept-encoding", ACCEPT_ENCODING)]
)
OK_TRAILERS = encode_headers([(b"grpc-status", b"0")])


class NotGrpc(Exception):
    """An HTTP/2 request that is not a gRPC call: answered with HTTP ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Call:
    """What a call's headers say that the server acts on."""

    __slots__ = ("authorization", "encoding", "path", "timeout")

    def __init__(self, path: bytes, timeout: float | None, encoding: bytes | None, authorization: bytes | None) -> None:
        self.path = path
        self.timeout = timeout
        self.encoding = encoding
        self.authorization = authorization


def read_call(headers: Headers) -> Call:
    method = path = content_type = timeout = encoding = authorization = None
    for name, value in headers:
        if name == b":path":
            path = value
        elif name == b":method":
            method = value
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout = value
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"authorization":
            authorization = value
    if method != b"POST":
        raise NotGrpc(405, f"gRPC calls are POST requests, not {_text(method)}")
    if content_type is None or not content_type.startswith(CONTENT_TYPE):
        raise NotGrpc(415, f"content-type {_text(content_type)} is not application/grpc")
    if path is None:
        raise NotGrpc(400, "the request has no :path")
    if encoding == b"identity":
        encoding = None
    elif encoding is not None and encoding not in (b"gzip", b"deflate"):
        raise GrpcError(StatusCode.UNIMPLEMENTED, f"grpc-encoding {_text(encoding)} is not supported")
    return Call(path, parse_timeout(timeout) if timeout is not None else None, encoding, authorization)


def parse_timeout(value: bytes) -> float:
    """Seconds from a grpc-timeout value such as ``100m`` or ``2S``."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit() or value[-1] not in _TIMEOUT_UNITS:
        raise GrpcError(StatusCode.INVALID_ARGUMENT, f"grpc-timeout {_text(value)} is malformed")
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


def read_message(body: bytes, encoding: bytes | None, max_bytes: int) -> bytes:
    """The one message of a unary request, decompressed, at most ``max_bytes``."""
    if len(body) < 5:
        raise GrpcError(StatusCode.INTERNAL, "the request carries no message")
    compressed, length = _PREFIX.unpack_from(body)
    if length > max_bytes:
        raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, f"received message larger than max ({length} vs. {max_bytes})")
    if len(body) != 5 + length:
        if len(body) < 5 + length:
            raise GrpcError(StatusCode.INTERNAL, f"the message is truncated: {len(body) - 5} of {length} bytes")
        raise GrpcError(StatusCode.UNIMPLEMENTED, "a unary call carries exactly one message")
    message = body[5:] if len(body) > 5 else b""
    if compressed == 0:
        return message
    if compressed != 1:
        raise GrpcError(StatusCode.INTERNAL, f"compressed flag {compressed} is neither 0 nor 1")
    if encoding is None:
        raise GrpcError(StatusCode.INTERNAL, "a compressed message without grpc-encoding")
    return _decompress(message, encoding, max_bytes)


def _decompress(message: bytes, encoding: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(31 if encoding == b"gzip" else 15)
    try:
        data = inflater.decompress(message, max_bytes + 1)
    except zlib.error as exc:
        raise GrpcError(StatusCode.INTERNAL, f"the message does not decompress ({_text(encoding)}): {exc}") from None
    if len(data) > max_bytes:
        raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, f"decompressed message larger than max ({max_bytes} bytes)")
    if not inflater.eof:
        raise GrpcError(StatusCode.INTERNAL, f"the message is truncated ({_text(encoding)})")
    return data


def frame_message(message: bytes) -> bytes:
    return _PREFIX.pack(0, len(message)) + message


def trailers_only(code: StatusCode, message: str, http_status: int = 200) -> bytes:
    """A failed call's single header block."""
    fields = [
        (b":status", str(http_status).encode()),
        (b"content-type", CONTENT_TYPE),
        (b"grpc-status", str(int(code)).encode()),
        (b"grpc-message", percent_encode(message)),
    ]
    if code == StatusCode.UNIMPLEMENTED:
        fields.append((b"grpc-accept-encoding", ACCEPT_ENCODING))
    return encode_headers(fields)


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, with bytes outside 0x20-0x7E and '%' itself as %XX."""
    raw = message[:MAX_STATUS_MESSAGE].encode("utf-8", "replace")
    if all(0x20 <= byte <= 0x7E and byte != 0x25 for byte in raw):
        return raw
    return b"".join(bytes([byte]) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte for byte in raw)


def _text(value: bytes | None) -> str:
    return "(none)" if value is None else repr(value.decode("latin-1")[:64])
