"""The IoT Hub client retries what it may: 429 (honouring Retry-After), 5xx and lost connections with bounded,
jittered backoff, and only where repeating the call cannot change the outcome. A local server scripts the
hub's answers; the client's sleep is recorded instead of slept."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

from cloud.releases.errors import IoTHubError
from cloud.releases.iothub import HubCredentials, IoTHubClient
from cloud.releases.retry import Idempotency, Outcome, RetryPolicy, parse_retry_after
from tests.release.hub_server import Answer, Captured, HubServer

KEY = base64.b64encode(b"iothubowner-test-key-0123456789abcdef").decode()
CONNECTION_STRING = f"HostName=contoso-hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
THROTTLED = {"Message": "ErrorCode:ThrottlingException;IoT Hub throttling limits have been exceeded"}
UNAVAILABLE = {"Message": "ErrorCode:ServiceUnavailable;try again"}
CONFIGURATION = {
    "id": "models-iris-3",
    "content": {"modulesContent": {"edge-inference": {"properties.desired.models": {}}}},
    "targetCondition": "tags.environment='prod'",
    "priority": 10,
}


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def scripted(answers: list[Answer], then: Answer | None = None) -> Callable[[Captured], Answer]:
    """Answer from the list in order, then ``then`` (or the last answer) for ever."""
    queue = list(answers)

    def respond(request: Captured) -> Answer:
        if queue:
            return queue.pop(0)
        return then or answers[-1]

    return respond


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client_for(sleeps: Sleeps) -> Iterator[Callable[..., IoTHubClient]]:
    clients: list[IoTHubClient] = []

    def make(url: str, **policy: Any) -> IoTHubClient:
        credentials = HubCredentials.from_connection_string(CONNECTION_STRING)
        retry = RetryPolicy(random=random.Random(7), **policy)
        client = IoTHubClient(credentials, endpoint=url, retry=retry, sleep=sleeps)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_a_429_is_retried_after_the_retry_after_seconds(client_for: Any, sleeps: Sleeps) -> None:
    answers = [Answer(429, THROTTLED, {"Retry-After": "4"}), Answer(200, [{"deviceId": "a"}])]
    with HubServer(scripted(answers)) as server:
        client = client_for(server.url)
        assert client.query("SELECT * FROM devices.modules") == [{"deviceId": "a"}]
    assert len(server.requests) == 2 and client.retries == 1
    [waited] = sleeps
    assert 4 <= waited <= 4.5  # the server's figure, plus a little jitter


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 12, 4, 19, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0
    assert parse_retry_after("12", now) == 12
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_5xx_is_retried_with_jittered_exponential_backoff(client_for: Any, sleeps: Sleeps) -> None:
    answers = [Answer(503, UNAVAILABLE), Answer(500, UNAVAILABLE), Answer(502), Answer(504), Answer(200, {"id": "c"})]
    with HubServer(scripted(answers)) as server:
        client = client_for(server.url, base_delay=1.0, max_delay=3.0)
        assert client.get_configuration("c") == {"id": "c"}
    assert len(server.requests) == 5 and client.retries == 4
    # Full jitter: each wait is drawn below min(max_delay, base * 2^(n-1)).
    for attempt, waited in enumerate(sleeps, start=1):
        assert 0 <= waited <= min(3.0, 2 ** (attempt - 1))
    assert len(set(sleeps)) == 4  # jittered, not a fixed schedule


def test_retries_are_bounded_in_count(client_for: Any, sleeps: Sleeps) -> None:
    with HubServer(scripted([Answer(503, UNAVAILABLE)])) as server:
        client = client_for(server.url, max_attempts=4)
        with pytest.raises(IoTHubError) as info:
            client.apply_configuration_content("gw-1", {"modulesContent": {}})
    assert len(server.requests) == 4 and len(sleeps) == 3
    assert info.value.status == 503 and "gave up after 4 tries" in info.value.message


def test_retries_are_bounded_in_time(client_for: Any, sleeps: Sleeps) -> None:
    answers = [Answer(429, THROTTLED, {"Retry-After": "30"})]
    with HubServer(scripted(answers)) as server:
        client = client_for(server.url, budget_seconds=60)
        with pytest.raises(IoTHubError) as info:
            client.query("SELECT * FROM devices.modules")
    # 30 s + 30 s fit the budget only without jitter: the second wait would pass it, so it stops there.
    assert len(server.requests) == 2 and len(sleeps) == 1
    assert info.value.status == 429 and "exceeds the 60s retry budget" in info.value.message


def test_client_errors_are_not_retried(client_for: Any, sleeps: Sleeps) -> None:
    bad = Answer(400, {"Message": "ErrorCode:ArgumentInvalid;bad query"})
    with HubServer(scripted([bad])) as server, pytest.raises(IoTHubError) as info:
        client_for(server.url).query("SELECT nonsense")
    assert len(server.requests) == 1 and sleeps == [] and info.value.status == 400


def test_a_create_the_hub_did_before_failing_is_recognised(client_for: Any, sleeps: Sleeps) -> None:
    """PUT without If-Match is a create: the first try's 500 may hide a success, so the retry's 409 is
    checked against what the hub holds, and accepted only if it is what we sent."""
    stored = {**CONFIGURATION, "etag": "MQ==", "createdTimeUtc": "2026-12-04T19:00:00Z"}

    def respond(request: Captured) -> Answer:
        if request.method == "GET":
            return Answer(200, stored)
        puts = [r for r in server.requests if r.method == "PUT"]
        return Answer(500, UNAVAILABLE) if len(puts) == 1 else Answer(409, {"Message": "ErrorCode:Conflict;exists"})

    with HubServer(respond) as server:
        assert client_for(server.url).put_configuration(CONFIGURATION) == stored
    assert [r.method for r in server.requests] == ["PUT", "PUT", "GET"]
    assert "if-match" not in server.requests[1].headers


def test_a_create_that_conflicts_with_other_content_fails(client_for: Any) -> None:
    other = {**CONFIGURATION, "priority": 11, "etag": "Mg=="}
    conflict = Answer(409, {"Message": "ErrorCode:Conflict;exists"})

    def respond(request: Captured) -> Answer:
        if request.method == "GET":
            return Answer(200, other)
        puts = [r for r in server.requests if r.method == "PUT"]
        return Answer(503, UNAVAILABLE) if len(puts) == 1 else conflict

    with HubServer(respond) as server, pytest.raises(IoTHubError) as info:
        client_for(server.url).put_configuration(CONFIGURATION)
    assert info.value.status == 409


def test_a_409_on_the_first_try_of_a_create_is_an_error_at_once(client_for: Any) -> None:
    exists = Answer(409, {"Message": "ErrorCode:ConfigurationAlreadyExists;exists"})
    with HubServer(scripted([exists])) as server, pytest.raises(IoTHubError) as info:
        client_for(server.url).put_configuration(CONFIGURATION)
    assert info.value.status == 409 and len(server.requests) == 1  # no GET: nothing of ours to reconcile


def test_a_delete_whose_first_try_went_through(client_for: Any) -> None:
    gone = Answer(404, {"Message": "ErrorCode:ConfigurationNotFound;no such configuration"})
    with HubServer(scripted([Answer(503, UNAVAILABLE), gone])) as server:
        client_for(server.url).delete_configuration("models-iris-3")
    assert [r.method for r in server.requests] == ["DELETE", "DELETE"]
    with HubServer(scripted([gone])) as server, pytest.raises(IoTHubError) as info:
        client_for(server.url).delete_configuration("models-iris-3")
    assert info.value.status == 404  # never deleted by us: the caller hears about it


def test_an_unreachable_hub_is_retried_then_reported(client_for: Any, sleeps: Sleeps) -> None:
    with HubServer() as server:
        url = server.url
    client = client_for(url, max_attempts=3)
    with pytest.raises(IoTHubError, match=r"cannot reach .*\(gave up after 3 tries\)"):
        client.update_module_twin("gw-1", "edge-inference", {"properties": {"desired": {}}})
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("idempotency", "outcome", "retried"),
    [
        (Idempotency.IDEMPOTENT, Outcome.REFUSED, True),
        (Idempotency.IDEMPOTENT, Outcome.MAYBE_DONE, True),
        (Idempotency.CREATE, Outcome.MAYBE_DONE, True),
        (Idempotency.UNSAFE, Outcome.REFUSED, True),
        (Idempotency.UNSAFE, Outcome.MAYBE_DONE, False),
    ],
)
def test_what_may_be_retried(idempotency: Idempotency, outcome: Outcome, retried: bool) -> None:
    assert RetryPolicy().may_retry(idempotency, outcome) is retried


def test_a_call_not_known_to_be_idempotent_is_not_retried_after_a_5xx(client_for: Any, sleeps: Sleeps) -> None:
    """The client's default for a call is 'unsafe': a new call must say it is idempotent to get 5xx retries."""
    with HubServer(scripted([Answer(500, UNAVAILABLE), Answer(200, {})])) as server:
        client = client_for(server.url)
        with pytest.raises(IoTHubError) as info:
            client._request("POST", "/devices/gw-1/methods", {"methodName": "reboot"})
    assert info.value.status == 500 and len(server.requests) == 1 and sleeps == []
    with HubServer(scripted([Answer(429, THROTTLED, {"Retry-After": "1"}), Answer(200, {})])) as server:
        client_for(server.url)._request("POST", "/devices/gw-1/methods", {"methodName": "reboot"})
    assert len(server.requests) == 2  # a 429 means the hub did nothing: safe to send again
