"""A stateful stand-in for an Azure ML workspace's model registry and its blob datastore, answered at the HTTP
transport (tests/cloud/azure_fake.py) and kept in a folder, so several processes (e.g. the ``python -m cloud``
invocations of one pipeline run, see tests/support/azureml_site/) share one registry.

Behaviour reproduced, each from the service's documentation:

- Model versions, ``PUT .../models/{name}/versions/{version}`` (REST "Model Versions - Create Or Update",
  https://learn.microsoft.com/rest/api/azureml/model-versions/create-or-update): 201 with the resource when
  new. A version is immutable: a PUT on an existing version may change only ``tags``, ``description``,
  ``stage`` and ``isArchived`` (200). Another ``modelUri`` is refused with 400 ``UserError`` "Asset paths
  cannot be updated." (the message azure-ai-ml matches in ``_artifacts/_constants.ASSET_PATH_ERROR``), another
  property value with 400 ``UserError`` "... cannot be replaced ... without increasing the version" (the
  service's wording, as quoted in Azure/azureml-assets#3439).
- Reads (REST "Model Versions - Get" / "- List", "Model Containers - List"): 404 ``UserError`` for an unknown
  model or version; lists are paged: a page holds at most ``$top`` items (default ``PAGE_SIZE``, kept small
  here so that paging is exercised) and a ``nextLink`` that carries ``$skip`` when more remain. ``$orderBy=
  createdtime desc`` sorts newest first; ``listViewType`` ActiveOnly (default) hides archived versions.
- Limits (https://learn.microsoft.com/azure/machine-learning/resource-limits-capacity): at most 50 tags and 50
  properties, keys up to 100 characters, values up to 1,000: more is refused with 400 ``UserError``.
- Asset upload: azure-ai-ml reads the workspace's default datastore (``workspaceblobstore``) and its account key
  (``listSecrets``), uploads the file into the datastore's container, then PUTs the version whose ``modelUri``
  points at ``azureml://.../datastores/workspaceblobstore/paths/...``; downloads list the container by prefix
  and GET the blob (Blob REST "List Blobs", "Get Blob"). A version whose ``modelUri`` names no uploaded blob is
  refused with 400 ``UserError``.
- Failures: ``fail(...)`` makes matching requests answer a status (e.g. 503 with ``Retry-After``, as ARM does
  when throttling or unavailable) or fail to connect (``unreachable``), a given number of times; the state is
  untouched by a failed request, as with the real service.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import requests

from tests.cloud.azure_fake import ACCOUNT, CONTAINER, FakeAzure, Recorded, Reply, datastore_body

PAGE_SIZE = 2
MAX_ITEMS = 50
MAX_KEY = 100
MAX_VALUE = 1000
MUTABLE = ("tags", "description", "stage", "isArchived")
WORKSPACE = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
)
ARM = "https://management.azure.com"
BLOB_HOST = f"https://{ACCOUNT}.blob.core.windows.net"


def _error(status: int, message: str, code: str = "UserError") -> Reply:
    return status, {"error": {"code": code, "message": message}}, {}


class AzureMLService:
    """One folder of state: ``models/<workspace-key>/<name>/<version>.json`` and ``blobs/<sha256 of path>``."""

    def __init__(self, state_dir: Path) -> None:
        self.state = Path(state_dir)
        self.state.mkdir(parents=True, exist_ok=True)

    # -- test controls --------------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 503,
        times: int = 1,
        unreachable: bool = False,
        after: bool = False,
    ) -> None:
        """The next ``times`` requests whose method and URL path match answer ``status`` (or cannot connect).
        With ``after`` the request is carried out first and only its answer is lost (a gateway timeout)."""
        fault = {"method": method, "pattern": path_pattern, "status": status, "times": times, "after": after}
        with self._lock():
            faults = self._faults()
            faults.append({**fault, "unreachable": unreachable})
            self._write_json(self.state / "faults.json", faults)

    def clear_faults(self) -> None:
        with self._lock():
            self._write_json(self.state / "faults.json", [])

    def delete_version(self, name: str, version: str) -> None:
        """Delete a version as the studio does; the service keeps its number from being created again."""
        with self._lock():
            [path] = self.state.glob(f"models/*/{name}/{version}.json")
            tombstone = path.with_suffix(".deleted")
            tombstone.write_text(datetime.now(timezone.utc).strftime("%m/%d/%Y %H:%M:%S +00:00"))
            path.unlink()

    def blob_keys(self) -> list[str]:
        return sorted(json.loads(p.read_text())["path"] for p in (self.state / "blobs").glob("*.json"))

    def corrupt_blob(self, path_suffix: str, data: bytes) -> None:
        """Replace a stored blob's bytes behind the registry's back (a damaged or tampered file)."""
        for meta in (self.state / "blobs").glob("*.json"):
            if json.loads(meta.read_text())["path"].endswith(path_suffix):
                meta.with_suffix(".bin").write_bytes(data)
                return
        raise KeyError(path_suffix)

    def versions(self, name: str) -> list[dict[str, Any]]:
        found = sorted(self.state.glob(f"models/*/{name}/*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
        return [json.loads(p.read_text()) for p in found]

    # -- installation --------------------------------------------------------------------------------------

    def install(self, fake: FakeAzure) -> None:
        self._fake = fake
        fake.before.append(self._fault)
        base = "^" + re.escape(ARM) + WORKSPACE
        fake.route("GET", base + r"/datastores/workspaceblobstore$", self._datastore)
        fake.route("POST", base + r"/datastores/workspaceblobstore/listSecrets$", self._secrets)
        fake.route("GET", base + r"/models$", self._list_containers)
        fake.route("GET", base + r"/models/(?P<name>[^/]+)$", self._get_container)
        fake.route("GET", base + r"/models/(?P<name>[^/]+)/versions$", self._list_versions)
        fake.route("GET", base + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", self._get_version)
        fake.route("PUT", base + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", self._put_version)
        blob = "^" + re.escape(BLOB_HOST) + "/"
        fake.route("HEAD", blob, self._head_blob)
        fake.route("PUT", blob, self._put_blob)
        fake.route("GET", blob, self._get_blob)

    # -- state ---------------------------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.state / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _write_json(path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
        tmp.replace(path)

    def _faults(self) -> list[dict[str, Any]]:
        path = self.state / "faults.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def _fault(self, request: Recorded) -> Reply | None:
        with self._lock():
            faults = self._faults()
            for fault in faults:
                if fault["method"] == request.method and re.search(fault["pattern"], request.path) and fault["times"]:
                    fault["times"] -= 1
                    self._write_json(self.state / "faults.json", faults)
                    break
            else:
                return None
        if fault["unreachable"]:
            raise requests.exceptions.ConnectionError(f"fault: cannot connect for {request.path}")
        if fault.get("after"):
            self._fake.dispatch(request)
        return fault["status"], {"error": {"code": "ServiceUnavailable", "message": "fault"}}, {"Retry-After": "0"}

    def _model_dir(self, match: re.Match[str]) -> Path:
        key = f"{match['sub']}_{match['rg']}_{match['ws']}".lower()
        return self.state / "models" / key / match["name"]

    @staticmethod
    def _match(request: Recorded, tail: str) -> re.Match[str]:
        found = re.search(WORKSPACE + tail, request.path)
        assert found is not None
        return found

    # -- ARM: datastore ------------------------------------------------------------------------------------

    def _datastore(self, request: Recorded) -> Reply:
        workspace = self._match(request, r"/datastores/").group(0).removesuffix("/datastores/")
        return (
            200,
            datastore_body(workspace),
            {},
        )

    def _secrets(self, request: Recorded) -> Reply:
        return 200, {"secretsType": "AccountKey", "key": "a2V5"}, {}

    # -- ARM: models -----------------------------------------------------------------------------------------

    def _page(self, request: Recorded, items: list[dict[str, Any]]) -> Reply:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
        if "createdtime desc" in query.get("$orderBy", "").lower():
            items = sorted(items, key=lambda i: i["systemData"]["createdAt"], reverse=True)
        if query.get("listViewType", "ActiveOnly") == "ActiveOnly":
            items = [i for i in items if not i["properties"].get("isArchived")]
        skip = int(query.get("$skip", "0"))
        top = int(query.get("$top", str(PAGE_SIZE)))
        page: dict[str, Any] = {"value": items[skip : skip + top]}
        if skip + top < len(items) and "$top" not in query:
            rest = {**query, "$skip": str(skip + top)}
            page["nextLink"] = f"{request.path}?{urllib.parse.urlencode(rest)}"
        return 200, page, {}

    def _list_containers(self, request: Recorded) -> Reply:
        workspace = re.search(WORKSPACE, request.path)
        assert workspace is not None
        with self._lock():
            root = self.state / "models" / f"{workspace['sub']}_{workspace['rg']}_{workspace['ws']}".lower()
            names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            items = [self._container(request.path.removesuffix("/models"), root / n) for n in names]
        return self._page(request, [i for i in items if i is not None])

    def _container(self, workspace_id: str, model_dir: Path) -> dict[str, Any] | None:
        versions = sorted(int(p.stem) for p in model_dir.glob("*.json") if p.stem.isdigit())
        if not versions:
            return None
        return {
            "id": f"{workspace_id.removeprefix(ARM)}/models/{model_dir.name}",
            "name": model_dir.name,
            "type": "Microsoft.MachineLearningServices/workspaces/models",
            "properties": {"latestVersion": str(versions[-1]), "nextVersion": str(versions[-1] + 1), "tags": {}},
            "systemData": {"createdAt": "2026-12-04T00:00:00Z"},
        }

    def _get_container(self, request: Recorded) -> Reply:
        match = self._match(request, r"/models/(?P<name>[^/]+)$")
        with self._lock():
            container = self._container(request.path.rsplit("/models/", 1)[0], self._model_dir(match))
        if container is None:
            return _error(404, f"Could not find asset with name {match['name']}")
        return 200, container, {}

    def _list_versions(self, request: Recorded) -> Reply:
        match = self._match(request, r"/models/(?P<name>[^/]+)/versions$")
        with self._lock():
            files = self._model_dir(match).glob("*.json")
            items = [json.loads(p.read_text()) for p in sorted(files, key=lambda p: int(p.stem))]
        return self._page(request, items)

    def _get_version(self, request: Recorded) -> Reply:
        match = self._match(request, r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
        path = self._model_dir(match) / f"{match['version']}.json"
        with self._lock():
            if not path.is_file():
                return _error(404, f"Could not find asset with name {match['name']} and version {match['version']}")
            return 200, json.loads(path.read_text()), {}

    def _put_version(self, request: Recorded) -> Reply:
        match = self._match(request, r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
        body = request.json().get("properties", {})
        problem = self._check_body(body)
        if problem:
            return _error(400, problem)
        path = self._model_dir(match) / f"{match['version']}.json"
        with self._lock():
            if path.is_file():
                existing = json.loads(path.read_text())
                return self._update(path, existing, body, match["name"])
            tombstone = path.with_suffix(".deleted")
            if tombstone.is_file():
                return _error(
                    400,
                    f"Asset {match['name']}:{match['version']} was deleted at {tombstone.read_text()}, "
                    "it cannot be recreated. Please try again with a different version.",
                )
            if not self._blob_exists(body.get("modelUri", "")):
                return _error(400, f"The model path {body.get('modelUri')} does not exist in the datastore.")
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            resource = {
                "id": request.path.removeprefix(ARM),
                "name": match["version"],
                "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                "properties": {**body, "flavors": body.get("flavors") or {}, "provisioningState": "Succeeded"},
                "systemData": {"createdAt": now, "createdBy": "test", "lastModifiedAt": now},
            }
            self._write_json(path, resource)
        return 201, resource, {}

    def _update(self, path: Path, existing: dict[str, Any], body: dict[str, Any], name: str) -> Reply:
        current = existing["properties"]
        if body.get("modelUri") != current.get("modelUri"):
            return _error(400, "Asset paths cannot be updated.")
        for key, value in (body.get("properties") or {}).items():
            if current.get("properties", {}).get(key) != value:
                return _error(
                    400,
                    f"Value of property {key} for model {name} cannot be replaced to {value[:40]} "
                    "without increasing the version.",
                )
        for key in MUTABLE:
            if key in body:
                current[key] = body[key]
        existing["systemData"]["lastModifiedAt"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._write_json(path, existing)
        return 200, existing, {}

    @staticmethod
    def _check_body(body: dict[str, Any]) -> str | None:
        if not body.get("modelUri"):
            return "modelUri is required."
        for kind in ("tags", "properties"):
            values = body.get(kind) or {}
            if len(values) > MAX_ITEMS:
                return f"The number of {kind} ({len(values)}) exceeds the limit of {MAX_ITEMS}."
            for key, value in values.items():
                if len(key) > MAX_KEY or len(str(value)) > MAX_VALUE:
                    return f"{kind[:-1].capitalize()} {key[:40]} exceeds the length limits ({MAX_KEY}/{MAX_VALUE})."
        return None

    # -- blob datastore ------------------------------------------------------------------------------------

    def _blob_files(self, path: str) -> tuple[Path, Path]:
        digest = hashlib.sha256(path.encode()).hexdigest()
        return self.state / "blobs" / f"{digest}.bin", self.state / "blobs" / f"{digest}.json"

    def _blob_exists(self, model_uri: str) -> bool:
        found = re.search(r"/datastores/workspaceblobstore/paths/(.+)$", model_uri)
        if not found:
            return False
        prefix = f"{BLOB_HOST}/{CONTAINER}/{found[1].rstrip('/')}"
        return any(key == prefix or key.startswith(prefix + "/") for key in self.blob_keys())

    def _head_blob(self, request: Recorded) -> Reply:
        data, meta = self._blob_files(request.path)
        with self._lock():
            if not data.is_file():
                return 404, b"", {"x-ms-error-code": "BlobNotFound"}
            stored = json.loads(meta.read_text())
            headers = {f"x-ms-meta-{k}": v for k, v in stored["metadata"].items()}
            return 200, b"", {"Content-Length": str(data.stat().st_size), "ETag": '"0x1"', **headers}

    def _put_blob(self, request: Recorded) -> Reply:
        data, meta = self._blob_files(request.path)
        stamp = {"ETag": '"0x1"', "Last-Modified": "Fri, 04 Dec 2026 05:00:00 GMT"}
        metadata = {k[len("x-ms-meta-") :]: v for k, v in request.headers.items() if k.lower().startswith("x-ms-meta-")}
        with self._lock():
            if "comp=metadata" in request.url:
                if not meta.is_file():
                    return 404, b"", {"x-ms-error-code": "BlobNotFound"}
                stored = json.loads(meta.read_text())
                self._write_json(meta, {**stored, "metadata": metadata})
                return 200, b"", stamp
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_bytes(request.body)
            self._write_json(meta, {"path": request.path, "metadata": metadata})
        return 201, b"", stamp

    def _get_blob(self, request: Recorded) -> Reply:
        if "restype=container" in request.url and "comp=list" in request.url:
            return self._list_blobs(request)
        data_path, _ = self._blob_files(request.path)
        with self._lock():
            if not data_path.is_file():
                return 404, b"", {"x-ms-error-code": "BlobNotFound"}
            data = data_path.read_bytes()
        headers = {"Content-Type": "application/octet-stream", "ETag": '"0x1"'}
        wanted = request.headers.get("x-ms-range") or request.headers.get("Range")
        if not wanted:
            return 200, data, headers
        start, end = (int(v) for v in wanted.removeprefix("bytes=").split("-"))
        part = data[start : min(end, len(data) - 1) + 1]
        headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
        return 206, part, headers

    def _list_blobs(self, request: Recorded) -> Reply:
        container = request.path.removeprefix(BLOB_HOST + "/").strip("/")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
        prefix = f"{BLOB_HOST}/{container}/{query.get('prefix', '')}"
        with self._lock():
            keys = [key for key in self.blob_keys() if key.startswith(prefix)]
            names = [key.removeprefix(f"{BLOB_HOST}/{container}/") for key in keys]
            sizes = [self._blob_files(f"{BLOB_HOST}/{container}/{n}")[0].stat().st_size for n in names]
        blobs = "".join(
            f"<Blob><Name>{escape(n)}</Name><Properties><Content-Length>{s}</Content-Length>"
            "<BlobType>BlockBlob</BlobType></Properties></Blob>"
            for n, s in zip(names, sizes, strict=True)
        )
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="{escape(container)}">'
            f"<Prefix>{escape(query.get('prefix', ''))}</Prefix><Blobs>{blobs}</Blobs>"
            "<NextMarker /></EnumerationResults>"
        )
        return 200, body.encode(), {"Content-Type": "application/xml"}
