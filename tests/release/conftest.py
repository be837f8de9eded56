from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloud.registry import LocalRegistry, RegistryEntry
from cloud.releases.keys import KeyPair, generate_key_pair
from cloud.releases.schemas import DEFAULT_SCHEMA_DIR, SchemaSet
from tests.support.models import iris_classifier

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deployment.template.json"
FIXTURES = Path(__file__).parent / "fixtures"
# Placeholder values a real pipeline takes from its environment or a .env file.
VARIABLES = {
    "EDGE_MODULE_IMAGE_AMD64": "contoso.azurecr.io/edge-inference:0.1.0-amd64",
    "EDGE_MODULE_IMAGE_ARM64V8": "contoso.azurecr.io/edge-inference:0.1.0-arm64v8",
    "CONTAINER_REGISTRY_ADDRESS": "contoso.azurecr.io",
    "CONTAINER_REGISTRY_USERNAME": "contoso",
    "CONTAINER_REGISTRY_PASSWORD": "registry-password-from-a-secret",
}


@pytest.fixture
def schemas() -> SchemaSet:
    """The official IoT Edge schemas from ../shared/iotedge-schemas (never copied into the project)."""
    directory = Path(os.environ.get("IOTEDGE_SCHEMA_DIR") or DEFAULT_SCHEMA_DIR)
    if not directory.is_dir():
        reason = f"IoT Edge JSON schemas not found at {directory} (set IOTEDGE_SCHEMA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip: {reason}")
        pytest.skip(reason)
    return SchemaSet(directory)


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


@pytest.fixture
def registered(registry: LocalRegistry) -> RegistryEntry:
    return registry.register("iris", iris_classifier().onnx, metrics={"accuracy": 0.9}, tags={}, metadata={}).entry


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys", "release")


# The twin issue's local IoT Hub (mosquitto + emulated hub + workload API) and module launcher, reused as is.
from tests.twin.conftest import broker, start_edge, workload  # noqa: E402, F401
