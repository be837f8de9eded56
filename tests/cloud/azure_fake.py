"""Stand in for Azure at the HTTP transport: every request the Azure SDKs make goes through requests'
HTTPAdapter.send (azure-core's RequestsTransport, for ARM and for the blob upload client alike), which is
replaced by canned replies. A socket guard fails any connection that is not to 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from azure.core.credentials import AccessToken, AccessTokenInfo
from requests.adapters import HTTPAdapter

if TYPE_CHECKING:
    import pytest

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-edge"
WORKSPACE = "ws-edge"
ACCOUNT = "edgestore"
CONTAINER = "azureml-blobstore-1234"
AZUREML_URI = f"azureml://subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE}"
WORKSPACE_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)


class StaticCredential:
    """An injected TokenCredential: the SDK asks it for a bearer token and never reaches Entra ID."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("test-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.scopes.extend(scopes)
        return AccessTokenInfo("test-token", int(time.time()) + 3600)


@dataclass
class Recorded:
    method: str
    url: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, Any, dict[str, str]]
Route = tuple[str, "re.Pattern[str]", Callable[[Recorded], Reply]]


@dataclass
class FakeAzure:
    routes: list[Route] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    # Checked before the routes (e.g. injected failures); a hook answers with a Reply, or None to pass on.
    before: list[Callable[[Recorded], Reply | None]] = field(default_factory=list)

    def route(self, method: str, pattern: str, reply: Callable[[Recorded], Reply]) -> None:
        self.routes.append((method, re.compile(pattern), reply))

    def handle(self, request: Any) -> Reply:  # a requests.PreparedRequest
        body = request.body
        if body is None:
            data = b""
        elif isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        else:
            data = body.read() if hasattr(body, "read") else b"".join(body)
        url = str(request.url)
        recorded = Recorded(str(request.method), url, url.split("?")[0], dict(request.headers), data)
        self.requests.append(recorded)
        for hook in self.before:
            answer = hook(recorded)
            if answer is not None:
                return answer
        return self.dispatch(recorded)

    def dispatch(self, recorded: Recorded) -> Reply:
        for method, pattern, reply in self.routes:
            if method == recorded.method and pattern.search(recorded.path):
                return reply(recorded)
        return (
            404,
            {"error": {"code": "NotFound", "message": f"no canned reply for {recorded.method} {recorded.url}"}},
            {},
        )

    def summary(self) -> list[tuple[str, str]]:
        return [(r.method, _short(r)) for r in self.requests]

    def add_blob_routes(self) -> None:
        def head(request: Recorded) -> Reply:
            key = request.path
            if key not in self.blobs:
                return 404, b"", {"x-ms-error-code": "BlobNotFound"}
            return 200, b"", {"Content-Length": str(len(self.blobs[key])), **self._meta_headers(key)}

        def put(request: Recorded) -> Reply:
            stamp = {"ETag": '"0x1"', "Last-Modified": "Fri, 27 Nov 2026 05:00:00 GMT"}
            if "comp=metadata" in request.url:
                self.blob_metadata[request.path] = {
                    k[len("x-ms-meta-") :]: v for k, v in request.headers.items() if k.lower().startswith("x-ms-meta-")
                }
                return 200, b"", stamp
            self.blobs[request.path] = request.body
            return 201, b"", stamp

        def get(request: Recorded) -> Reply:
            if "restype=container" in request.url and "comp=list" in request.url:
                return (
                    200,
                    b"<?xml version='1.0'?><EnumerationResults><Blobs/></EnumerationResults>",
                    {"Content-Type": "application/xml"},
                )
            if request.path not in self.blobs:
                return 404, b"", {"x-ms-error-code": "BlobNotFound"}
            data = self.blobs[request.path]
            headers = {"Content-Type": "application/octet-stream", "ETag": '"0x1"'}
            wanted = request.headers.get("x-ms-range") or request.headers.get("Range")
            if not wanted:
                return 200, data, headers
            start, end = (int(v) for v in wanted.removeprefix("bytes=").split("-"))
            part = data[start : min(end, len(data) - 1) + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
            return 206, part, headers

        host = rf"^https://{ACCOUNT}\.blob\.core\.windows\.net/"
        self.route("HEAD", host, head)
        self.route("PUT", host, put)
        self.route("GET", host, get)

    def _meta_headers(self, key: str) -> dict[str, str]:
        return {f"x-ms-meta-{k}": v for k, v in self.blob_metadata.get(key, {}).items()}


def _short(request: Recorded) -> str:
    path = request.path
    if path.startswith("https://management.azure.com" + WORKSPACE_PATH):
        return path[len("https://management.azure.com" + WORKSPACE_PATH) :] or "/"
    if path.startswith(f"https://{ACCOUNT}.blob.core.windows.net/"):
        suffix = "?comp=metadata" if "comp=metadata" in request.url else ""
        return "blob:" + path[len(f"https://{ACCOUNT}.blob.core.windows.net/") :] + suffix
    return path


def _response(request: requests.PreparedRequest, reply: Reply) -> requests.Response:
    status, body, headers = reply
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
    else:
        data = body if isinstance(body, bytes) else str(body).encode()
    headers.setdefault("Content-Length", str(len(data)))
    headers.setdefault("x-ms-request-id", "00000000-0000-0000-0000-000000000000")
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(data if request.method != "HEAD" else b""),
        headers=headers,
        status=status,
        preload_content=False,
        decode_content=False,
        request_method=request.method,
    )
    return HTTPAdapter().build_response(request, raw)


