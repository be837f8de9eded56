"""The stand-in IoT Hub behaves as IoT Hub does: each documented behaviour and each rejection, over real HTTP
with the project's own IoT Hub client (so the SAS token, headers and paths are the real ones)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.releases.errors import IoTHubError
from cloud.releases.iothub import HubCredentials, IoTHubClient, sas_token
from cloud.releases.keys import KeyPair, generate_key_pair, load_private_key
from cloud.releases.publish import publisher_for
from cloud.releases.signing import make_release
from edge_module.release import Release, load_public_keys
from tests.pipeline.local_hub import MODULE, StandInHub
from tests.pipeline.target_condition import parse as parse_condition
from tests.release.hub_server import HubServer
from tests.support.models import iris_classifier

DEVICES = {
    "canary-1": {"ring": "canary", "environment": "prod"},
    "plant-1": {"environment": "prod"},
    "lab-1": {"environment": "lab"},
}


class Running:
    def __init__(self, hub: StandInHub, server: HubServer, client: IoTHubClient) -> None:
        self.hub, self.server, self.client = hub, server, client

    def twins(self) -> dict[str, dict[str, Any]]:
        return {
            t["deviceId"]: t for t in self.client.query(f"SELECT * FROM devices.modules WHERE moduleId = '{MODULE}'")
        }


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys", "release")


def start(tmp_path: Path, keys: KeyPair, **options: Any) -> Iterator[Running]:
    trusted = load_public_keys(keys.public_path.read_text())
    hub = StandInHub(tmp_path / "hub" / "state.json", trusted, devices=DEVICES, **options)
    with HubServer(hub.respond) as server:
        client = IoTHubClient(HubCredentials.from_connection_string(hub.connection_string), endpoint=server.url)
        with client:
            yield Running(hub, server, client)


@pytest.fixture
def running(tmp_path: Path, keys: KeyPair) -> Iterator[Running]:
    yield from start(tmp_path, keys)


@pytest.fixture
def small_hub(tmp_path: Path, keys: KeyPair) -> Iterator[Running]:
    yield from start(tmp_path, keys, max_configurations=2)


def release(tmp_path: Path, keys: KeyPair, version: str) -> Release:
    model = tmp_path / f"iris-{version}.onnx"
    model.write_bytes(iris_classifier().onnx)  # the same bytes under each version number will do here
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    return make_release(
        "iris", version, model, sha256, publisher_for(str(tmp_path / "published")), load_private_key(keys.private_path)
    )


def configuration(identifier: str, condition: str, priority: int, models: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": identifier,
        "schemaVersion": "1.0",
        "labels": {"purpose": "test"},
        "content": {"modulesContent": {MODULE: {"properties.desired.models": models}}},
        "targetCondition": condition,
        "priority": priority,
        "metrics": {"queries": {}},
    }


def error_of(call: Any) -> IoTHubError:
    with pytest.raises(IoTHubError) as info:
        call()
    return info.value


def test_create_get_list_delete_with_etags(running: Running) -> None:
    client = running.client
    created = client.put_configuration(configuration("models-a", "tags.environment='prod'", 10, {}))
    assert created["etag"] and created["createdTimeUtc"] and created["id"] == "models-a"
    assert client.get_configuration("models-a") == created
    assert client.get_configuration("absent") is None
    assert [c["id"] for c in client.list_configurations()] == ["models-a"]

    # Mutable fields change with the current etag, and the etag moves on.
    changed = client.put_configuration(
        {**created, "priority": 11, "labels": {"purpose": "moved"}}, etag=created["etag"]
    )
    assert (changed["priority"], changed["labels"]) == (11, {"purpose": "moved"}) and changed["etag"] != created["etag"]
    assert changed["createdTimeUtc"] == created["createdTimeUtc"]

    stale = error_of(lambda: client.delete_configuration("models-a", created["etag"]))
    assert stale.status == 412 and "PreconditionFailed" in stale.message
    client.delete_configuration("models-a", changed["etag"])
    assert client.list_configurations() == []
    assert error_of(lambda: client.delete_configuration("models-a")).status == 404


def test_content_is_immutable_and_an_existing_id_conflicts(running: Running) -> None:
    client = running.client
    created = client.put_configuration(configuration("models-a", "tags.environment='prod'", 10, {"x": None}))
    again = error_of(lambda: client.put_configuration(configuration("models-a", "tags.environment='prod'", 10, {})))
    assert again.status == 409 and "already exists" in again.message
    new_content = configuration("models-a", "tags.environment='prod'", 10, {"y": None})
    changed = error_of(lambda: client.put_configuration(new_content, etag=created["etag"]))
    assert changed.status == 409 and "content" in changed.message
    stale = error_of(lambda: client.put_configuration({**created, "priority": 3}, etag="bm90LXRoZS1ldGFn"))
    assert stale.status == 412
    missing = error_of(lambda: client.put_configuration(configuration("models-b", "tags.x='y'", 1, {}), etag="*"))
    assert missing.status == 404
    assert client.get_configuration("models-a") == created  # nothing changed by the refused writes


@pytest.mark.parametrize(
    ("identifier", "body_changes", "reason"),
    [
        ("Models-A", {}, "invalid configuration id"),
        ("a" * 129, {}, "invalid configuration id"),
        ("models a", {}, "invalid configuration id"),
        ("models-a", {"id": "models-b"}, "is not the path's"),
        ("models-a", {"priority": -1}, "priority"),
        ("models-a", {"priority": "10"}, "priority"),
        ("models-a", {"content": {}}, "content"),
        ("models-a", {"targetCondition": "tags.environment = "}, "targetCondition"),
        ("models-a", {"targetCondition": "properties.desired.x = 1"}, "targetCondition"),
    ],
)
def test_invalid_configurations_are_refused(
    running: Running, identifier: str, body_changes: dict[str, Any], reason: str
) -> None:
    body = {**configuration(identifier, "tags.environment='prod'", 10, {}), **body_changes}
    url = f"{running.server.url}/configurations/{identifier.replace(' ', '%20')}?api-version=2021-04-12"
    refused = httpx.put(url, json=body, headers={"Authorization": _token(running)})
    message = refused.json()["Message"]
    assert refused.status_code == 400 and message.startswith("ErrorCode:ArgumentInvalid;") and reason in message
    assert running.client.list_configurations() == []


def test_the_configuration_count_limit(small_hub: Running) -> None:
    client = small_hub.client
    client.put_configuration(configuration("c1", "tags.environment='prod'", 1, {}))
    client.put_configuration(configuration("c2", "tags.environment='prod'", 2, {}))
    full = error_of(lambda: client.put_configuration(configuration("c3", "tags.environment='prod'", 3, {})))
    assert full.status == 403 and "maximum of 2" in full.message
    client.delete_configuration("c1")
    client.put_configuration(configuration("c3", "tags.environment='prod'", 3, {}))
    assert [c["id"] for c in client.list_configurations()] == ["c2", "c3"]


def test_target_conditions_priorities_and_the_tie_break(running: Running, tmp_path: Path, keys: KeyPair) -> None:
    client = running.client
    one, two, three = (release(tmp_path, keys, v).as_desired() for v in ("1", "2", "3"))
    client.put_configuration(configuration("fleet-1", "tags.environment='prod'", 10, {"iris": one}))
    client.put_configuration(configuration("canary-2", "tags.ring='canary'", 20, {"iris": two}))
    twins = running.twins()
    assert twins["canary-1"]["properties"]["desired"]["models"]["iris"]["version"] == "2"
    assert twins["plant-1"]["properties"]["desired"]["models"]["iris"]["version"] == "1"
    assert twins["lab-1"]["properties"]["desired"] == {}
    agents = agent_twins(running)
    assert agents["canary-1"]["configurations"] == {
        "fleet-1": {"status": "Targeted"},
        "canary-2": {"status": "Applied"},
    }
    assert agents["plant-1"]["configurations"] == {"fleet-1": {"status": "Applied"}}
    assert agents["lab-1"]["configurations"] == {}
    # Device twins name every configuration that targets them, as the targetedCount metric reads them.
    targeted = "SELECT deviceId FROM devices WHERE configurations.[[fleet-1]].status = 'Targeted'"
    assert sorted(row["deviceId"] for row in client.query(targeted)) == ["canary-1", "plant-1"]
    assert client.query(targeted.replace("fleet-1", "canary-2")) == [{"deviceId": "canary-1"}]

    # Equal priority: the most recently created wins, wherever it is in the list.
    condition = "tags.environment='prod' AND NOT tags.ring='canary'"
    client.put_configuration(configuration("fleet-3", condition, 10, {"iris": three}))
    twins = running.twins()
    assert twins["plant-1"]["properties"]["desired"]["models"]["iris"]["version"] == "3"
    assert agent_twins(running)["plant-1"]["configurations"]["fleet-1"] == {"status": "Targeted"}
    assert twins["canary-1"]["properties"]["desired"]["models"]["iris"]["version"] == "2"


def agent_twins(running: Running) -> dict[str, dict[str, Any]]:
    rows = running.client.query("SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent'")
    return {row["deviceId"]: row for row in rows}


def test_simulated_devices_verify_what_they_apply(running: Running, tmp_path: Path, keys: KeyPair) -> None:
    good = release(tmp_path, keys, "1").as_desired()
    running.client.put_configuration(configuration("fleet-1", "tags.environment='prod'", 10, {"iris": good}))
    reported = running.twins()["plant-1"]["properties"]["reported"]["models"]["iris"]
    assert reported == {"state": "active", "desiredVersion": "1", "activeVersion": "1", "sha256": good["sha256"]}

    forged = {**release(tmp_path, keys, "2").as_desired(), "signature": good["signature"]}
    running.client.put_configuration(configuration("fleet-2", "tags.environment='prod'", 11, {"iris": forged}))
    reported = running.twins()["plant-1"]["properties"]["reported"]["models"]["iris"]
    assert reported["state"] == "failed" and reported["desiredVersion"] == "2" and reported["activeVersion"] == "1"
    assert "signature" in reported["error"]


def test_query_pages_with_continuation_tokens(running: Running) -> None:
    url = f"{running.server.url}/devices/query?api-version=2021-04-12"
    headers = {"Authorization": _token(running), "x-ms-max-item-count": "2"}
    sql = {"query": f"SELECT * FROM devices.modules WHERE moduleId = '{MODULE}'"}
    first = httpx.post(url, json=sql, headers=headers)
    assert first.status_code == 200 and len(first.json()) == 2
    token = first.headers["x-ms-continuation"]
    second = httpx.post(url, json=sql, headers={**headers, "x-ms-continuation": token})
    assert len(second.json()) == 1 and "x-ms-continuation" not in second.headers
    assert {t["deviceId"] for t in first.json() + second.json()} == set(DEVICES)
    # The client follows the tokens by itself.
    assert len(running.twins()) == 3
    bad = httpx.post(url, json=sql, headers={**headers, "x-ms-continuation": "not base64!"})
    assert bad.status_code == 400
    other = httpx.post(url, json={"query": "SELECT * FROM devices WHERE tags.x = 'y'"}, headers=headers)
    assert other.status_code == 400 and "ArgumentInvalid" in other.json()["Message"]


def _token(running: Running) -> str:
    credentials = running.client.credentials
    return sas_token(credentials.hostname, credentials.key_name, credentials.key, int(time.time()) + 60)


def test_requests_need_a_valid_signature_and_api_version(running: Running) -> None:
    url = f"{running.server.url}/configurations"
    assert httpx.get(url, params={"api-version": "2021-04-12"}).status_code == 401
    credentials = running.client.credentials
    wrong_key = base64.b64encode(b"another key entirely, 32 bytes!!").decode()
    forged = sas_token(credentials.hostname, credentials.key_name, wrong_key, 2_000_000_000)
    assert httpx.get(url, params={"api-version": "2021-04-12"}, headers={"Authorization": forged}).status_code == 401
    expired = sas_token(credentials.hostname, credentials.key_name, credentials.key, 1_000_000_000)
    assert httpx.get(url, params={"api-version": "2021-04-12"}, headers={"Authorization": expired}).status_code == 401
    assert httpx.get(url, headers={"Authorization": _token(running)}).status_code == 400


def test_state_survives_a_restart(tmp_path: Path, keys: KeyPair) -> None:
    trusted = load_public_keys(keys.public_path.read_text())
    first = StandInHub(tmp_path / "state.json", trusted, devices=DEVICES)
    with (
        HubServer(first.respond) as server,
        IoTHubClient(HubCredentials.from_connection_string(first.connection_string), endpoint=server.url) as client,
    ):
        client.put_configuration(configuration("c1", "tags.environment='prod'", 1, {}))
    second = StandInHub(tmp_path / "state.json", trusted)
    assert second.connection_string == first.connection_string
    assert list(second.state["configurations"]) == ["c1"]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("tags.environment='prod'", {"canary-1", "plant-1"}),
        ("tags.environment = 'prod' AND tags.ring = 'canary'", {"canary-1"}),
        ("tags.ring='canary' OR tags.environment='lab'", {"canary-1", "lab-1"}),
        ("NOT (tags.environment='prod')", {"lab-1"}),
        ("tags.environment != 'prod'", {"lab-1"}),
        ("deviceId = 'plant-1'", {"plant-1"}),
        ("tags.missing = 'x'", set()),
    ],
)
def test_target_condition_evaluation(condition: str, expected: set[str]) -> None:
    predicate = parse_condition(condition)
    matched = {name for name, tags in DEVICES.items() if predicate({"deviceId": name, "tags": tags})}
    assert matched == expected


@pytest.mark.parametrize("condition", ["", "tags.a", "tags.a = ", "(tags.a='b'", "tags.a = 'b' AND", "tags.a == 'b'"])
def test_unparseable_target_conditions(condition: str) -> None:
    with pytest.raises(ValueError):
        parse_condition(condition)
