"""The cloud's release, end to end into the real edge module through its twin: ``cloud release`` signs and
publishes, ``cloud deploy`` renders the manifest and sends the twin patch (over the IoT Hub REST client, to
the emulated hub of tests/support/iothub.py), the module verifies the signature and serves the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from cloud.releases.keys import KeyPair, generate_key_pair
from cloud.releases.schemas import SchemaSet
from tests.release.conftest import VARIABLES
from tests.release.hub_server import Answer, Captured, HubServer
from tests.release.test_iothub import CONNECTION_STRING
from tests.support.models import iris_classifier
from tests.twin.conftest import EdgeFactory

pytestmark = pytest.mark.slow

MODULE = "edge-inference"
IRIS_ROWS = iris_classifier().x_test[:3]


def cloud_release(registry: LocalRegistry, key: Path, version: str, tmp_path: Path) -> Path:
    out = tmp_path / f"release-{version}-{key.stem}.json"
    args = ["release", "iris", "--version", version, "--registry", str(registry.root), "--key", str(key)]
    assert main([*args, "--to", (tmp_path / "published").as_uri(), "--out", str(out)]) == 0
    return out


def test_a_cloud_release_is_accepted_by_the_module_and_another_keys_is_refused(
    start_edge: EdgeFactory,
    registry: LocalRegistry,
    keys: KeyPair,
    schemas: SchemaSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register("iris", iris_classifier("1").onnx, metrics={}, tags={}, metadata={})
    registry.register("iris", iris_classifier("2").onnx, metrics={}, tags={}, metadata={})
    release_1 = cloud_release(registry, keys.private_path, "1", tmp_path)

    # The deployment manifest's module twin section becomes the hub's desired properties.
    manifest_file = tmp_path / "deployment.amd64.json"
    deploy = ["deploy", "manifest", "--release", str(release_1), "--platform", "amd64", "--out", str(manifest_file)]
    deploy += ["--trusted-keys", str(keys.public_path), "--schema-dir", str(schemas.directory)]
    assert main([*deploy, *(f"--set={k}={v}" for k, v in VARIABLES.items())]) == 0
    manifest = json.loads(manifest_file.read_text())
    desired = manifest["modulesContent"][MODULE]["properties.desired"]

    edge = start_edge(desired=desired, env={"EDGE_TRUSTED_KEYS": str(keys.public_path)})
    active = edge.hub.wait_model_state("iris", "active", activeVersion="1")
    assert active["sha256"] == desired["models"]["iris"]["sha256"]
    assert edge.infer_version("iris", IRIS_ROWS) == "1"

    # Version 2, signed by a key the devices do not trust, sent as a twin patch by 'cloud deploy twin':
    # the REST request is captured and handed to the emulated hub, which publishes it to the module.
    other = generate_key_pair(tmp_path / "other", "rogue")
    release_2 = cloud_release(registry, other.private_path, "2", tmp_path)

    def forward(request: Captured) -> Answer:
        assert (request.method, request.path) == ("PATCH", f"/twins/{edge.hub.device_id}/modules/{MODULE}")
        version = edge.hub.patch_desired(request.body["properties"]["desired"])
        return Answer(200, {"properties": {"desired": {"$version": version}}})

    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", CONNECTION_STRING)
    with HubServer(forward) as server:
        patch = ["deploy", "twin", "--release", str(release_2), "--device", edge.hub.device_id]
        assert main([*patch, "--apply", "--hub-endpoint", server.url]) == 0
    assert len(server.requests) == 1
    failed = edge.hub.wait_model_state("iris", "failed", desiredVersion="2")
    assert "signature does not match any trusted key" in failed["error"]
    assert failed["activeVersion"] == "1"
    assert edge.infer_version("iris", IRIS_ROWS) == "1"

    # The same version 2 signed by the trusted key goes through the same path and is taken.
    trusted_2 = cloud_release(registry, keys.private_path, "2", tmp_path)
    assert json.loads(trusted_2.read_text())["iris"]["sha256"] == json.loads(release_2.read_text())["iris"]["sha256"]
    with HubServer(forward) as server:
        patch = ["deploy", "twin", "--release", str(trusted_2), "--device", edge.hub.device_id]
        assert main([*patch, "--trusted-keys", str(keys.public_path), "--apply", "--hub-endpoint", server.url]) == 0
    edge.hub.wait_model_state("iris", "active", activeVersion="2")
    assert edge.infer_version("iris", IRIS_ROWS) == "2"
