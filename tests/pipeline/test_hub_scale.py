"""The stand-in hub pages and throttles as IoT Hub does, and the project's client copes: it follows the pages
of a fleet larger than one page and waits out the throttle. The hub's clock is a fake one that the client's
sleep moves forward, so minutes of throttling take milliseconds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.__main__ import main
from cloud.releases.iothub import HubCredentials, IoTHubClient
from cloud.releases.keys import generate_key_pair
from edge_module.release import load_public_keys
from tests.pipeline.local_hub import MODULE, StandInHub
from tests.pipeline.throttle import CONFIGURATIONS, QUERIES, TWIN_READS, TWIN_UPDATES, Throttle, rates
from tests.release.hub_server import HubServer

MODULES_SQL = f"SELECT * FROM devices.modules WHERE moduleId = '{MODULE}'"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def fleet(size: int) -> dict[str, dict[str, str]]:
    return {f"gw-{n:04d}": {"environment": "prod"} for n in range(size)}


def start(tmp_path: Path, devices: dict[str, dict[str, str]], throttle: Throttle | None) -> Iterator[Any]:
    keys = generate_key_pair(tmp_path / "keys", "release")
    trusted = load_public_keys(keys.public_path.read_text())
    hub = StandInHub(tmp_path / "hub" / "state.json", trusted, devices=devices, throttle=throttle)
    with HubServer(hub.respond) as server:
        yield hub, server


def token(hub: StandInHub) -> str:
    expiry = int(time.time()) + 600
    resource = urllib.parse.quote(hub.state["hostname"], safe="")
    signed = hmac.new(base64.b64decode(hub.state["key"]), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(signed).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn={hub.state['keyName']}"


@pytest.fixture
def big_fleet(tmp_path: Path) -> Iterator[Any]:
    yield from start(tmp_path, fleet(1500), None)


def test_a_page_holds_at_most_1000_items(big_fleet: Any) -> None:
    hub, server = big_fleet
    headers = {"Authorization": token(hub), "x-ms-max-item-count": "5000"}
    url = f"{server.url}/devices/query?api-version=2021-04-12"
    first = httpx.post(url, json={"query": MODULES_SQL}, headers=headers, timeout=60)
    assert first.status_code == 200 and len(first.json()) == 1000
    following = {**headers, "x-ms-continuation": first.headers["x-ms-continuation"]}
    second = httpx.post(url, json={"query": MODULES_SQL}, headers=following, timeout=60)
    assert len(second.json()) == 500 and "x-ms-continuation" not in second.headers


def test_fleet_status_follows_the_pages_of_a_large_fleet(
    big_fleet: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, server = big_fleet
    monkeypatch.setenv("IOTHUB_CONNECTION_STRING", hub.connection_string)
    assert main(["fleet", "status", "--json", "--hub-endpoint", server.url]) == 0
    devices = json.loads(capsys.readouterr().out)["devices"]
    assert devices == []  # no model deployed yet: no rows, but every twin was read
    queries = [r for r in server.requests if r.path == "/devices/query"]
    assert [r.headers["x-ms-max-item-count"] for r in queries] == ["1000", "1000"]
    assert "x-ms-continuation" not in queries[0].headers and queries[1].headers["x-ms-continuation"]

    with IoTHubClient(HubCredentials.from_connection_string(hub.connection_string), endpoint=server.url) as client:
        twins = client.query(MODULES_SQL)
    assert sorted(t["deviceId"] for t in twins) == sorted(fleet(1500))  # every device once, none twice


def test_documented_rates_per_tier() -> None:
    """IoT Hub quotas and throttling, Operation throttles (per second)."""
    s1 = rates("S1")
    assert s1[QUERIES] == pytest.approx(20 / 60) and s1[CONFIGURATIONS] == pytest.approx(20 / 60)
    assert (s1[TWIN_READS], s1[TWIN_UPDATES]) == (100, 50)
    assert rates("F1") == s1
    assert rates("S1", 3)[QUERIES] == pytest.approx(1.0)
    assert rates("S2", 4)[TWIN_READS] == 100 and rates("S2", 20)[TWIN_READS] == 200  # higher of 100 or 10/unit
    assert rates("S2", 20)[TWIN_UPDATES] == 100
    s3 = rates("S3", 2)
    assert s3[QUERIES] == pytest.approx(2000 / 60) and (s3[TWIN_READS], s3[TWIN_UPDATES]) == (1000, 500)
    assert s3[CONFIGURATIONS] == pytest.approx(40 / 60)  # the same 20/min/unit on every tier
    for tier, units, reason in [("S4", 1, "unknown IoT Hub tier"), ("F1", 2, "exactly one unit"),
                                ("S1", 0, "at least one unit")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            rates(tier, units)


def test_the_throttle_allows_a_minute_of_calls_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    throttle = Throttle("S1", 1, clock)
    assert all(throttle.admit(QUERIES) is None for _ in range(20))  # a minute's worth: 20 queries
    assert throttle.admit(QUERIES) == 3  # one more every 3 s
    clock.now += 2.9
    assert throttle.admit(QUERIES) == 1
    clock.now += 0.2
    assert throttle.admit(QUERIES) is None
    assert throttle.admit(CONFIGURATIONS) is None  # each operation has its own bucket
    assert throttle.refused[QUERIES] == 2 and throttle.admitted[QUERIES] == 21


def test_the_hub_throttles_queries_and_configurations_with_429_and_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    for hub, server in start(tmp_path, fleet(3), Throttle("S1", 1, clock)):
        auth = {"Authorization": token(hub)}
        url = f"{server.url}/devices/query?api-version=2021-04-12"
        answers = [httpx.post(url, json={"query": MODULES_SQL}, headers=auth) for _ in range(21)]
        assert [a.status_code for a in answers] == [200] * 20 + [429]
        refused = answers[-1]
        assert refused.headers["retry-after"] == "3"
        assert refused.json()["Message"].startswith("ErrorCode:ThrottlingException;")
        listing = f"{server.url}/configurations?api-version=2021-04-12"
        statuses = [httpx.get(listing, headers=auth).status_code for _ in range(21)]
        assert statuses == [200] * 20 + [429]
        twin = f"{server.url}/twins/gw-0000/modules/{MODULE}?api-version=2021-04-12"
        assert httpx.get(twin, headers=auth).status_code == 200  # twin reads: 100/s, far from spent
        unsigned = httpx.post(url, json={"query": MODULES_SQL})
        assert unsigned.status_code == 401  # refused before it counts against the throttle


def test_the_client_waits_out_the_throttle(tmp_path: Path) -> None:
    """25 fleet queries on an S1 hub: 20 go through at once, the other 5 each wait out a Retry-After."""
    clock = FakeClock()
    for hub, server in start(tmp_path, fleet(3), Throttle("S1", 1, clock)):
        credentials = HubCredentials.from_connection_string(hub.connection_string)
        with IoTHubClient(credentials, endpoint=server.url, sleep=clock.sleep) as client:
            results = [client.query(MODULES_SQL) for _ in range(25)]
        assert all(len(twins) == 3 for twins in results)
        assert hub.throttle is not None and client.retries == 5 == hub.throttle.refused[QUERIES]
        # Each wait is the hub's Retry-After (1-3 s) plus under 0.5 s of jitter; 25 queries at 20 a minute
        # plus one per 3 s cannot all pass before 15 s of the hub's time, and only the sleeps move it.
        assert len(clock.slept) == 5 and all(1 <= s <= 3.5 for s in clock.slept)
        assert sum(clock.slept) >= 15