class OutsideConnection(AssertionError):
    pass


def install(fake: FakeAzure, attempts: list[Any], pass_local: bool = False) -> Callable[[], None]:
    """Answer every Azure SDK request from ``fake`` and refuse connections beyond 127.0.0.1 (recorded in
    ``attempts``). With ``pass_local``, requests to 127.0.0.1 (Azurite, local stand-ins) go out for real.
    Returns the function that restores the real transport and sockets."""
    real_send = HTTPAdapter.send
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def send(self: HTTPAdapter, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if pass_local and urllib.parse.urlsplit(str(request.url)).hostname in ("127.0.0.1", "localhost", "::1"):
            return real_send(self, request, *args, **kwargs)
        return _response(request, fake.handle(request))

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not isinstance(address, (str, bytes)):
            attempts.append(address)
            raise OutsideConnection(f"outside connection attempted: {address}")
        return real_connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            attempts.append(host)
            raise OutsideConnection(f"outside name lookup attempted: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    HTTPAdapter.send = send  # type: ignore[method-assign]
    socket.socket.connect = guarded_connect  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = guarded_getaddrinfo

    def restore() -> None:
        HTTPAdapter.send = real_send  # type: ignore[method-assign]
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo

    return restore


@contextmanager
def fake_azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    fake = FakeAzure()
    attempts: list[Any] = []
    restore = install(fake, attempts)
    # DefaultAzureCredential must not be reached for: the credential is injected.
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT", "IDENTITY_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield fake
    finally:
        restore()
    assert attempts == [], f"outside connections were attempted: {attempts}"


def datastore_body(workspace_path: str = WORKSPACE_PATH) -> dict[str, Any]:
    return {
        "id": f"{workspace_path}/datastores/workspaceblobstore",
        "name": "workspaceblobstore",
        "type": "Microsoft.MachineLearningServices/workspaces/datastores",
        "properties": {
            "datastoreType": "AzureBlob",
            "accountName": ACCOUNT,
            "containerName": CONTAINER,
            "endpoint": "core.windows.net",
            "protocol": "https",
            "isDefault": True,
            "credentials": {"credentialsType": "AccountKey"},
        },
    }


def add_workspace_routes(fake: FakeAzure, models: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """Canned Azure ML (ARM) replies: default datastore, its secrets, model versions."""
    models = models if models is not None else {}
    base = re.escape(WORKSPACE_PATH)

    fake.route("GET", base + r"/datastores/workspaceblobstore$", lambda r: (200, datastore_body(), {}))
    fake.route(
        "POST",
        base + r"/datastores/workspaceblobstore/listSecrets$",
        lambda r: (200, {"secretsType": "AccountKey", "key": "a2V5"}, {}),
    )

    def latest(request: Recorded) -> Reply:
        name = request.path.split("/models/")[1].split("/")[0]
        return 200, {"value": models.get(name, [])[-1:]}, {}

    def put_version(request: Recorded) -> Reply:
        name, version = re.findall(r"/models/([^/]+)/versions/([^/?]+)$", request.path)[0]
        body = request.json()
        # The SDK reads properties.flavors back from the model it created.
        body["properties"].setdefault("flavors", {})
        reply = {
            "id": f"{WORKSPACE_PATH}/models/{name}/versions/{version}",
            "name": version,
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            "properties": body["properties"],
            "systemData": {"createdAt": "2026-11-27T05:00:00Z", "createdBy": "test"},
        }
        models.setdefault(name, []).append(reply)
        return 201, reply, {}

    fake.route("GET", base + r"/models/[^/]+/versions$", latest)
    fake.route("PUT", base + r"/models/[^/]+/versions/[^/]+$", put_version)


TENANT = "11111111-1111-1111-1111-111111111111"
CLIENT_ID = "22222222-2222-2222-2222-222222222222"


def add_login_routes(fake: FakeAzure, tenant: str = TENANT) -> None:
    """Canned Entra ID replies, so DefaultAzureCredential's EnvironmentCredential (client secret) gets a token."""
    authority = f"https://login.microsoftonline.com/{tenant}"

    def openid(request: Recorded) -> Reply:
        return (
            200,
            {
                "token_endpoint": f"{authority}/oauth2/v2.0/token",
                "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
                "issuer": f"{authority}/v2.0",
                "device_authorization_endpoint": f"{authority}/oauth2/v2.0/devicecode",
            },
            {},
        )

    def token(request: Recorded) -> Reply:
        return 200, {"token_type": "Bearer", "expires_in": 3600, "access_token": "env-credential-token"}, {}

    fake.route("GET", r"^https://login\.microsoftonline\.com/.+/openid-configuration$", openid)
    fake.route(
        "GET",
        r"^https://login\.microsoftonline\.com/common/discovery/instance$",
        lambda r: (
            200,
            {"tenant_discovery_endpoint": f"{authority}/v2.0/.well-known/openid-configuration", "metadata": []},
            {},
        ),
    )
    fake.route("POST", r"^https://login\.microsoftonline\.com/.+/oauth2/v2\.0/token$", token)


def add_job_routes(fake: FakeAzure, jobs: dict[str, dict[str, Any]] | None = None) -> None:
    """Canned replies for a job submission: code asset lookup and version, environment version, job PUT."""
    jobs = jobs if jobs is not None else {}
    base = re.escape(WORKSPACE_PATH)

    def put_asset(kind: str) -> Callable[[Recorded], Reply]:
        def reply(request: Recorded) -> Reply:
            name, version = re.findall(rf"/{kind}/([^/]+)/versions/([^/?]+)$", request.path)[0]
            return (
                201,
                {
                    "id": f"{WORKSPACE_PATH}/{kind}/{name}/versions/{version}",
                    "name": version,
                    "properties": request.json()["properties"],
                    "systemData": {"createdAt": "2026-11-27T05:00:00Z"},
                },
                {},
            )

        return reply

    def put_job(request: Recorded) -> Reply:
        name = request.path.rsplit("/", 1)[1]
        body = request.json()
        body["properties"]["status"] = "NotStarted"
        body["properties"]["services"] = {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}"}}
        jobs[name] = body
        return (
            201,
            {
                "id": f"{WORKSPACE_PATH}/jobs/{name}",
                "name": name,
                "properties": body["properties"],
                "systemData": {"createdAt": "2026-11-27T05:00:00Z"},
            },
            {},
        )

    def start_pending_upload(request: Recorded) -> Reply:
        name = re.findall(r"/codes/([^/]+)/versions/", request.path)[0]
        blob = f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/code/{name}"
        return (
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": blob,
                    "credential": {"credentialType": "SAS", "sasUri": f"{blob}?sv=2021-10-04&sr=c&sp=rcw&sig=c2ln"},
                },
                "pendingUploadId": name,
                "pendingUploadType": "TemporaryBlobReference",
            },
            {},
        )

    fake.route("GET", base + r"/codes/[^/]+/versions$", lambda r: (200, {"value": []}, {}))
    fake.route("POST", base + r"/codes/[^/]+/versions/[^/]+/startPendingUpload$", start_pending_upload)
    fake.route("PUT", base + r"/codes/[^/]+/versions/[^/]+$", put_asset("codes"))
    fake.route("PUT", base + r"/environments/[^/]+/versions/[^/]+$", put_asset("environments"))
    fake.route("PUT", base + r"/jobs/[^/]+$", put_job)
