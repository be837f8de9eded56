"""A thin IoT Hub service REST client: the few calls a rollout needs, signed with a SAS token.

We do not depend on ``azure-iot-hub``: it pins the archived ``uamqp``. The requests follow what that SDK
sends (same paths, api-version, headers and SAS token format).

Every call is retried after a 429 (honouring ``Retry-After``) and, when repeating it cannot change the
outcome, after a 5xx or a lost connection, with bounded exponential backoff and jitter (``retry.py``):

| call | method | idempotency |
| --- | --- | --- |
| get_configuration, list_configurations, query | GET / POST query | idempotent (reads) |
| delete_configuration | DELETE + If-Match | idempotent; a 404 on a retry means our first try deleted it |
| update_module_twin | PATCH + If-Match | idempotent (merge patch; with an etag a repeat gets 412) |
| apply_configuration_content | POST | idempotent (replaces the device's whole content) |
| put_configuration with etag | PUT + If-Match | idempotent (a repeat gets 412, never a second write) |
| put_configuration, no etag | PUT (create) | a 409 on a retry is accepted only if the hub holds what we sent |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cloud.releases.errors import IoTHubError
from cloud.releases.retry import TRANSIENT_STATUSES, Idempotency, Outcome, RetryPolicy, parse_retry_after

API_VERSION = "2021-04-12"
CONNECTION_STRING_ENV = "IOTHUB_CONNECTION_STRING"
TOKEN_TTL_SECONDS = 3600
USER_AGENT = "edge-inference-cloud/0.1"
MAX_QUERY_PAGES = 1000
# "The query object is instantiated with a page size (up to 1000)" (IoT Hub query language, "Query examples
# with the service SDKs"); x-ms-max-item-count: "The service may use a different value if the value
# specified is not acceptable" (REST: Query - Get Twins), so we follow whatever page sizes come back.
QUERY_PAGE_SIZE = 1000
# Layered deployments count against "100 deployments (including layered deployments) per paid SKU hub"
# (IoT Hub quotas and throttling, "Other limits"); GET /configurations?top= is capped there too.
MAX_CONFIGURATIONS = 100


@dataclass(frozen=True)
class HubCredentials:
    hostname: str
    key_name: str
    key: str = field(repr=False)  # base64 shared access key: never log or print it

    @classmethod
    def from_connection_string(cls, connection_string: str) -> HubCredentials:
        fields = {}
        for part in connection_string.strip().split(";"):
            name, sep, value = part.partition("=")
            if sep:
                fields[name.strip()] = value.strip()
        if "DeviceId" in fields:
            raise IoTHubError("that is a device connection string; use a hub policy's (e.g. 'iothubowner')")
        missing = [n for n in ("HostName", "SharedAccessKeyName", "SharedAccessKey") if not fields.get(n)]
        if missing:
            raise IoTHubError(f"the IoT Hub connection string lacks {', '.join(missing)}")
        try:
            base64.b64decode(fields["SharedAccessKey"], validate=True)
        except ValueError:
            raise IoTHubError("the IoT Hub connection string's SharedAccessKey is not base64") from None
        return cls(fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"])

    @property
    def hub_name(self) -> str:
        return self.hostname.split(".", 1)[0]


def sas_token(hostname: str, key_name: str, key: str, expiry: int) -> str:
    """``SharedAccessSignature sr=&sig=&se=&skn=``: HMAC-SHA256 of ``"<url-encoded host>\\n<expiry>"``."""
    resource = urllib.parse.quote(hostname, safe="")
    signed = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(signed).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn={key_name}"


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _if_match(etag: str) -> str:
    return etag if etag == "*" or etag.startswith('"') else f'"{etag}"'


class IoTHubClient:
    def __init__(
        self,
        credentials: HubCredentials,
        *,
        endpoint: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.credentials = credentials
        self.endpoint = (endpoint or f"https://{credentials.hostname}").rstrip("/")
        self._clock = clock
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.retries = 0  # how many times a call was tried again (throttling, 5xx, lost connections)
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> IoTHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put_configuration(self, configuration: dict[str, Any], etag: str | None = None) -> dict[str, Any]:
        """Create (or, with the etag, update) a deployment: ``PUT /configurations/{id}``."""
        path = f"/configurations/{_quote(configuration['id'])}"
        if etag:
            headers = {"If-Match": _if_match(etag)}
            return self._json(self._request("PUT", path, configuration, headers, idempotency=Idempotency.IDEMPOTENT))
        response = self._request("PUT", path, configuration, idempotency=Idempotency.CREATE, done_if={409})
        if response.status_code != 409:
            return self._json(response)
        # A try we did not hear back from created it: accept that only if the hub holds what we sent.
        stored = self.get_configuration(str(configuration["id"]))
        if stored is not None and all(
            stored.get(name) == configuration.get(name) for name in ("content", "targetCondition", "priority")
        ):
            return stored
        raise IoTHubError(f"PUT {path}: IoT Hub answered 409: {_hub_message(response)}", 409)

    def get_configuration(self, configuration_id: str) -> dict[str, Any] | None:
        """One configuration (``GET /configurations/{id}``), or None when the hub has no such id."""
        try:
            path = f"/configurations/{_quote(configuration_id)}"
            return self._json(self._request("GET", path, None, idempotency=Idempotency.IDEMPOTENT))
        except IoTHubError as error:
            if error.status == 404:
                return None
            raise

    def list_configurations(self, top: int = MAX_CONFIGURATIONS) -> list[dict[str, Any]]:
        """All configurations (``GET /configurations?top=N``); the service does not page this list."""
        response = self._request(
            "GET", "/configurations", None, params={"top": str(top)}, idempotency=Idempotency.IDEMPOTENT
        )
        listing = response.json()
        if not isinstance(listing, list):
            raise IoTHubError("IoT Hub answered the configuration list with something other than a list")
        return [item for item in listing if isinstance(item, dict)]

    def delete_configuration(self, configuration_id: str, etag: str = "*") -> None:
        """``DELETE /configurations/{id}`` with If-Match (``*``: whatever its etag)."""
        path = f"/configurations/{_quote(configuration_id)}"
        headers = {"If-Match": _if_match(etag)}
        self._request("DELETE", path, None, headers, idempotency=Idempotency.IDEMPOTENT, done_if={404})

    def apply_configuration_content(self, device_id: str, content: dict[str, Any]) -> None:
        """Set one device's modules: ``POST /devices/{id}/applyConfigurationContent`` (az iot edge set-modules)."""
        path = f"/devices/{_quote(device_id)}/applyConfigurationContent"
        self._request("POST", path, content, idempotency=Idempotency.IDEMPOTENT)

    def update_module_twin(
        self, device_id: str, module_id: str, patch: dict[str, Any], etag: str = "*"
    ) -> dict[str, Any]:
        """Merge ``patch`` into a module twin: ``PATCH /twins/{dev}/modules/{mod}`` with If-Match."""
        path = f"/twins/{_quote(device_id)}/modules/{_quote(module_id)}"
        headers = {"If-Match": _if_match(etag)}
        return self._json(self._request("PATCH", path, patch, headers, idempotency=Idempotency.IDEMPOTENT))

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run an IoT Hub query (``POST /devices/query``), following continuation tokens."""
        items: list[dict[str, Any]] = []
        continuation: str | None = None
        for _ in range(MAX_QUERY_PAGES):
            headers = {"x-ms-max-item-count": str(QUERY_PAGE_SIZE)}
            if continuation:
                headers["x-ms-continuation"] = continuation
            response = self._request(
                "POST", "/devices/query", {"query": sql}, headers, idempotency=Idempotency.IDEMPOTENT
            )
            page = response.json()
            if not isinstance(page, list):
                raise IoTHubError("IoT Hub answered a query with something other than a list")
            items.extend(page)
            continuation = response.headers.get("x-ms-continuation")
            if not continuation:
                return items
        raise IoTHubError(f"query returned more than {MAX_QUERY_PAGES} pages; narrow it")

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        extra_headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        *,
        idempotency: Idempotency = Idempotency.UNSAFE,
        done_if: set[int] | frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Send with retries. A status in ``done_if`` that comes back after a try the hub may have done is
        returned, not raised: the caller decides whether that earlier try did the work."""
        waited = 0.0
        maybe_done = False
        for attempt in range(1, self.retry.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = self._send(method, path, body, extra_headers, params)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                failure = IoTHubError(f"{method} {path}: cannot reach {self.endpoint}: {type(error).__name__}")
                outcome = Outcome.REFUSED
            except httpx.HTTPError as error:
                failure = IoTHubError(f"{method} {path}: cannot reach {self.endpoint}: {type(error).__name__}")
                outcome = Outcome.MAYBE_DONE
            else:
                status = response.status_code
                if status < 400 or (maybe_done and status in done_if):
                    return response
                failure = IoTHubError(f"{method} {path}: IoT Hub answered {status}: {_hub_message(response)}", status)
                if status == 429:
                    outcome = Outcome.REFUSED
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                elif status in TRANSIENT_STATUSES:
                    outcome = Outcome.MAYBE_DONE
                else:
                    raise failure
            if attempt == self.retry.max_attempts or not self.retry.may_retry(idempotency, outcome):
                break
            delay = self.retry.delay(attempt, retry_after)
            if waited + delay > self.retry.budget_seconds:
                failure = IoTHubError(
                    f"{failure.message} (gave up after {attempt} tries and {waited:.1f}s of backoff:"
                    f" the next wait, {delay:.1f}s, exceeds the {self.retry.budget_seconds:.0f}s retry budget)",
                    failure.status,
                )
                raise failure
            maybe_done = maybe_done or outcome is Outcome.MAYBE_DONE
            self.retries += 1
            self._sleep(delay)
            waited += delay
        if attempt > 1:
            raise IoTHubError(f"{failure.message} (gave up after {attempt} tries)", failure.status)
        raise failure

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        extra_headers: dict[str, str] | None,
        params: dict[str, str] | None,
    ) -> httpx.Response:
        expiry = int(self._clock()) + TOKEN_TTL_SECONDS
        headers = {
            "Authorization": sas_token(
                self.credentials.hostname, self.credentials.key_name, self.credentials.key, expiry
            ),
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **(extra_headers or {}),
        }
        query = urllib.parse.urlencode({**(params or {}), "api-version": API_VERSION})
        url = f"{self.endpoint}{path}?{query}"
        if body is None:
            return self._http.request(method, url, headers=headers)
        return self._http.request(method, url, json=body, headers=headers)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if not response.content:
            return {}
        data = response.json()
        return data if isinstance(data, dict) else {"value": data}


def _hub_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(data, dict):
        message = data.get("Message") or data.get("message") or data
        return str(message)[:300]
    return str(data)[:300]
