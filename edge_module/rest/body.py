"""Reading request bodies with a size cap, and the headers the infer path cares about."""

from __future__ import annotations

import asyncio
import hmac
import zlib
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from edge_module import eager
from edge_module.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, Unauthorized, UnsupportedMediaType

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
BODY_TIMEOUT_S = 30.0
_EXPIRED = "request body deadline"  # the cancel message that tells our deadline from other cancellations


class ClientDisconnected(Exception):
    pass


def header(scope: Message, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class InferHeaders:
    """The headers the infer path reads, found in one pass over the request's headers (first one wins)."""

    __slots__ = ("authorization", "content_encoding", "content_length", "header_length")

    def __init__(self, scope: Message) -> None:
        length = encoding = inference = authorization = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value if length is None else length
            elif key == b"inference-header-content-length":
                inference = value if inference is None else inference
            elif key == b"content-encoding":
                encoding = value if encoding is None else encoding
            elif key == b"authorization":
                authorization = value if authorization is None else authorization
        self.content_length: bytes | None = length
        self.content_encoding: bytes | None = encoding
        self.header_length: bytes | None = inference
        self.authorization: bytes | None = authorization


async def read_body(scope: Message, receive: Receive, limit: int, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The whole body, capped at ``limit`` bytes and ``timeout`` seconds (a slow sender cannot pin a task)."""
    return await read_body_with(InferHeaders(scope), receive, limit, timeout)


async def read_body_with(headers: InferHeaders, receive: Receive, limit: int, timeout: float) -> bytes:
    declared = headers.content_length
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds the {limit}-byte limit")
    # The usual case: the server has the whole body already, and receive() returns it without waiting. The
    # deadline (a timer) is armed only when the body is still on its way.
    pending = receive()
    message, waiting = eager.first_step(pending) if isinstance(pending, Coroutine) else (None, pending)
    if message is not None and message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
    elif (task := asyncio.current_task()) is None:  # a bare coroutine: nothing to cancel, no deadline
        body = await _receive_rest(message if waiting is None else await waiting, receive, limit)
    else:
        # One timer handle, no closure: far cheaper than wrapping every receive() in wait_for.
        timer = asyncio.get_running_loop().call_later(timeout, task.cancel, _EXPIRED)
        try:
            body = await _receive_rest(message if waiting is None else await waiting, receive, limit)
        except asyncio.CancelledError as exc:
            if exc.args[:1] != (_EXPIRED,):
                raise
            if hasattr(task, "uncancel"):  # 3.11+
                task.uncancel()
            raise RequestTimeout(f"request body not received within {timeout:g}s") from None
        finally:
            timer.cancel()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
    encoding = headers.content_encoding
    if encoding:
        body = decompress(body, encoding.decode("latin-1").strip().lower(), limit)
    return body


async def _receive_rest(message: Message | None, receive: Receive, limit: int) -> bytes:
    """The body from its first message on, over as many messages as the client sends it in."""
    assert message is not None  # the first step either finished with a message or left an awaitable
    chunks: list[bytes] = []
    total = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip and deflate, as tritonclient's request compression sends them; capped against zip bombs."""
    if encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    decompressor = zlib.decompressobj(wbits)
    try:
        result = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(result) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
    return result


def parse_header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest("Inference-Header-Content-Length must be an integer") from None


def check_bearer(scope: Message, token: str | None) -> None:
    """Constant-time bearer check; ``token`` None means the endpoint is open."""
    if token is not None:
        check_authorization(header(scope, b"authorization"), token)


def check_authorization(raw: bytes | None, token: str) -> None:
    scheme, _, supplied = (raw or b"").partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(supplied.strip(), token.encode()):
        raise Unauthorized("missing or invalid bearer token")
