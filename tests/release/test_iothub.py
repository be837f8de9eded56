"""The IoT Hub REST client and the CLI that uses it, against a local server capturing every request."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.releases.errors import IoTHubError
from cloud.releases.iothub import API_VERSION, HubCredentials, IoTHubClient
from tests.release.conftest import VARIABLES
from tests.release.hub_server import Answer, Captured, HubServer

KEY = base64.b64encode(b"iothubowner-test-key-0123456789abcdef").decode()
CONNECTION_STRING = f"HostName=contoso-hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
NOW = 1_800_000_000
RELEASE = {
    "version": "3",
    "uri": "https://contoso.blob.core.windows.net/models/iris/3/model.onnx?sp=r&sig=x",
    "sha256": hashlib.sha256(b"m").hexdigest(),
    "size": 1,
    "signature": "c2ln",
}


def assert_signed(request: Captured, now: int | None = None) -> None:
    """Check the SAS token the way IoT Hub does: HMAC-SHA256 of "<url-encoded host>\\n<expiry>"."""
    scheme, _, fields = request.headers["authorization"].partition(" ")
    assert scheme == "SharedAccessSignature"
    token = dict(part.split("=", 1) for part in fields.split("&"))
    assert set(token) == {"sr", "sig", "se", "skn"}
    assert token["sr"] == "contoso-hub.azure-devices.net" and token["skn"] == "iothubowner"
    if now is not None:
        assert int(token["se"]) == now + 3600
    expected = hmac.new(base64.b64decode(KEY), f"{token['sr']}\n{token['se']}".encode(), hashlib.sha256).digest()
    assert base64.b64decode(urllib.parse.unquote(token["sig"])) == expected


def assert_common(request: Captured, method: str, path: str) -> None:
    assert (request.method, request.path) == (method, path)
    assert request.query == {"api-version": [API_VERSION]}
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["accept"] == "application/json"


@pytest.fixture
def client_of() -> Iterator[Any]:
    clients: list[IoTHubClient] = []

    def make(server: HubServer) -> IoTHubClient:
        credentials = HubCredentials.from_connection_string(CONNECTION_STRING)
        client = IoTHubClient(credentials, endpoint=server.url, clock=lambda: NOW)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_the_three_calls_on_the_wire(client_of: Any) -> None:
    configuration = {"id": "models-iris-3", "content": {"modulesContent": {"m": {}}}, "priority": 5}
    manifest: dict[str, Any] = {"modulesContent": {"$edgeAgent": {}, "$edgeHub": {}}}
    patch = {"properties": {"desired": {"models": {"iris": RELEASE, "old": None}}}}

    def respond(request: Captured) -> Answer:
        if request.method == "PUT":
            return Answer(200, {**request.body, "etag": "MQ=="})
        if request.method == "PATCH":
            return Answer(200, {"deviceId": "dev 1", "properties": {"desired": {"$version": 8}}})
        return Answer(204)

    with HubServer(respond) as server:
        client = client_of(server)
        created = client.put_configuration(configuration)
        client.apply_configuration_content("dev 1", manifest)
        twin = client.update_module_twin("dev 1", "edge-inference", patch, etag="AAAAAAAAAAE=")
    put, post, patch_request = server.requests
    assert created["etag"] == "MQ==" and twin["properties"]["desired"]["$version"] == 8

    assert_common(put, "PUT", "/configurations/models-iris-3")
    assert put.body == configuration and "if-match" not in put.headers
    assert_common(post, "POST", "/devices/dev%201/applyConfigurationContent")
    assert post.body == manifest
    assert_common(patch_request, "PATCH", "/twins/dev%201/modules/edge-inference")
    assert patch_request.body == patch  # null kept: it removes the model
    assert patch_request.headers["if-match"] == '"AAAAAAAAAAE="'
    for request in server.requests:
        assert_signed(request, NOW)


def test_update_with_etag_star_and_configuration_update_with_etag(client_of: Any) -> None:
    with HubServer() as server:
        client = client_of(server)
        client.update_module_twin("d", "m", {"properties": {"desired": {}}})
        client.put_configuration({"id": "c"}, etag="MQ==")
    assert server.requests[0].headers["if-match"] == "*"
    assert server.requests[1].headers["if-match"] == '"MQ=="'


def test_query_follows_continuation_tokens(client_of: Any) -> None:
    pages = {None: ([{"deviceId": "a"}], "token-2"), "token-2": ([{"deviceId": "b"}], None)}

    def respond(request: Captured) -> Answer:
        items, following = pages[request.headers.get("x-ms-continuation")]
        return Answer(200, items, {"x-ms-continuation": following} if following else {})

    with HubServer(respond) as server:
        rows = client_of(server).query("SELECT * FROM devices.modules WHERE moduleId = 'edge-inference'")
    assert [r["deviceId"] for r in rows] == ["a", "b"]
    first, second = server.requests
    assert_common(first, "POST", "/devices/query")
    assert first.body == {"query": "SELECT * FROM devices.modules WHERE moduleId = 'edge-inference'"}
    assert first.headers["x-ms-max-item-count"] == "1000" and "x-ms-continuation" not in first.headers
    assert second.headers["x-ms-continuation"] == "token-2"


def test_hub_errors_carry_the_status_and_message_but_no_secret(client_of: Any) -> None:
    def respond(request: Captured) -> Answer:
        return Answer(412, {"Message": "ErrorCode:PreconditionFailed;Precondition failed: etag mismatch"})

    with HubServer(respond) as server, pytest.raises(IoTHubError) as info:
        client_of(server).update_module_twin("d", "m", {}, etag="stale")
    assert info.value.status == 412 and "412" in info.value.message and "etag mismatch" in info.value.message
    assert KEY not in info.value.message and "SharedAccessSignature" not in info.value.message


def test_connection_strings() -> None:
    with pytest.raises(IoTHubError, match="device connection string"):
        HubCredentials.from_connection_string(f"HostName=h;DeviceId=d;SharedAccessKey={KEY}")
    with pytest.raises(IoTHubError, match="lacks SharedAccessKeyName"):
        HubCredentials.from_connection_string(f"HostName=h;SharedAccessKey={KEY}")
    credentials = HubCredentials.from_connection_string(CONNECTION_STRING)
    assert credentials.hub_name == "contoso-hub"
    assert KEY not in repr(credentials)


def test_unreachable_hub(client_of: Any) -> None:
    with HubServer() as server:
        url = server.url
    credentials = HubCredentials.from_connection_string(CONNECTION_STRING)
    client = IoTHubClient(credentials, endpoint=url, sleep=lambda seconds: None)
    with pytest.raises(IoTHubError, match="cannot reach"):
        client.apply_configuration_content("d", {})
    client.close()


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", CONNECTION_STRING)


def release_file(tmp_path: Path) -> Path:
    path = tmp_path / "release.json"
    path.write_text(json.dumps({"iris": RELEASE}))
    return path


def test_cli_applies_a_manifest_to_a_device(
    tmp_path: Path, hub_env: None, schemas: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deployment.json"
    with HubServer(lambda r: Answer(204)) as server:
        args = ["deploy", "manifest", "--release", str(release_file(tmp_path)), "--platform", "amd64"]
        args += ["--out", str(out), "--schema-dir", str(schemas.directory), "--device", "plant-7-gw"]
        args += ["--apply", "--hub-endpoint", server.url, *(f"--set={k}={v}" for k, v in VARIABLES.items())]
        assert main(args) == 0, capsys.readouterr().err
    [request] = server.requests
    assert_common(request, "POST", "/devices/plant-7-gw/applyConfigurationContent")
    assert_signed(request)
    assert request.body == json.loads(out.read_text())
    stdout = capsys.readouterr().out
    assert f"az iot edge set-modules --hub-name contoso-hub --device-id plant-7-gw --content {out}" in stdout
    assert KEY not in stdout and "applied to device plant-7-gw" in stdout


def test_cli_creates_a_layered_deployment(tmp_path: Path, hub_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "layered.json"
    with HubServer(lambda r: Answer(200, {**r.body, "etag": "MQ=="})) as server:
        args = ["deploy", "layered", "--release", str(release_file(tmp_path)), "--id", "models-iris-3"]
        args += ["--target-condition", "tags.site='plant-7'", "--priority", "10", "--out", str(out)]
        args += ["--label", "release=iris-3", "--apply", "--hub-endpoint", server.url]
        assert main(args) == 0, capsys.readouterr().err
    [request] = server.requests
    assert_common(request, "PUT", "/configurations/models-iris-3")
    assert_signed(request)
    assert request.body == json.loads(out.read_text())
    assert request.body["content"] == {
        "modulesContent": {"edge-inference": {"properties.desired.models": {"iris": RELEASE}}}
    }
    assert request.body["labels"] == {"release": "iris-3"} and request.body["priority"] == 10
    stdout = capsys.readouterr().out
    assert "az iot edge deployment create --layered --hub-name contoso-hub --deployment-id models-iris-3" in stdout
    assert "created deployment models-iris-3 (etag MQ==)" in stdout


def test_cli_patches_a_module_twin_with_if_match(
    tmp_path: Path, hub_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"properties": {"desired": {"$version": 12}}}
    with HubServer(lambda r: Answer(200, answer)) as server:
        args = ["deploy", "twin", "--release", str(release_file(tmp_path)), "--remove", "wine", "--device", "gw-1"]
        args += ["--etag", "AAAAAAAAAAI=", "--apply", "--hub-endpoint", server.url]
        assert main(args) == 0, capsys.readouterr().err
    [request] = server.requests
    assert_common(request, "PATCH", "/twins/gw-1/modules/edge-inference")
    assert request.headers["if-match"] == '"AAAAAAAAAAI="'
    assert request.body == {"properties": {"desired": {"models": {"iris": RELEASE, "wine": None}}}}
    stdout = capsys.readouterr().out
    assert "az iot hub module-twin update --hub-name contoso-hub --device-id gw-1 --module-id edge-inference" in stdout
    assert "patched gw-1/edge-inference (desired $version 12)" in stdout


def test_cli_without_a_connection_string_explains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("IOTHUB_CONNECTION_STRING", raising=False)
    args = ["deploy", "twin", "--release", str(release_file(tmp_path)), "--device", "gw-1", "--apply"]
    assert main(args) == 6
    assert "IOTHUB_CONNECTION_STRING" in capsys.readouterr().err


def module_twin(device: str, desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    return {
        "deviceId": device,
        "moduleId": "edge-inference",
        "properties": {"desired": {"models": desired}, "reported": {"models": reported}},
    }


def test_fleet_status_reports_versions_and_failures(hub_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    twins = [
        module_twin("gw-1", {"iris": {"version": "3"}}, {"iris": {"state": "active", "activeVersion": "3",
                                                                    "desiredVersion": "3"}}),
        module_twin("gw-2", {"iris": {"version": "3"}}, {"iris": {"state": "failed", "activeVersion": "2",
                                                                    "desiredVersion": "3",
                                                                    "error": "signature does not match"}}),
        module_twin("gw-3", {"iris": {"version": "3"}}, {"iris": {"state": "active", "activeVersion": "2",
                                                                    "desiredVersion": "2"}}),
    ]  # fmt: skip
    with HubServer(lambda r: Answer(200, twins)) as server:
        code = main(["fleet", "status", "--json", "--hub-endpoint", server.url])
    out, err = capsys.readouterr()
    assert code == 1  # a device failed
    [request] = server.requests
    assert_common(request, "POST", "/devices/query")
    assert request.body == {"query": "SELECT * FROM devices.modules WHERE moduleId = 'edge-inference'"}
    status = json.loads(out)
    assert status["summary"]["iris"]["active"] == {"3": 1, "2": 2}
    assert status["summary"]["iris"]["failed"] == {"gw-2": "signature does not match"}
    assert status["summary"]["iris"]["pending"] == ["gw-3"]  # still on 2, not yet tried 3
    assert "az iot hub query --hub-name contoso-hub" in err

    with HubServer(lambda r: Answer(200, twins[:1])) as server:
        assert main(["fleet", "status", "--hub-endpoint", server.url]) == 0
    table = capsys.readouterr().out
    assert "gw-1    iris   active  3       3" in table and "iris: active v3: 1; failed 0; pending 0" in table


def test_configuration_get_list_and_delete_on_the_wire(client_of: Any) -> None:
    def respond(request: Captured) -> Answer:
        if request.method == "GET" and request.path == "/configurations":
            return Answer(200, [{"id": "models-iris-3"}])
        if request.method == "GET":
            return Answer(404, {"Message": "ErrorCode:ConfigurationNotFound;no such configuration"})
        return Answer(204)

    with HubServer(respond) as server:
        client = client_of(server)
        assert client.list_configurations(top=20) == [{"id": "models-iris-3"}]
        assert client.get_configuration("models iris") is None
        client.delete_configuration("models-iris-3", etag="MQ==")
    listing, get, delete = server.requests
    assert (listing.method, listing.path) == ("GET", "/configurations")
    assert listing.query == {"top": ["20"], "api-version": [API_VERSION]}
    assert (get.method, get.path, get.body) == ("GET", "/configurations/models%20iris", None)
    assert (delete.method, delete.path) == ("DELETE", "/configurations/models-iris-3")
    assert delete.headers["if-match"] == '"MQ=="' and delete.body is None
    for request in server.requests:
        assert_signed(request, NOW)
