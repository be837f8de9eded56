"""Typed errors of the training sidecar. The CLI prints their message and exits non-zero."""

from __future__ import annotations


class CloudError(Exception):
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataError(CloudError):
    """The data cannot be used for training: empty, unknown target, a single class, ..."""


class RegistryError(CloudError):
    """A registry operation was refused (bad name, immutable version, unknown alias, ...)."""


class ModelNotFound(RegistryError):
    """No such model, version or alias in the registry."""


class ParityError(CloudError):
    """ONNX Runtime and scikit-learn disagree on the test split: the model is not registered."""

    exit_code = 3


class AzureConfigError(CloudError):
    """Azure ML was asked for but no workspace is configured."""


class ModelIntegrityError(RegistryError):
    """A registered version's file no longer matches the sha256 recorded at registration."""


class RegistryUnavailable(RegistryError):
    """The registry's service could not be reached or failed; nothing was half-done, retry later."""


class VersionTaken(RegistryError):
    """The version asked for exists (or existed) already; versions are immutable, claim the next one."""
