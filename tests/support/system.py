"""System tools the tests need. Locally a missing tool skips its tests; under CI it fails them."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, package: str | None = None) -> str:
    path = shutil.which(name) or next(
        (candidate for candidate in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(candidate, os.X_OK)), None
    )
    if path:
        return path
    reason = f"{name} not found: install the Debian package '{package or name}' (scripts/test does it as root)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)
