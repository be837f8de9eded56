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
    InferHeaders,
    Message,
    Receive,
    check_authorization,
    parse_header_length,
    read_body_with,
)
from edge_module.rest.errors import error_status_and_body

Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Route = tuple[str, str | None]

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_ROUTES_KEPT = 256  # distinct infer paths remembered; clients use a handful


async def infer_response(
    dataplane: DataPlane,
    scope: Message,
    receive: Receive,
    name: str,
    version: str | None,
    max_body: int,
    body_timeout: float = BODY_TIMEOUT_S,
    api_token: str | None = None,
) -> tuple[int, Headers, bytes]:
    """Status, headers and body for one infer request; every failure becomes ``{"error"}``."""
    headers = InferHeaders(scope)
    try:
        if api_token is not None:
            check_authorization(headers.authorization, api_token)
        body = await read_body_with(headers, receive, max_body, body_timeout)
        body, length = await dataplane.infer(name, version, body, parse_header_length(headers.header_length))
    except ClientDisconnected:
        raise
    except Exception as exc:
        status, payload = error_status_and_body(exc)
        return status, [(b"content-type", _JSON)], payload
    if length is None:
        return 200, [(b"content-type", _JSON)], body
    return 200, [(b"content-type", _BINARY), (b"inference-header-content-length", str(length).encode())], body


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
        self._routes: dict[str, Route | None] = {}

    def route(self, path: str) -> Route | None:
        """(model, version) when ``path`` is an infer path; remembered, as clients repeat a few paths."""
        try:
            return self._routes[path]
        except KeyError:
            pass
        match = INFER_PATH.match(path)
        route = (match.group(1), match.group(2)) if match else None
        if len(self._routes) >= _ROUTES_KEPT:
            self._routes.clear()
        self._routes[path] = route
        return route

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        route = self.route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            status, headers, body = await infer_response(
                self.dataplane, scope, receive, route[0], route[1], self.max_body, self.body_timeout, self.api_token
            )
        except ClientDisconnected:
            return
        headers.append((b"content-length", str(len(body)).encode()))
        start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})
