"""The one place where errors become gRPC statuses: each typed error's HTTP status, read as a gRPC code."""

from __future__ import annotations

import logging

from edge_module.errors import EdgeError
from edge_module.grpc.status import GrpcError, StatusCode

log = logging.getLogger(__name__)

# The same meaning on both transports, so a client sees one failure whichever it uses.
_CODES = {
    400: StatusCode.INVALID_ARGUMENT,  # InvalidRequest, InvalidInput, ModelLoadError
    401: StatusCode.UNAUTHENTICATED,  # Unauthorized
    403: StatusCode.PERMISSION_DENIED,  # Forbidden
    404: StatusCode.NOT_FOUND,  # ModelNotFound
    408: StatusCode.DEADLINE_EXCEEDED,  # RequestTimeout
    409: StatusCode.ABORTED,
    413: StatusCode.RESOURCE_EXHAUSTED,  # PayloadTooLarge
    415: StatusCode.INVALID_ARGUMENT,  # UnsupportedMediaType
    429: StatusCode.RESOURCE_EXHAUSTED,
    501: StatusCode.UNIMPLEMENTED,
    503: StatusCode.UNAVAILABLE,  # ModelNotReady
}


def status_of(exc: BaseException) -> tuple[StatusCode, str]:
    """The gRPC code and message for a failed call; unexpected errors are logged with their traceback."""
    if isinstance(exc, GrpcError):
        return exc.code, exc.message
    if isinstance(exc, EdgeError):
        if exc.status_code >= 500:
            log.error("gRPC request failed: %s", exc.message)
        code = _CODES.get(exc.status_code)
        if code is None:
            code = StatusCode.FAILED_PRECONDITION if exc.status_code < 500 else StatusCode.INTERNAL
        return code, exc.message
    log.exception("unexpected error while serving a gRPC request", exc_info=exc)
    return StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
