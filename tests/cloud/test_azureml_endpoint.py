"""`python -m cloud endpoint deploy` against Azure ML stood in for at the HTTP transport (tests/cloud/azure_fake.py).

The real azure-ai-ml SDK builds and sends every request; the fake answers ARM and the datastore's blob API
with canned replies, records the requests, and fails the test on any connection that leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.__main__ import main
from cloud.azureml import AzureWorkspace, ml_client
from cloud.azureml_endpoint import EndpointError, EndpointPlan, deploy, split_traffic, write_store_bundle
from cloud.registry import LocalRegistry, RegistryEntry
from edge_module.store import ModelStore
from tests.cloud.azure_fake import (
    CLIENT_ID,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TENANT,
    WORKSPACE,
    WORKSPACE_PATH,
    FakeAzure,
    Recorded,
    Reply,
    StaticCredential,
    add_login_routes,
    add_workspace_routes,
    fake_azure,
)
from tests.support.models import iris_classifier
from tests.support.server import free_port
from tests.support.system import require_binary

IMAGE = "edgeacr.azurecr.io/edge-module:0.1.0-amd64"
ENDPOINT_PATH = rf"{re.escape(WORKSPACE_PATH)}/onlineEndpoints/([^/]+)"


def add_endpoint_routes(fake: FakeAzure, existing_traffic: dict[str, int] | None = None) -> dict[str, Any]:
    """Canned ARM replies for the workspace, online endpoints, deployments and environment versions."""
    state: dict[str, Any] = {"endpoints": {}, "deployments": {}}
    if existing_traffic is not None:
        state["endpoints"]["edge-iris"] = endpoint_resource(
            "edge-iris", {"authMode": "Key", "traffic": existing_traffic}
        )

    def workspace(request: Recorded) -> Reply:
        return 200, {"id": WORKSPACE_PATH, "name": WORKSPACE, "location": "westeurope", "properties": {}}, {}

    def put_endpoint(request: Recorded) -> Reply:
        name = re.findall(ENDPOINT_PATH + "$", request.path)[0]
        properties = {**request.json()["properties"], "provisioningState": "Succeeded"}
        properties["scoringUri"] = f"https://{name}.westeurope.inference.ml.azure.com/"
        state["endpoints"][name] = endpoint_resource(name, properties)
        return 200, state["endpoints"][name], {}

    def get_endpoint(request: Recorded) -> Reply:
        name = re.findall(ENDPOINT_PATH + "$", request.path)[0]
        if name not in state["endpoints"]:
            return 404, {"error": {"code": "UserError", "message": f"endpoint {name} not found"}}, {}
        return 200, state["endpoints"][name], {}

    def put_deployment(request: Recorded) -> Reply:
        endpoint, name = re.findall(ENDPOINT_PATH + r"/deployments/([^/]+)$", request.path)[0]
        body = request.json()
        body["properties"]["provisioningState"] = "Succeeded"
        body["properties"].setdefault("scaleSettings", {"scaleType": "Default"})  # as ARM answers
        resource = {
            "id": f"{WORKSPACE_PATH}/onlineEndpoints/{endpoint}/deployments/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "location": "westeurope",
            **body,
        }
        state["deployments"][name] = resource
        return 200, resource, {}

    def put_environment(request: Recorded) -> Reply:
        name, version = re.findall(r"/environments/([^/]+)/versions/([^/]+)$", request.path)[0]
        return (
            201,
            {
                "id": f"{WORKSPACE_PATH}/environments/{name}/versions/{version}",
                "name": version,
                "properties": request.json()["properties"],
                "systemData": {"createdAt": "2026-11-27T05:00:00Z"},
            },
            {},
        )

    base = re.escape(WORKSPACE_PATH)
    fake.route("GET", base + "$", workspace)
    fake.route("PUT", ENDPOINT_PATH + "$", put_endpoint)
    fake.route("GET", ENDPOINT_PATH + "$", get_endpoint)
    fake.route("PUT", ENDPOINT_PATH + r"/deployments/[^/]+$", put_deployment)
    fake.route(
        "GET", ENDPOINT_PATH + r"/deployments$", lambda r: (200, {"value": list(state["deployments"].values())}, {})
    )
    fake.route("PUT", base + r"/environments/[^/]+/versions/[^/]+$", put_environment)
    return state


def endpoint_resource(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{WORKSPACE_PATH}/onlineEndpoints/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
        "location": "westeurope",
        "identity": {"type": "SystemAssigned"},
        "properties": {"provisioningState": "Succeeded", **properties},
    }


def puts(fake: FakeAzure, fragment: str) -> list[Recorded]:
    return [r for r in fake.requests if r.method == "PUT" and re.search(fragment, r.path)]


@pytest.fixture
def entry(tmp_path: Path) -> RegistryEntry:
    registry = LocalRegistry(tmp_path / "registry")
    registry.register("iris", b"not this one", metrics={}, tags={}, metadata={})
    return registry.register("iris", iris_classifier().onnx, metrics={"accuracy": 0.96}, tags={}, metadata={}).entry


def client() -> Any:
    workspace = AzureWorkspace(subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP, workspace=WORKSPACE)
    return ml_client(workspace, credential=StaticCredential())


def test_deploy_puts_the_endpoint_and_a_custom_container_deployment_of_our_image(
    entry: RegistryEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = EndpointPlan(
        endpoint="edge-iris", deployment="blue", image=IMAGE, instance_type="Standard_DS3_v2", instance_count=2
    )
    with fake_azure(monkeypatch) as fake:
        add_workspace_routes(fake)
        fake.add_blob_routes()
        add_endpoint_routes(fake)
        result = deploy(client(), plan, entry, tmp_path / "work")

    endpoint_puts = puts(fake, r"/onlineEndpoints/edge-iris$")
    assert len(endpoint_puts) == 2  # create, then route the traffic
    created = endpoint_puts[0].json()
    assert created["location"] == "westeurope"
    assert created["properties"]["authMode"] == "Key"
    assert endpoint_puts[1].json()["properties"]["traffic"] == {"blue": 100}

    [deployment_put] = puts(fake, r"/onlineEndpoints/edge-iris/deployments/blue$")
    body = deployment_put.json()
    assert body["sku"] == {"name": "Default", "capacity": 2}
    properties = body["properties"]
    assert properties["endpointComputeType"] == "Managed"
    assert properties["instanceType"] == "Standard_DS3_v2"
    assert properties["modelMountPath"] == "/var/azureml-app/edge-model"
    assert properties["environmentVariables"] == {
        "EDGE_MODEL_DIR": "/var/azureml-app/edge-model/store",
        "EDGE_SERVE_DEFAULT_MODEL": "false",
        "EDGE_HOST": "0.0.0.0",
        "EDGE_PORT": "8000",
    }
    assert properties["model"].endswith("/models/iris-edge-store/versions/2")
    assert properties["environmentId"].endswith("/environments/edge-module/versions/0.1.0-amd64")
    assert properties["readinessProbe"]["initialDelay"] == "PT5S"

    [environment_put] = puts(fake, r"/environments/edge-module/versions/0\.1\.0-amd64$")
    environment = environment_put.json()["properties"]
    assert environment["image"] == IMAGE
    assert environment["inferenceConfig"] == {
        "livenessRoute": {"port": 8000, "path": "/v2/health/live"},
        "readinessRoute": {"port": 8000, "path": "/v2/health/ready"},
        "scoringRoute": {"port": 8000, "path": "/"},
    }

    # The model asset is the registry's version, laid out as the module's store, uploaded to the datastore.
    [model_put] = puts(fake, r"/models/iris-edge-store/versions/2$")
    model = model_put.json()["properties"]
    assert model["tags"]["sha256"] == entry.sha256
    uploaded = {path.rsplit("/store/", 1)[1]: data for path, data in fake.blobs.items() if "/store/" in path}
    assert uploaded[f"blobs/{entry.sha256}"] == entry.local_path().read_bytes()
    assert json.loads(uploaded["models/iris.json"])["active"]["version"] == "2"
    assert model["modelUri"].rstrip("/").endswith("/store")

    assert result.scoring_uri == "https://edge-iris.westeurope.inference.ml.azure.com/"
    assert (result.version, result.sha256, result.traffic) == ("2", entry.sha256, {"blue": 100})


def test_a_canary_deployment_takes_its_share_from_the_current_one(
    entry: RegistryEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = EndpointPlan(endpoint="edge-iris", deployment="green", image=IMAGE, traffic_percent=10)
    with fake_azure(monkeypatch) as fake:
        add_workspace_routes(fake)
        fake.add_blob_routes()
        add_endpoint_routes(fake, existing_traffic={"blue": 100})
        result = deploy(client(), plan, entry, tmp_path / "work")

    assert puts(fake, r"/onlineEndpoints/edge-iris$")[-1].json()["properties"]["traffic"] == {"blue": 90, "green": 10}
    assert result.traffic == {"blue": 90, "green": 10}


def test_the_cli_deploys_with_the_ci_service_principal(
    entry: RegistryEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_azure(monkeypatch) as fake:
        add_login_routes(fake)
        add_workspace_routes(fake)
        fake.add_blob_routes()
        add_endpoint_routes(fake)
        for name, value in {
            "AZUREML_SUBSCRIPTION_ID": SUBSCRIPTION,
            "AZUREML_RESOURCE_GROUP": RESOURCE_GROUP,
            "AZUREML_WORKSPACE": WORKSPACE,
            "AZURE_TENANT_ID": TENANT,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_CLIENT_SECRET": "pipeline-secret-variable",
        }.items():
            monkeypatch.setenv(name, value)
        code = main(
            [
                "endpoint",
                "deploy",
                "iris",
                "--version",
                "1",
                "--registry",
                str(tmp_path / "registry"),
                "--endpoint",
                "edge-iris",
                "--image",
                IMAGE,
                "--env",
                "EDGE_LOG_LEVEL=DEBUG",
            ]
        )

    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["version"]) == ("iris", "1")
    [deployment_put] = puts(fake, r"/deployments/blue$")
    assert deployment_put.json()["properties"]["environmentVariables"]["EDGE_LOG_LEVEL"] == "DEBUG"
    assert deployment_put.headers["Authorization"] == "Bearer env-credential-token"


def test_an_azure_refusal_is_a_typed_error(
    entry: RegistryEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = EndpointPlan(endpoint="edge-iris", deployment="blue", image=IMAGE)
    with fake_azure(monkeypatch) as fake:
        fake.route(
            "GET",
            re.escape(WORKSPACE_PATH) + "$",
            lambda r: (403, {"error": {"code": "AuthorizationFailed", "message": "no access"}}, {}),
        )
        with pytest.raises(EndpointError, match="no access"):
            deploy(client(), plan, entry, tmp_path / "work")


@pytest.mark.parametrize(
    ("current", "deployment", "percent", "expected"),
    [
        ({}, "blue", 100, {"blue": 100}),
        ({}, "blue", 10, {"blue": 100}),
        ({"blue": 100}, "green", 10, {"blue": 90, "green": 10}),
        ({"blue": 90, "green": 10}, "green", 100, {"blue": 0, "green": 100}),
        ({"blue": 50, "green": 30, "red": 20}, "red", 33, {"blue": 42, "green": 25, "red": 33}),
        ({"blue": 100, "old": 0}, "green", 0, {"blue": 100, "green": 0}),
    ],
)
def test_split_traffic_always_adds_up(
    current: dict[str, int], deployment: str, percent: int, expected: dict[str, int]
) -> None:
    assert split_traffic(current, deployment, percent) == expected
    assert sum(expected.values()) == 100


@pytest.mark.parametrize(
    "changes",
    [
        {"endpoint": "x"},
        {"deployment": "-bad"},
        {"image": "no-registry"},
        {"instance_count": 0},
        {"traffic_percent": 101},
    ],
)
def test_invalid_plans_are_refused(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"endpoint": "edge-iris", "deployment": "blue", "image": IMAGE, **changes}
    with pytest.raises(EndpointError):
        EndpointPlan(**fields)


@pytest.mark.slow
def test_the_store_bundle_is_served_from_a_read_only_mount(entry: RegistryEntry, tmp_path: Path) -> None:
    """What the deployment mounts (read-only, as Azure ML mounts models), served by the real module with the
    deployment's settings."""
    unshare = require_binary("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    store = write_store_bundle(entry, tmp_path / "bundle")
    assert ModelStore(store).get("iris") is not None
    port = free_port()
    env = {**os.environ, "EDGE_MODEL_DIR": str(store), "EDGE_SERVE_DEFAULT_MODEL": "false", "EDGE_PORT": str(port)}
    mount_read_only = f"mount --bind {store} {store} && mount -o remount,ro,bind {store}"
    command = [unshare, "--mount", "sh", "-c", f'{mount_read_only} && exec "$0" -m edge_module', sys.executable]
    log = tmp_path / "module.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        metadata = wait_for_model(f"http://127.0.0.1:{port}/v2/models/iris", process, log)
    finally:
        process.terminate()
        process.wait(20)
    assert metadata["versions"] == ["2"]
    assert metadata["parameters"]["sha256"] == entry.sha256


def wait_for_model(url: str, process: subprocess.Popen[bytes], log: Path) -> Any:
    for _ in range(300):
        assert process.poll() is None, f"the module exited: {log.read_text()}"
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the module did not serve {url}: {log.read_text()}")
