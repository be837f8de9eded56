"""A thin IoT Hub service REST client: the few calls a rollout needs, signed with a SAS token.

We do not depend on ``azure-iot-hub``: it pins the archived ``uamqp``. The requests follow what that SDK
sends (same paths, api-version, headers and SAS token format).
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

API_VERSION = "2021-04-12"
CONNECTION_STRING_ENV = "IOTHUB_CONNECTION_STRING"
TOKEN_TTL_SECONDS = 3600
USER_AGENT = "edge-inference-cloud/0.1"
MAX_QUERY_PAGES = 1000
QUERY_PAGE_SIZE = 100
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
    ) -> None:
        self.credentials = credentials
        self.endpoint = (endpoint or f"https://{credentials.hostname}").rstrip("/")
        self._clock = clock
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> IoTHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put_configuration(self, configuration: dict[str, Any], etag: str | None = None) -> dict[str, Any]:
        """Create (or, with the etag, update) a deployment: ``PUT /configurations/{id}``."""
        headers = {"If-Match": _if_match(etag)} if etag else {}
        path = f"/configurations/{_quote(configuration['id'])}"
        return self._json(self._request("PUT", path, configuration, headers))

    def get_configuration(self, configuration_id: str) -> dict[str, Any] | None:
        """One configuration (``GET /configurations/{id}``), or None when the hub has no such id."""
        try:
            return self._json(self._request("GET", f"/configurations/{_quote(configuration_id)}", None))
        except IoTHubError as error:
            if error.status == 404:
                return None
            raise

    def list_configurations(self, top: int = MAX_CONFIGURATIONS) -> list[dict[str, Any]]:
        """All configurations (``GET /configurations?top=N``); the service does not page this list."""
        response = self._request("GET", "/configurations", None, params={"top": str(top)})
        listing = response.json()
        if not isinstance(listing, list):
            raise IoTHubError("IoT Hub answered the configuration list with something other than a list")
        return [item for item in listing if isinstance(item, dict)]

    def delete_configuration(self, configuration_id: str, etag: str = "*") -> None:
        """``DELETE /configurations/{id}`` with If-Match (``*``: whatever its etag)."""
        path = f"/configurations/{_quote(configuration_id)}"
        self._request("DELETE", path, None, {"If-Match": _if_match(etag)})

    def apply_configuration_content(self, device_id: str, content: dict[str, Any]) -> None:
        """Set one device's modules: ``POST /devices/{id}/applyConfigurationContent`` (az iot edge set-modules)."""
        self._request("POST", f"/devices/{_quote(device_id)}/applyConfigurationContent", content)

    def update_module_twin(
        self, device_id: str, module_id: str, patch: dict[str, Any], etag: str = "*"
    ) -> dict[str, Any]:
        """Merge ``patch`` into a module twin: ``PATCH /twins/{dev}/modules/{mod}`` with If-Match."""
        path = f"/twins/{_quote(device_id)}/modules/{_quote(module_id)}"
        return self._json(self._request("PATCH", path, patch, {"If-Match": _if_match(etag)}))

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run an IoT Hub query (``POST /devices/query``), following continuation tokens."""
        items: list[dict[str, Any]] = []
        continuation: str | None = None
        for _ in range(MAX_QUERY_PAGES):
            headers = {"x-ms-max-item-count": str(QUERY_PAGE_SIZE)}
            if continuation:
                headers["x-ms-continuation"] = continuation
            response = self._request("POST", "/devices/query", {"query": sql}, headers)
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
        try:
            if body is None:
                response = self._http.request(method, url, headers=headers)
            else:
                response = self._http.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise IoTHubError(f"{method} {path}: cannot reach {self.endpoint}: {type(error).__name__}") from None
        if response.status_code >= 400:
            raise IoTHubError(
                f"{method} {path}: IoT Hub answered {response.status_code}: {_hub_message(response)}",
                response.status_code,
            )
        return response

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
