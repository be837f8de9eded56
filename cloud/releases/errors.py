"""Typed errors of releases and deployment; the CLI prints their message and exits non-zero."""

from __future__ import annotations

from cloud.errors import CloudError


class SigningKeyError(CloudError):
    """A signing key that cannot be created, read or trusted."""


class PublishError(CloudError):
    """The model file could not be published where devices fetch it."""


class TemplateError(CloudError):
    """The deployment template cannot be rendered (undefined placeholder, bad JSON, oversized createOptions)."""


class SchemaUnavailable(CloudError):
    """The IoT Edge JSON schemas are not where we looked: validation cannot run, so it fails."""

    exit_code = 4


class ManifestInvalid(CloudError):
    """A manifest that the IoT Edge schemas, or IoT Hub's limits, reject."""

    exit_code = 5

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message + "".join(f"\n  - {problem}" for problem in problems))
        self.problems = problems


class IoTHubError(CloudError):
    """IoT Hub refused a request, or could not be reached."""

    exit_code = 6

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
