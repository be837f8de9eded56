"""The Azure ML stand-in itself: every rejection it makes, its paging, and its state shared across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cloud.registry_location import open_registry
from tests.cloud.azure_fake import (
    ACCOUNT,
    AZUREML_URI,
    CONTAINER,
    WORKSPACE_PATH,
    StaticCredential,
    add_login_routes,
    fake_azure,
)
from tests.cloud.azureml_service import AzureMLService
from tests.support.azureml_fake import subprocess_env
from tests.support.models import iris_classifier

ARM = "https://management.azure.com" + WORKSPACE_PATH
BLOB = f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}"
API = {"api-version": "2024-04-01"}


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AzureMLService]:
    with fake_azure(monkeypatch) as fake:
        stand_in = AzureMLService(tmp_path / "state")
        stand_in.install(fake)
        yield stand_in


def upload(path: str, data: bytes = b"onnx") -> str:
    assert requests.put(f"{BLOB}/{path}", data=data, timeout=5).status_code == 201
    return f"azureml://subscriptions/x/resourcegroups/y/workspaces/z/datastores/workspaceblobstore/paths/{path}"


def put_version(name: str, version: str, **properties: Any) -> requests.Response:
    body = {"properties": {"modelType": "custom_model", **properties}}
    return requests.put(f"{ARM}/models/{name}/versions/{version}", params=API, json=body, timeout=5)


def error_of(response: requests.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def test_a_version_is_created_once_and_only_tags_and_description_change(service: AzureMLService) -> None:
    uri = upload("LocalUpload/a/model.onnx")
    created = put_version("m", "1", modelUri=uri, properties={"p": "1"}, tags={"t": "1"})
    assert created.status_code == 201
    assert created.json()["properties"]["modelUri"] == uri

    updated = put_version("m", "1", modelUri=uri, properties={"p": "1"}, tags={"t": "2"}, description="d")
    assert updated.status_code == 200
    assert (updated.json()["properties"]["tags"], updated.json()["properties"]["description"]) == ({"t": "2"}, "d")

    other = upload("LocalUpload/b/model.onnx", b"other")
    assert error_of(put_version("m", "1", modelUri=other, properties={"p": "1"})) == (
        400,
        "UserError",
        "Asset paths cannot be updated.",
    )
    status, code, message = error_of(put_version("m", "1", modelUri=uri, properties={"p": "2"}))
    assert (status, code) == (400, "UserError") and "without increasing the version" in message
    assert service.versions("m")[0]["properties"]["properties"] == {"p": "1"}


def test_a_deleted_version_cannot_be_recreated(service: AzureMLService) -> None:
    uri = upload("LocalUpload/a/model.onnx")
    assert put_version("m", "1", modelUri=uri).status_code == 201
    service.delete_version("m", "1")
    status, code, message = error_of(put_version("m", "1", modelUri=uri))
    assert (status, code) == (400, "UserError") and "it cannot be recreated" in message
    assert requests.get(f"{ARM}/models/m/versions/1", params=API, timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"tags": {f"t{i}": "v" for i in range(51)}}, "number of tags (51) exceeds the limit of 50"),
        ({"properties": {f"p{i}": "v" for i in range(51)}}, "number of properties (51) exceeds the limit of 50"),
        ({"tags": {"k" * 101: "v"}}, "exceeds the length limits"),
        ({"properties": {"p": "v" * 1001}}, "exceeds the length limits"),
        ({"modelUri": ""}, "modelUri is required"),
        ({"modelUri": "azureml://datastores/workspaceblobstore/paths/nothing/here.onnx"}, "does not exist"),
    ],
)
def test_bad_versions_are_refused(service: AzureMLService, properties: dict[str, Any], expected: str) -> None:
    body = {"modelUri": upload("LocalUpload/a/model.onnx"), **properties}
    status, code, message = error_of(put_version("m", "1", **body))
    assert (status, code) == (400, "UserError") and expected in message
    assert service.versions("m") == []


def test_unknown_models_and_versions_are_404(service: AzureMLService) -> None:
    for url in (f"{ARM}/models/nothing", f"{ARM}/models/nothing/versions/1"):
        response = requests.get(url, params=API, timeout=5)
        assert response.status_code == 404 and response.json()["error"]["code"] == "UserError"


def test_lists_are_paged_with_next_links_and_hide_archived_versions(service: AzureMLService) -> None:
    uri = upload("LocalUpload/a/model.onnx")
    for version in ("1", "2", "3", "4", "5"):
        assert put_version("m", version, modelUri=uri, isArchived=version == "3").status_code == 201

    def walk(params: dict[str, str]) -> list[str]:
        names: list[str] = []
        page = requests.get(f"{ARM}/models/m/versions", params={**API, **params}, timeout=5).json()
        while True:
            assert len(page["value"]) <= 2
            names += [item["name"] for item in page["value"]]
            if "nextLink" not in page:
                return names
            assert page["nextLink"].startswith(ARM)  # absolute, as ARM gives it
            page = requests.get(page["nextLink"], timeout=5).json()

    assert walk({}) == ["1", "2", "4", "5"]
    assert walk({"listViewType": "All"}) == ["1", "2", "3", "4", "5"]
    newest = requests.get(f"{ARM}/models/m/versions", params={**API, "$orderBy": "createdtime desc", "$top": "1"})
    assert [item["name"] for item in newest.json()["value"]] == ["5"] and "nextLink" not in newest.json()


def test_injected_failures_answer_or_refuse_to_connect_then_stop(service: AzureMLService) -> None:
    service.fail("GET", r"/models/m/versions$", status=503, times=1)
    service.fail("GET", r"/models/m$", unreachable=True, times=1)
    assert requests.get(f"{ARM}/models/m/versions", params=API, timeout=5).status_code == 503
    assert requests.get(f"{ARM}/models/m/versions", params=API, timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ARM}/models/m", params=API, timeout=5)


def test_the_state_is_shared_with_other_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several `python -m cloud` processes, installed through tests/support/azureml_site, see one registry."""
    state = tmp_path / "state"
    env = subprocess_env(state)
    for name in ("CLOUD_REGISTRY", "CLOUD_REGISTRY_DIR"):
        env.pop(name, None)

    def cloud(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cloud", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)

    (tmp_path / "model.onnx").write_bytes(iris_classifier().onnx)
    with fake_azure(monkeypatch) as fake:
        AzureMLService(state).install(fake)
        add_login_routes(fake)
        registry = open_registry(AZUREML_URI, credential=StaticCredential())
        registry.register("iris", (tmp_path / "model.onnx").read_bytes(), metrics={"accuracy": 0.9})
        registry.register("iris", b"second")

    promoted = cloud("registry", "--registry", AZUREML_URI, "promote", "iris", "1")
    assert promoted.returncode == 0, promoted.stderr
    listed = cloud("registry", "--registry", AZUREML_URI, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(e["version"], e["aliases"]) for e in json.loads(listed.stdout)] == [("1", ["production"]), ("2", [])]
    assert json.loads(listed.stdout)[0]["metrics"] == {"accuracy": 0.9}
    assert (state / "models").is_dir() and not list(tmp_path.glob("registry"))

    env.pop("AZUREML_FAKE_STATE")  # without the variable the site hook does nothing: no stand-in
    unguarded = cloud("registry", "--registry", "folder", "list", "--json")
    assert unguarded.returncode == 0 and json.loads(unguarded.stdout) == []


@pytest.mark.slow
def test_two_training_processes_register_once_in_azure_ml(tmp_path: Path) -> None:
    """Two `train` runs in separate processes (fresh hash seeds) on the same data: one version, then unchanged."""
    from tests.cloud.conftest import write_sensor_csv

    data = write_sensor_csv(tmp_path / "sensors.csv")
    env = subprocess_env(tmp_path / "state")
    env.pop("PYTHONHASHSEED", None)
    args = [sys.executable, "-m", "cloud", "train", "--data", str(data), "--target", "status", "--name", "sensors"]
    args += ["--trials", "2", "--cv", "2", "--no-progress", "--registry", AZUREML_URI]
    outputs = []
    for run in ("run-1", "run-2"):
        done = subprocess.run(
            [*args, "--out", str(tmp_path / run)], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)

    assert "registered sensors version 1 " in outputs[0]
    assert "unchanged: sensors version 1\n" in outputs[1]
    assert (tmp_path / "run-1" / "model.onnx").read_bytes() == (tmp_path / "run-2" / "model.onnx").read_bytes()
    assert [v["name"] for v in AzureMLService(tmp_path / "state").versions("sensors")] == ["1"]


def test_the_site_hook_lets_local_servers_through_and_stops_outside_ones(tmp_path: Path) -> None:
    """With the hook on, Azurite or a stand-in IoT Hub on 127.0.0.1 stay reachable; the internet does not."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"local"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        script = (
            "import requests, sys\n"
            f"print(requests.get('http://127.0.0.1:{server.server_port}/x', timeout=30).text)\n"
            "import socket\n"
            "try:\n    socket.create_connection(('example.com', 443), timeout=5)\nexcept Exception as e:\n"
            "    print(type(e).__name__)\n"
            # Every other requests call (the Azure SDKs' transport) is answered by the stand-in, never sent.
            "print(requests.get('https://example.com/', timeout=5).status_code)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=subprocess_env(tmp_path / "state"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["local", "OutsideConnection", "404"]
