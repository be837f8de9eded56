"""Reading request bodies with a size cap, and the headers the infer path cares about."""

from __future__ import annotations

import asyncio
import hmac
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edge_module.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, Unauthorized, UnsupportedMediaType

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
BODY_TIMEOUT_S = 30.0


class ClientDisconnected(Exception):
    pass


def header(scope: Message, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Message, receive: Receive, limit: int, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The whole body, capped at ``limit`` bytes and ``timeout`` seconds (a slow sender cannot pin a task)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds the {limit}-byte limit")
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if task is not None:
            task.cancel()

    # A timer handle costs far less than wrapping every receive() in wait_for on the hot path.
    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        body = await _receive_all(receive, limit)
    except asyncio.CancelledError:
        if not expired:
            raise
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()
        raise RequestTimeout(f"request body not received within {timeout:g}s") from None
    finally:
        timer.cancel()
    encoding = header(scope, b"content-encoding")
    if encoding:
        body = decompress(body, encoding.decode("latin-1").strip().lower(), limit)
    return body


async def _receive_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def header_length(scope: Message) -> int | None:
    raw = header(scope, b"inference-header-content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest("Inference-Header-Content-Length must be an integer") from None


def check_bearer(scope: Message, token: str | None) -> None:
    """Constant-time bearer check; ``token`` None means the endpoint is open."""
    if token is None:
        return
    raw = header(scope, b"authorization") or b""
    scheme, _, supplied = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(supplied.strip(), token.encode()):
        raise Unauthorized("missing or invalid bearer token")
