"""Typed errors. Each carries its HTTP status; the transports map them in one place."""

from __future__ import annotations


class EdgeError(Exception):
    status_code: int = 500

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class InvalidRequest(EdgeError):
    status_code = 400


class InvalidInput(InvalidRequest):
    """A tensor does not match the model's signature."""


class Unauthorized(EdgeError):
    status_code = 401


class Forbidden(EdgeError):
    status_code = 403


class ModelNotFound(EdgeError):
    status_code = 404


class RequestTimeout(EdgeError):
    status_code = 408


class PayloadTooLarge(EdgeError):
    status_code = 413


class UnsupportedMediaType(EdgeError):
    status_code = 415


class ModelNotReady(EdgeError):
    status_code = 503


class ModelLoadError(EdgeError):
    """A model file could not be loaded or is not servable."""

    status_code = 400


class InsufficientMemory(ModelLoadError):
    """Loading the model would not fit in the memory the module may still use."""


class StoreError(EdgeError):
    status_code = 500


class DigestMismatch(StoreError):
    """A file's content does not hash to the sha256 it was expected to have."""


class InferenceError(EdgeError):
    status_code = 500
