"""Install the file-backed Azure ML stand-in in this process (used by tests/support/azureml_site/sitecustomize.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STATE_ENV = "AZUREML_FAKE_STATE"
SITE_DIR = Path(__file__).resolve().parent / "azureml_site"
REPO = Path(__file__).resolve().parents[2]


def subprocess_env(state_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``python -m cloud ...`` talks to the stand-in kept in ``state_dir``."""
    env = dict(os.environ if base is None else base)
    env[STATE_ENV] = str(state_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE_DIR), str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def install_from_environment() -> None:
    from tests.cloud.azure_fake import CLIENT_ID, TENANT, FakeAzure, add_login_routes, install
    from tests.cloud.azureml_service import AzureMLService

    os.environ.setdefault("AZURE_TENANT_ID", TENANT)
    os.environ.setdefault("AZURE_CLIENT_ID", CLIENT_ID)
    os.environ.setdefault("AZURE_CLIENT_SECRET", "stand-in-secret")
    fake = FakeAzure()
    AzureMLService(Path(os.environ[STATE_ENV])).install(fake)
    add_login_routes(fake, os.environ["AZURE_TENANT_ID"])
    attempts: list[Any] = []
    install(fake, attempts, pass_local=True)  # Azurite and the stand-in IoT Hub stay reachable
