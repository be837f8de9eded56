from __future__ import annotations

import os
from pathlib import Path

import pytest

# The official IoT Edge schemas, laid down beside the repository by CI (never copied into the project).
SHARED_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "iotedge-schemas"
# Where no test may download from: the discard port on loopback, where nothing listens.
NO_NETWORK = "http://127.0.0.1:9/"


def pytest_configure(config: pytest.Config) -> None:
    # For this process and every subprocess: validation reads the shared folder, and a test that drops it
    # (to try the cache) can reach no schema server but the local one it starts itself.
    os.environ.setdefault("IOTEDGE_SCHEMA_DIR", str(SHARED_SCHEMAS))
    os.environ["IOTEDGE_SCHEMA_BASE_URL"] = NO_NETWORK


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path
