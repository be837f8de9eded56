"""The infer route as a bare ASGI handler, in front of FastAPI.

Inference is the hot path: routing it past FastAPI's middleware, router and dependency solving
saves more CPU per request than the whole decode, run and encode (see the benchmark).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from edge_module.dataplane import DataPlane
from edge_module.rest.body import (
    BODY_TIMEOUT_S,
    ClientDisconnected,
    Message,
    Receive,
    check_bearer,
    header_length,
    read_body,
)
from edge_module.rest.errors import error_status_and_body

Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


async def infer_response(
    dataplane: DataPlane,
    scope: Message,
    receive: Receive,
    name: str,
    version: str | None,
    max_body: int,
    body_timeout: float = BODY_TIMEOUT_S,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for one infer request; every failure becomes ``{"error"}``."""
    try:
        body = await read_body(scope, receive, max_body, body_timeout)
        body, length = await dataplane.infer(name, version, body, header_length(scope))
    except ClientDisconnected:
        raise
    except Exception as exc:
        status, payload = error_status_and_body(exc)
        return status, [(b"content-type", _JSON)], payload
    if length is None:
        return 200, [(b"content-type", _JSON)], body
    headers = [(b"content-type", _BINARY), (b"inference-header-content-length", str(length).encode())]
    return 200, headers, body


class InferFastPath:
    def __init__(
        self,
        app: ASGIApp,
        dataplane: DataPlane,
        max_body: int,
        api_token: str | None,
        body_timeout: float = BODY_TIMEOUT_S,
    ) -> None:
        self.body_timeout = body_timeout
        self.app = app
        self.dataplane = dataplane
        self.max_body = max_body
        self.api_token = api_token

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                await self._infer(scope, receive, send, match.group(1), match.group(2))
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Message, receive: Receive, send: Send, name: str, version: str | None) -> None:
        try:
            check_bearer(scope, self.api_token)
        except Exception as exc:
            status, payload = error_status_and_body(exc)
            await _send(send, status, [(b"content-type", _JSON)], payload)
            return
        try:
            status, headers, body = await infer_response(
                self.dataplane, scope, receive, name, version, self.max_body, self.body_timeout
            )
        except ClientDisconnected:
            return
        await _send(send, status, headers, body)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
