"""The one place where errors become HTTP responses: ``{"error": "<message>"}`` with the error's status."""

from __future__ import annotations

import logging

import orjson

from edge_module.errors import EdgeError

log = logging.getLogger(__name__)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_status_and_body(exc: BaseException) -> tuple[int, bytes]:
    if isinstance(exc, EdgeError):
        if exc.status_code >= 500:
            log.error("request failed: %s", exc.message)
        return exc.status_code, error_body(exc.message)
    log.exception("unexpected error while serving a request", exc_info=exc)
    return 500, error_body(f"internal error: {type(exc).__name__}")
