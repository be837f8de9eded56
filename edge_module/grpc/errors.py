"""The one place where errors become gRPC statuses: each typed error's HTTP status, read as a gRPC code."""

from __future__ import annotations

import logging

import grpc

from edge_module.errors import EdgeError

log = logging.getLogger(__name__)

# The same meaning on both transports, so a client sees one failure whichever it uses.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,  # InvalidRequest, InvalidInput, ModelLoadError
    401: grpc.StatusCode.UNAUTHENTICATED,  # Unauthorized
    403: grpc.StatusCode.PERMISSION_DENIED,  # Forbidden
    404: grpc.StatusCode.NOT_FOUND,  # ModelNotFound
    408: grpc.StatusCode.DEADLINE_EXCEEDED,  # RequestTimeout
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # PayloadTooLarge
    415: grpc.StatusCode.INVALID_ARGUMENT,  # UnsupportedMediaType
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,  # ModelNotReady
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message for a failed call; unexpected errors are logged with their traceback."""
    if isinstance(exc, EdgeError):
        if exc.status_code >= 500:
            log.error("gRPC request failed: %s", exc.message)
        code = _CODES.get(exc.status_code)
        if code is None:
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.status_code < 500 else grpc.StatusCode.INTERNAL
        return code, exc.message
    log.exception("unexpected error while serving a gRPC request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
