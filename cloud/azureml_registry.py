"""The Azure ML backend of the registry of record: model versions through ``azure-ai-ml``'s ``MLClient.models``.

Mapping (docs/registry.md has the full table):

- a registry version is an Azure ML model version ``1``, ``2``, ...; the next one is one more than the highest
  ever listed (archived included), so versions only grow;
- the record written once at registration lives in the version's *properties*, which the service does not let
  change without a new version: ``edge.sha256``, ``edge.size``, ``edge.created_at``, ``edge.metrics`` and
  ``edge.metadata`` (JSON; split over ``<key>.0``, ``<key>.1``, ... with ``<key>.parts`` when longer than a
  property value may be);
- *tags* hold what may change: the user's tags, ``sha256`` and ``format`` (searchable in the studio), and the
  aliases, one tag ``edge.alias.<alias>`` whose value is the promotion counter;
- the drift profile is not copied into properties: it rides in the ONNX file's own metadata (``edge.profile``),
  the bytes the sha256 covers and devices read.

Limits applied before anything is sent (Azure ML service limits, "Runs": 50 properties and 50 tags, keys up to
100 characters, values up to 1,000; https://learn.microsoft.com/azure/machine-learning/resource-limits-capacity).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from cloud.azureml import AzureWorkspace, ml_client
from cloud.errors import ModelNotFound, RegistryError, RegistryUnavailable, VersionTaken
from cloud.registry import (
    DEFAULT_ALIAS,
    MODEL_FILE,
    Registration,
    RegistryEntry,
    check_file,
    validate_alias,
    validate_name,
    validate_version,
)

CLAIM_ATTEMPTS = 5
MAX_TAGS = 50
MAX_PROPERTIES = 50
MAX_KEY = 100
MAX_VALUE = 1000
RESERVED_PREFIX = "edge."
ALIAS_TAG = "edge.alias."
P_SHA256 = "edge.sha256"
P_SIZE = "edge.size"
P_CREATED = "edge.created_at"
P_METRICS = "edge.metrics"
P_METADATA = "edge.metadata"
T = TypeVar("T")
# How the service words a refusal to re-create an existing (or deleted) version.
TAKEN_SIGNS = ("cannot be updated", "cannot be replaced", "cannot be recreated", "already exists")


def pack(key: str, text: str) -> dict[str, str]:
    """One property, or numbered parts when ``text`` is longer than a property value may be."""
    if len(text) <= MAX_VALUE:
        return {key: text}
    parts = [text[i : i + MAX_VALUE] for i in range(0, len(text), MAX_VALUE)]
    return {f"{key}.parts": str(len(parts)), **{f"{key}.{i}": part for i, part in enumerate(parts)}}


def unpack(properties: dict[str, str], key: str) -> str | None:
    if key in properties:
        return properties[key]
    count = properties.get(f"{key}.parts")
    if count is None or not count.isdigit():
        return None
    pieces = [properties.get(f"{key}.{i}") for i in range(int(count))]
    if any(piece is None for piece in pieces):
        raise RegistryError(f"property {key} is missing a part; the version's record is damaged")
    return "".join(piece for piece in pieces if piece is not None)


def check_limits(kind: str, values: dict[str, str], limit: int) -> None:
    if len(values) > limit:
        raise RegistryError(f"{len(values)} {kind} exceed Azure ML's limit of {limit} per model version")
    for key, value in values.items():
        if not key or len(key) > MAX_KEY:
            raise RegistryError(f"{kind[:-1]} key {key[:40]!r}...: Azure ML allows 1-{MAX_KEY} characters")
        if len(value) > MAX_VALUE:
            raise RegistryError(f"{kind[:-1]} {key!r}: its value exceeds Azure ML's {MAX_VALUE} characters")


def _service_error(action: str, error: Exception) -> RegistryError:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, ResourceNotFoundError):
        return ModelNotFound(f"{action}: not found in Azure ML ({text})")
    if isinstance(error, ServiceRequestError) or (
        isinstance(error, HttpResponseError) and (error.status_code or 500) >= 500
    ):
        return RegistryUnavailable(f"{action}: Azure ML failed or is unreachable ({text}); nothing was changed, retry")
    return RegistryError(f"{action}: Azure ML refused: {text}")


class AzureMLRegistry:
    """``Registry`` over one Azure ML workspace (see the module docstring for the mapping)."""

    def __init__(self, client: Any, location: str = "azureml:") -> None:
        self.client = client
        self._location = location
        self._taken: dict[str, int] = {}  # versions this process saw refused as taken (e.g. deleted ones)

    @classmethod
    def for_workspace(cls, workspace: AzureWorkspace, credential: Any = None) -> AzureMLRegistry:
        location = (
            f"azureml://subscriptions/{workspace.subscription_id}/resourceGroups/{workspace.resource_group}"
            f"/workspaces/{workspace.workspace}"
        )
        return cls(ml_client(workspace, credential), location)

    @property
    def location(self) -> str:
        return self._location

    def _call(self, action: str, operation: Callable[[], T]) -> T:
        from azure.core.exceptions import AzureError

        try:
            return operation()
        except AzureError as error:
            raise _service_error(action, error) from None

    # -- reading ----------------------------------------------------------------------------------------------

    def _models(self, name: str) -> builtins.list[Any]:
        from azure.ai.ml.constants import ListViewType

        def versions() -> builtins.list[Any]:
            return builtins.list(self.client.models.list(name=name, list_view_type=ListViewType.ALL))

        return self._call(f"list versions of {name}", versions)

    def _entries(self, name: str) -> builtins.list[RegistryEntry]:
        models = [m for m in self._models(name) if _is_ours(m)]
        owners = _alias_owners(models)
        entries = [self._entry(m, owners) for m in models]
        return sorted(entries, key=lambda e: int(e.version))

    def list(self, name: str | None = None) -> builtins.list[RegistryEntry]:
        if name is not None:
            return self._entries(validate_name(name))

        def containers() -> Iterable[Any]:
            return builtins.list(self.client.models.list())

        names = sorted({str(c.name) for c in self._call("list models", containers)})
        return [entry for model_name in names for entry in self._entries(model_name)]

    def latest(self, name: str) -> RegistryEntry | None:
        entries = self._entries(validate_name(name))
        return entries[-1] if entries else None

    def get(self, name: str, version: str | None = None, alias: str | None = None) -> RegistryEntry:
        validate_name(name)
        if version is not None and alias is not None:
            raise RegistryError("give a version or an alias, not both")
        entries = self._entries(name)
        if not entries:
            raise ModelNotFound(f"model {name!r} is not in the registry at {self.location}")
        if alias is not None:
            owned = [e for e in entries if alias in e.aliases]
            if not owned:
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
            return owned[0]
        if version is None:
            return entries[-1]
        for entry in entries:
            if entry.version == version:
                return entry
        raise ModelNotFound(f"model {name!r} has no version {version!r}")

    def next_version(self, name: str) -> str:
        return self._next(name, self._models(validate_name(name)))

    def _next(self, name: str, models: builtins.list[Any]) -> str:
        listed = [int(m.version) for m in models if str(m.version).isdigit()]
        return str(max([*listed, self._taken.get(name, 0)], default=0) + 1)

    def fetch(self, entry: RegistryEntry, folder: Path) -> Path:
        """Download the version's file through azure-ai-ml, then check it against the recorded sha256."""
        folder.mkdir(parents=True, exist_ok=True)
        self._call(
            f"download {entry.name} version {entry.version}",
            lambda: self.client.models.download(entry.name, entry.version, download_path=str(folder)),
        )
        found = sorted(p for p in folder.rglob("*") if p.is_file())
        if len(found) != 1:
            raise RegistryError(
                f"{entry.name} version {entry.version}: expected one file in Azure ML, downloaded {len(found)}"
            )
        return check_file(entry, found[0])

    # -- writing ----------------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        *,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> Registration:
        """Create the next model version; bytes equal to the latest version's add nothing.

        The file is uploaded to the workspace's blob datastore first and the version is created by one PUT
        that carries the whole record, so a failure at any step leaves no version behind; the retry either
        creates it or, if the PUT had in fact landed, finds the same sha256 and reports it unchanged.
        """
        validate_name(name)
        if not onnx_bytes:
            raise RegistryError("refusing to register an empty model file")
        user_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        reserved = sorted(k for k in user_tags if k.startswith(RESERVED_PREFIX) or k in ("sha256", "format"))
        if reserved:
            raise RegistryError(f"tags {reserved} are reserved for the registry's own use")
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        models = self._models(name)
        ours = sorted((m for m in models if _is_ours(m)), key=lambda m: int(m.version))
        if ours and ours[-1].properties.get(P_SHA256) == digest:
            return Registration(self._entry(ours[-1], _alias_owners(ours)), created=False)
        created_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        properties = {
            P_SHA256: digest,
            P_SIZE: str(len(onnx_bytes)),
            P_CREATED: created_at,
            **pack(P_METRICS, json.dumps(metrics or {}, sort_keys=True)),
            **pack(P_METADATA, json.dumps(metadata or {}, sort_keys=True)),
        }
        all_tags = {**user_tags, "sha256": digest, "format": "onnx"}
        check_limits("properties", properties, MAX_PROPERTIES)
        check_limits("tags", all_tags, MAX_TAGS)
        task = str((metadata or {}).get("task", "unknown task"))
        if version is not None:
            number = validate_version(version)
            self._create(name, number, onnx_bytes, all_tags, properties, task, models)
            return Registration(self.get(name, number), created=True)
        for _ in range(CLAIM_ATTEMPTS):  # with no number asked for, a taken one just means: the next one
            number = self._next(name, models)
            try:
                self._create(name, number, onnx_bytes, all_tags, properties, task, models)
            except VersionTaken:
                models = self._models(name)
                continue
            return Registration(self.get(name, number), created=True)
        raise RegistryError(f"could not claim a new version of {name} after {CLAIM_ATTEMPTS} attempts")

    def _create(
        self,
        name: str,
        number: str,
        onnx_bytes: bytes,
        tags: dict[str, str],
        properties: dict[str, str],
        task: str,
        models: builtins.list[Any],
    ) -> None:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        if number in {str(m.version) for m in models}:
            self._taken[name] = max(self._taken.get(name, 0), int(number))
            raise VersionTaken(f"version {number} of {name} already exists in Azure ML; versions are immutable")
        with tempfile.TemporaryDirectory(prefix="azureml-model-") as work:
            path = Path(work) / MODEL_FILE
            path.write_bytes(onnx_bytes)
            model = Model(
                name=name,
                version=number,
                path=str(path),
                type=AssetTypes.CUSTOM_MODEL,
                description=f"ONNX model {name} {number} ({task})",
                tags=tags,
                properties=properties,
            )
            try:
                self._call(f"register {name} version {number}", lambda: self.client.models.create_or_update(model))
            except RegistryUnavailable:
                raise
            except ModelNotFound as error:
                raise RegistryError(error.message) from None
            except RegistryError as error:
                if not any(sign in error.message for sign in TAKEN_SIGNS):
                    raise
                # Someone created this version meanwhile, or it existed (deleted versions cannot be re-created).
                self._taken[name] = max(self._taken.get(name, 0), int(number))
                raise VersionTaken(f"{error.message}; version {number} is taken") from None

    def promote(self, name: str, version: str, alias: str = DEFAULT_ALIAS) -> RegistryEntry:
        """Move ``alias`` to ``version`` by compare-and-fix over tags.

        The target gets tag ``edge.alias.<alias>`` = the next promotion counter; readers take the holder with
        the highest (counter, version), so at every moment exactly one version answers to the alias, even while
        two promotions race or after one stopped half way. Then, from one fresh read, every holder ranked below
        ours is untagged, and ours too if a higher one exists (we lost the race): a holder is only ever
        removed by someone who saw a higher one, so the winner keeps it."""
        validate_alias(alias)
        target = self.get(name, version)
        key = ALIAS_TAG + alias
        counters = [_counter(m, key) for m in self._models(name)]
        mine = (max([c for c in counters if c is not None], default=0) + 1, int(target.version))
        self._set_tag(name, target.version, key, str(mine[0]))
        holders = {
            str(m.version): (count, int(m.version))
            for m in self._models(name)
            if _is_ours(m) and (count := _counter(m, key)) is not None
        }
        best = max(holders.values(), default=mine)
        for holder, rank in holders.items():
            if rank < mine or (holder == target.version and best > mine):
                self._set_tag(name, holder, key, None, expected=str(rank[0]))
        return self.get(name, target.version)

    def _set_tag(self, name: str, version: str, key: str, value: str | None, expected: str | None = None) -> None:
        """Set (or with None remove) one tag; a removal only if the tag still holds ``expected``."""

        def update() -> None:
            model = self.client.models.get(name=name, version=version)
            tags = dict(model.tags or {})
            if expected is not None and tags.get(key) != expected:
                return  # changed since we looked: someone promoted it again, leave it
            if value is None:
                tags.pop(key, None)
            else:
                tags[key] = value
            model.tags = tags
            self.client.models.create_or_update(model)

        self._call(f"set tag {key} on {name} version {version}", update)

    def _entry(self, model: Any, owners: dict[str, str]) -> RegistryEntry:
        properties = {str(k): str(v) for k, v in (model.properties or {}).items()}
        tags = {str(k): str(v) for k, v in (model.tags or {}).items()}
        version = str(model.version)
        return RegistryEntry(
            name=str(model.name),
            version=version,
            sha256=properties[P_SHA256],
            size=int(properties.get(P_SIZE, "0")),
            path=None,
            metrics=json.loads(unpack(properties, P_METRICS) or "{}"),
            tags={k: v for k, v in tags.items() if not k.startswith(RESERVED_PREFIX) and k not in ("sha256", "format")},
            metadata=json.loads(unpack(properties, P_METADATA) or "{}"),
            aliases=tuple(sorted(a for a, v in owners.items() if v == version)),
            created_at=properties.get(P_CREATED, ""),
            uri=f"{self.location}/models/{model.name}/versions/{version}",
        )


def _is_ours(model: Any) -> bool:
    """Versions registered through this registry: integer versions that carry our sha256 property."""
    return str(model.version).isdigit() and P_SHA256 in (model.properties or {})


def _counter(model: Any, key: str) -> int | None:
    value = (model.tags or {}).get(key)
    return int(value) if value is not None and str(value).isdigit() else None


def _alias_owners(models: Iterable[Any]) -> dict[str, str]:
    """alias -> the version holding it with the highest counter (ties: the higher version)."""
    best: dict[str, tuple[int, int]] = {}
    for model in models:
        for key, value in (model.tags or {}).items():
            if str(key).startswith(ALIAS_TAG) and str(value).isdigit():
                alias = str(key)[len(ALIAS_TAG) :]
                rank = (int(value), int(model.version))
                if rank > best.get(alias, (-1, -1)):
                    best[alias] = rank
    return {alias: str(rank[1]) for alias, rank in best.items()}
