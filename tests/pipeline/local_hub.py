"""A stand-in IoT Hub on 127.0.0.1 for scripts/pipeline-local and the rollout tests: configurations (layered
deployments), module twins and queries of the service REST API (api-version 2021-04-12), with simulated
devices, its state kept in a JSON file so that it survives restarts (one pipeline run after another).

What it does as IoT Hub does, with where the service documents it:

- ``PUT /configurations/{id}`` creates a configuration. "Configuration identifier and Content cannot be
  updated"; the If-Match header "should not be set when creating a configuration, but may be set when
  updating" (REST: Configuration - Create Or Update). So:
  - an id outside "up to 128 lowercase letters, numbers and ``-:+%_#*?!(),=@;'``" (the IoT Edge deployment
    id rule), a body id that is not the path's, a negative or non-integer priority, or a target condition
    that does not parse: 400, ``ArgumentInvalid`` (400004, "the body of the request is not valid": IoT Hub
    API common error codes);
  - an existing id without If-Match, or with changed content: 409 Conflict (the "already exists" status of
    the common error codes, 409001; updates that touch content come back ``Conflict`` from the service, as
    azure-iot-hub-python issue #2 shows);
  - an If-Match that is not the current etag: 412, ``PreconditionFailed`` (412001, "the etag in the
    request does not match the etag of the existing resource, as per RFC7232");
  - If-Match on an id that does not exist: 404;
  - a matching If-Match may change the mutable fields (labels, metrics, priority, targetCondition); the
    etag changes with every write;
  - creating one configuration more than the hub's limit: 403 with the quota error family (403002);
    "IoT Edge automatic deployments: ... 100 deployments (including layered deployments) per paid SKU hub"
    (IoT Hub quotas and throttling, Other limits). The docs state the limit, not the error it gives; 403
    is our reading.
- ``GET /configurations/{id}``: 200 or 404. ``GET /configurations?top=N``: every configuration, unpaged
  ("Pagination is not supported"; ``top`` "will be overridden if greater than the maximum deployment
  count": REST: Configuration - Get Configurations).
- ``DELETE /configurations/{id}`` with If-Match (``*`` or the etag): 204; 412 on a stale etag; 404.
- Which configuration a device takes: every configuration whose target condition matches the device twin
  targets it; "the deployment with the highest priority applies ... If a device is targeted with two or
  more deployments with equal priority, the most recently created deployment (determined by the creation
  timestamp) applies", and a layered deployment's ``properties.desired`` "overwrites the desired properties
  for the module in any lower priority deployments" (Understand IoT Edge automatic deployments; az iot edge
  deployment create). As IoT Edge deployments' system metrics read them, the device twin's
  ``configurations`` map holds ``{"status": "Targeted"}`` for each configuration targeting the device
  (targetedCount: ``... FROM devices WHERE configurations.[[id]].status = 'Targeted'``), and the
  ``$edgeAgent`` module twin's holds ``"Applied"`` for those whose content the device got (appliedCount:
  ``... FROM devices.modules WHERE moduleId = '$edgeAgent' AND configurations.[[id]].status = 'Applied'``;
  "Include the double brackets", automatic device management, metrics).
- ``POST /devices/query`` answers ``SELECT * FROM devices.modules [WHERE moduleId = '...']`` and
  ``SELECT * | deviceId FROM devices [WHERE configurations.[[id]].status = '...']`` in pages of
  ``x-ms-max-item-count`` items, the next one named by the opaque ``x-ms-continuation`` token (REST:
  Query - Get Twins); any other query: 400 (this stand-in does not implement the whole language). A page
  holds at most 1,000 items: "The query object is instantiated with a page size (up to 1000)" (IoT Hub query
  language), and for a larger ``x-ms-max-item-count`` "the service may use a different value if the value
  specified is not acceptable" (REST: Query - Get Twins), so a larger one gets pages of 1,000.
- With a tier (``--tier S1`` ...), the operation throttles of that tier and unit count apply: 429
  ``ThrottlingException`` with ``Retry-After`` past them (``tests/pipeline/throttle.py`` cites the rates).
- ``GET /twins/{device}/modules/{module}``: the module twin, or 404.
- Every request needs ``api-version`` (400 otherwise) and a SharedAccessSignature that verifies against
  the hub's key: HMAC-SHA256 of ``"<url-encoded host>\\n<expiry>"``, not expired (401 otherwise, 401002
  "IotHub Unauthorized Access").

Error bodies have IoT Hub's shape: ``{"Message": "ErrorCode:<name>;<text>", "ExceptionMessage": ...}``.

The devices are simulated: each module twin's desired ``models`` is applied as the module applies it.
A release is reported ``active`` only after parsing it, verifying its ed25519 signature against the trusted
keys, fetching the ``file://`` URI and comparing the sha256; otherwise ``failed`` with the reason, the
previous version staying active (last known good).

    python -m tests.pipeline.local_hub --state DIR --trusted-keys PEM --url-file FILE
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_module.release import ReleaseError, load_public_keys, parse_release, verify_signature
from tests.pipeline.target_condition import parse as parse_condition
from tests.pipeline.throttle import CONFIGURATIONS, QUERIES, TIERS, TWIN_READS, Throttle
from tests.release.hub_server import Answer, Captured, HubServer

MODULE = "edge-inference"
HOSTNAME = "local-hub.azure-devices.net"
DEVICES = {
    "canary-gw-1": {"ring": "canary", "environment": "prod"},
    "plant-gw-1": {"environment": "prod"},
    "plant-gw-2": {"environment": "prod"},
}
MAX_CONFIGURATIONS = 100
CONFIGURATION_ID = re.compile(r"^[a-z0-9\-:+%_#*?!(),=@;']{1,128}$")
MUTABLE = ("labels", "metrics", "priority", "targetCondition")
MODULES_QUERY = re.compile(
    r"^\s*SELECT\s+\*\s+FROM\s+devices\.modules(?:\s+WHERE\s+moduleId\s*=\s*'([^']*)')?\s*$", re.IGNORECASE
)
DEVICES_QUERY = re.compile(
    r"^\s*SELECT\s+(\*|deviceId)\s+FROM\s+devices"
    r"(?:\s+WHERE\s+configurations\.\[\[([^\]]+)\]\]\.status\s*=\s*'(Targeted|Applied)')?\s*$",
    re.IGNORECASE,
)
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def hub_error(status: int, code: str, text: str) -> Answer:
    tracking = secrets.token_hex(16)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return Answer(
        status, {"Message": f"ErrorCode:{code};{text}", "ExceptionMessage": f"Tracking ID:{tracking}-TimeStamp:{stamp}"}
    )


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unquote_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


class StandInHub:
    """The service model: configurations, module twins and queries over a JSON state file."""

    def __init__(
        self,
        state_file: Path,
        trusted_keys: list[Any],
        *,
        max_configurations: int = MAX_CONFIGURATIONS,
        devices: dict[str, dict[str, str]] | None = None,
        throttle: Throttle | None = None,
        simulate_devices: bool = True,
    ) -> None:
        self.state_file = state_file
        self.throttle = throttle
        # False: real devices report through set_reported (tests/support/fleet_hub.py), nothing is simulated.
        self.simulate_devices = simulate_devices
        self.on_configurations_changed: Callable[[], None] | None = None
        self.trusted_keys = trusted_keys
        self.max_configurations = max_configurations
        self.lock = threading.Lock()
        if state_file.is_file():
            self.state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
        else:
            self.state = {
                "hostname": HOSTNAME,
                "keyName": "iothubowner",
                "key": base64.b64encode(secrets.token_bytes(32)).decode(),
                "writes": 0,
                "created": 0,
                "configurations": {},
                "devices": {name: {"tags": dict(tags), "reported": {}} for name, tags in (devices or DEVICES).items()},
            }
            self._save()

    @property
    def connection_string(self) -> str:
        s = self.state
        return f"HostName={s['hostname']};SharedAccessKeyName={s['keyName']};SharedAccessKey={s['key']}"

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".hub-state.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_file)

    # -- HTTP ---------------------------------------------------------------------------------------

    def respond(self, request: Captured) -> Answer:
        with self.lock:
            if not request.query.get("api-version"):
                return hub_error(400, "InvalidProtocolVersion", "the api-version query parameter is required")
            refused = self._authorize(request.headers.get("authorization", ""))
            if refused is not None:
                return refused
            parts = [urllib.parse.unquote(p) for p in request.path.strip("/").split("/")]
            throttled = self._throttled(parts)
            if throttled is not None:
                return throttled
            if parts == ["configurations"] and request.method == "GET":
                return self._list(request)
            if len(parts) == 2 and parts[0] == "configurations":
                handler = {"PUT": self._put, "GET": self._get, "DELETE": self._delete}.get(request.method)
                if handler is not None:
                    return handler(parts[1], request)
            if parts == ["devices", "query"] and request.method == "POST":
                return self._query(request)
            if len(parts) == 4 and parts[0] == "twins" and parts[2] == "modules" and request.method == "GET":
                twin = self._twins()[1].get((parts[1], parts[3]))
                return (
                    Answer(200, twin)
                    if twin
                    else hub_error(404, "ModuleNotFound", f"no module {parts[3]} on {parts[1]}")
                )
            return hub_error(404, "NotFound", f"the stand-in hub does not answer {request.method} {request.path}")

    def _throttled(self, parts: list[str]) -> Answer | None:
        if self.throttle is None:
            return None
        operation = {"configurations": CONFIGURATIONS, "devices": QUERIES, "twins": TWIN_READS}.get(parts[0])
        wait = self.throttle.admit(operation) if operation else None
        if wait is None:
            return None
        answer = hub_error(429, "ThrottlingException", f"IoT Hub throttling limits have been exceeded for {operation}")
        answer.headers["Retry-After"] = str(wait)
        return answer

    def _authorize(self, header: str) -> Answer | None:
        scheme, _, fields = header.partition(" ")
        token = dict(part.split("=", 1) for part in fields.split("&") if "=" in part)
        if scheme != "SharedAccessSignature" or not {"sr", "sig", "se", "skn"} <= set(token):
            return hub_error(401, "IotHubUnauthorizedAccess", "a SharedAccessSignature is required")
        expected = hmac.new(
            base64.b64decode(self.state["key"]), f"{token['sr']}\n{token['se']}".encode(), hashlib.sha256
        ).digest()
        try:
            signature = base64.b64decode(urllib.parse.unquote(token["sig"]))
            expired = int(token["se"]) < time.time()
        except ValueError:
            return hub_error(401, "IotHubUnauthorizedAccess", "malformed SharedAccessSignature")
        if (
            not hmac.compare_digest(signature, expected)
            or urllib.parse.unquote(token["sr"]) != self.state["hostname"]
            or token["skn"] != self.state["keyName"]
            or expired
        ):
            return hub_error(401, "IotHubUnauthorizedAccess", "the SharedAccessSignature does not verify or expired")
        return None

    def _next_etag(self) -> str:
        self.state["writes"] += 1
        return base64.b64encode(str(self.state["writes"]).encode()).decode()

    def _put(self, identifier: str, request: Captured) -> Answer:
        body = request.body
        configurations: dict[str, Any] = self.state["configurations"]
        problem = self._invalid(identifier, body)
        if problem:
            return hub_error(400, "ArgumentInvalid", problem)
        if_match = request.headers.get("if-match")
        existing = configurations.get(identifier)
        if existing is None:
            if if_match is not None:
                return hub_error(404, "ConfigurationNotFound", f"configuration {identifier} does not exist")
            if len(configurations) >= self.max_configurations:
                return hub_error(
                    403, "IotHubQuotaExceeded", f"the hub holds its maximum of {self.max_configurations} configurations"
                )
            self.state["created"] += 1
            stamp = now_text()
            stored = {
                "id": identifier,
                "schemaVersion": body.get("schemaVersion", "1.0"),
                "labels": dict(body.get("labels") or {}),
                "content": copy.deepcopy(body["content"]),
                "targetCondition": body["targetCondition"],
                "priority": body["priority"],
                "metrics": copy.deepcopy(body.get("metrics") or {"queries": {}}),
                "createdTimeUtc": stamp,
                "lastUpdatedTimeUtc": stamp,
                "creationOrder": self.state["created"],
                "etag": self._next_etag(),
            }
            configurations[identifier] = stored
            self._save()
            self._changed()
            return Answer(201, self._public(stored))
        if if_match is None:
            return hub_error(409, "ConfigurationAlreadyExists", f"configuration {identifier} already exists")
        if unquote_etag(if_match) not in ("*", existing["etag"]):
            return hub_error(412, "PreconditionFailed", f"etag mismatch: configuration {identifier} has changed")
        if body["content"] != existing["content"]:
            return hub_error(409, "Conflict", f"the content of configuration {identifier} cannot be updated")
        for name in MUTABLE:
            if name in body:
                existing[name] = copy.deepcopy(body[name])
        existing["lastUpdatedTimeUtc"] = now_text()
        existing["etag"] = self._next_etag()
        self._save()
        self._changed()
        return Answer(200, self._public(existing))

    @staticmethod
    def _invalid(identifier: str, body: Any) -> str | None:
        if not CONFIGURATION_ID.fullmatch(identifier):
            return f"invalid configuration id {identifier!r}: up to 128 lowercase letters, digits and -:+%_#*?!(),=@;'"
        if not isinstance(body, dict):
            return "the body must be a configuration object"
        if body.get("id") != identifier:
            return f"the body's id {body.get('id')!r} is not the path's {identifier!r}"
        priority = body.get("priority")
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority < 2**31:
            return f"priority must be a non-negative 32-bit integer, got {priority!r}"
        content = body.get("content")
        if not isinstance(content, dict) or not any(
            k in content for k in ("modulesContent", "moduleContent", "deviceContent")
        ):
            return "content must hold modulesContent, moduleContent or deviceContent"
        try:
            parse_condition(str(body.get("targetCondition", "")))
        except ValueError as error:
            return f"invalid targetCondition: {error}"
        return None

    @staticmethod
    def _public(stored: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in stored.items() if k != "creationOrder"}

    def _get(self, identifier: str, request: Captured) -> Answer:
        stored = self.state["configurations"].get(identifier)
        if stored is None:
            return hub_error(404, "ConfigurationNotFound", f"configuration {identifier} does not exist")
        return Answer(200, self._public(stored))

    def _list(self, request: Captured) -> Answer:
        try:
            top = int(request.query.get("top", [str(self.max_configurations)])[0])
        except ValueError:
            return hub_error(400, "ArgumentInvalid", "top must be an integer")
        top = min(max(top, 0), self.max_configurations)
        ordered = sorted(self.state["configurations"].values(), key=lambda c: c["creationOrder"])
        return Answer(200, [self._public(c) for c in ordered[:top]])

    def _delete(self, identifier: str, request: Captured) -> Answer:
        stored = self.state["configurations"].get(identifier)
        if stored is None:
            return hub_error(404, "ConfigurationNotFound", f"configuration {identifier} does not exist")
        if_match = request.headers.get("if-match")
        if if_match is not None and unquote_etag(if_match) not in ("*", stored["etag"]):
            return hub_error(412, "PreconditionFailed", f"etag mismatch: configuration {identifier} has changed")
        del self.state["configurations"][identifier]
        self._save()
        self._changed()
        return Answer(204)

    def _query(self, request: Captured) -> Answer:
        sql = (request.body or {}).get("query", "") if isinstance(request.body, dict) else ""
        device_twins, module_twins = self._twins()
        modules, devices = MODULES_QUERY.fullmatch(sql), DEVICES_QUERY.fullmatch(sql)
        if modules is not None:
            twins = [t for (_, module), t in sorted(module_twins.items()) if modules.group(1) in (None, module)]
        elif devices is not None:
            projection, configuration, status = devices.groups()
            twins = [
                t if projection == "*" else {"deviceId": t["deviceId"]}
                for _, t in sorted(device_twins.items())
                if configuration is None or t["configurations"].get(configuration, {}).get("status") == status
            ]
        else:
            return hub_error(400, "ArgumentInvalid", f"the stand-in does not answer the query {sql!r}")
        try:
            size = int(request.headers.get("x-ms-max-item-count") or DEFAULT_PAGE)
            start = int(base64.b64decode(request.headers.get("x-ms-continuation") or "MA==").decode())
        except ValueError:
            return hub_error(400, "ArgumentInvalid", "invalid x-ms-max-item-count or x-ms-continuation")
        if size < 1 or start < 0:
            return hub_error(400, "ArgumentInvalid", "invalid x-ms-max-item-count or x-ms-continuation")
        size = min(size, MAX_PAGE)
        page = twins[start : start + size]
        headers = {}
        if start + size < len(twins):
            headers["x-ms-continuation"] = base64.b64encode(str(start + size).encode()).decode()
        return Answer(200, page, headers)

    # -- devices ------------------------------------------------------------------------------------

    def _changed(self) -> None:
        if self.on_configurations_changed is not None:
            self.on_configurations_changed()

    def desired_for(self, device: str) -> dict[str, Any]:
        """The module's desired properties on ``device`` from the configurations targeting it (lock held)."""
        record = self.state["devices"][device]
        device_twin = {"deviceId": device, "tags": record["tags"], "properties": {"reported": {}}}
        return self._desired(device_twin)[0]

    def set_reported(self, device: str, models: dict[str, Any], shadows: dict[str, Any] | None = None) -> None:
        """What a real device reported for its models and shadows (lock held)."""
        self.state["devices"][device]["reported"] = copy.deepcopy(models)
        self.state["devices"][device]["shadows"] = copy.deepcopy(shadows or {})

    def _twins(self) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
        """The device twins, and the module twins of our module and ``$edgeAgent``, as the devices see them."""
        device_twins: dict[str, dict[str, Any]] = {}
        twins: dict[tuple[str, str], dict[str, Any]] = {}
        changed = False
        for device, record in self.state["devices"].items():
            device_twin: dict[str, Any] = {"deviceId": device, "tags": record["tags"], "properties": {"reported": {}}}
            desired, statuses = self._desired(device_twin)
            device_twin["configurations"] = {name: {"status": "Targeted"} for name in statuses}
            device_twins[device] = device_twin
            twins[(device, "$edgeAgent")] = {"deviceId": device, "moduleId": "$edgeAgent", "configurations": statuses}
            reported: dict[str, Any] = record["reported"]
            for name, block in (desired.get("models") or {}).items() if self.simulate_devices else ():
                outcome = self._apply(name, block, reported.get(name))
                if outcome != reported.get(name):
                    reported[name] = outcome
                    changed = True
            digest = hashlib.sha256(json.dumps([desired, reported], sort_keys=True).encode()).digest()
            twins[(device, MODULE)] = {
                "deviceId": device,
                "moduleId": MODULE,
                "etag": base64.b64encode(digest[:6]).decode(),
                "properties": {"desired": desired, "reported": self._reported(record)},
            }
        if changed:
            self._save()
        return device_twins, twins

    @staticmethod
    def _reported(record: dict[str, Any]) -> dict[str, Any]:
        reported: dict[str, Any] = {"models": copy.deepcopy(record["reported"])}
        if record.get("shadows"):
            reported["shadows"] = copy.deepcopy(record["shadows"])
        return reported

    def _desired(self, device_twin: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        """The module's desired properties from the configurations targeting the device, by priority."""
        targeting = [
            c for c in self.state["configurations"].values() if parse_condition(c["targetCondition"])(device_twin)
        ]
        statuses = {c["id"]: {"status": "Targeted"} for c in targeting}
        owners: dict[str, tuple[str, Any]] = {}
        # Lowest first, so the highest priority (and, on a tie, the most recently created) writes last.
        for configuration in sorted(targeting, key=lambda c: (c["priority"], c["creationOrder"])):
            module_content = (configuration["content"].get("modulesContent") or {}).get(MODULE) or {}
            for path, value in module_content.items():
                if path.startswith("properties.desired."):
                    owners[path.removeprefix("properties.desired.")] = (configuration["id"], value)
        desired: dict[str, Any] = {}
        # A deeper path ("properties.desired.shadows.iris") nests under the shallower one's object, as IoT
        # Edge's layered deployments document for "properties.desired.routes.upstream".
        for key, (owner, value) in sorted(owners.items()):
            *parents, leaf = key.split(".")
            node = desired
            for part in parents:
                child = node.get(part)
                node = node.setdefault(part, {}) if isinstance(child, dict) or child is None else {}
            node[leaf] = copy.deepcopy(value)
            statuses[owner] = {"status": "Applied"}
        return desired, statuses

    def _apply(self, name: str, block: Any, before: dict[str, Any] | None) -> dict[str, Any]:
        previous = (before or {}).get("activeVersion")
        try:
            release = parse_release(name, block)
            verify_signature(release, self.trusted_keys)
            uri = urllib.parse.urlsplit(release.uri)
            if uri.scheme != "file":
                raise ReleaseError(f"the stand-in devices fetch file:// URIs only, got {release.uri}")
            digest = hashlib.sha256(Path(urllib.request.url2pathname(uri.path)).read_bytes()).hexdigest()
            if digest != release.sha256:
                raise ReleaseError(f"sha256 mismatch: expected {release.sha256}, got {digest}")
        except (ReleaseError, OSError) as error:
            version = block.get("version") if isinstance(block, dict) else None
            failed = {"state": "failed", "desiredVersion": version, "error": str(error)}
            return {**failed, "activeVersion": previous} if previous else failed
        return {
            "state": "active",
            "desiredVersion": release.version,
            "activeVersion": release.version,
            "sha256": release.sha256,
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipeline.local_hub", description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="folder of the hub's state (kept across runs)")
    parser.add_argument("--trusted-keys", type=Path, required=True, help="PEM public keys the devices trust")
    parser.add_argument("--url-file", type=Path, required=True, help="where to write the hub's URL once it listens")
    parser.add_argument("--max-configurations", type=int, default=MAX_CONFIGURATIONS)
    parser.add_argument("--tier", choices=TIERS, help="apply this IoT Hub tier's operation throttles")
    parser.add_argument("--units", type=int, default=1, help="the hub's unit count (with --tier)")
    args = parser.parse_args(argv)
    keys = load_public_keys(args.trusted_keys.read_text())
    if not keys:
        parser.error(f"no ed25519 public key in {args.trusted_keys}")
    throttle = Throttle(args.tier, args.units) if args.tier else None
    hub = StandInHub(args.state / "state.json", keys, max_configurations=args.max_configurations, throttle=throttle)
    connection = args.state / "connection-string"
    fd = os.open(connection, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(hub.connection_string + "\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with HubServer(hub.respond) as server:
        args.url_file.write_text(server.url + "\n")
        while not stop.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
