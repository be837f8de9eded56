"""Typed errors of a rollout; the CLI prints their message and exits with their code."""

from __future__ import annotations

from cloud.errors import CloudError


class RolloutError(CloudError):
    """A rollout that cannot start, or that the devices did not complete."""

    exit_code = 7


class NoPreviousRelease(RolloutError):
    """A rollback was asked for, but the registry holds no earlier production version to go back to."""


class RolloutFailed(RolloutError):
    """A device targeted by the rollout reported the release ``failed``."""


class RolloutTimeout(RolloutError):
    """The targeted devices did not all report the release ``active`` in time."""
