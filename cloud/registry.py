"""The registry of record: the ``Registry`` protocol, its entries, and the local folder backend.

Two backends implement ``Registry``: ``LocalRegistry`` (a folder, below) and ``AzureMLRegistry``
(``cloud/azureml_registry.py``); ``cloud/registry_location.py`` opens one from a location. Both follow the
same rules (docs/registry.md): versions are 1, 2, 3, ... and only grow; a version's file and record never
change; registering bytes identical to the latest version adds nothing; an alias names at most one version.

The folder layout under the root::

    <name>/<version>/model.onnx
    <name>/<version>/entry.json     (everything but the aliases; written once)
    <name>/aliases.json             ({"production": "2", ...}; replaced atomically)

A version folder is claimed with ``mkdir``, which is atomic, so two processes registering at the same
time get different versions and never overwrite each other.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from cloud.errors import ModelIntegrityError, ModelNotFound, RegistryError, VersionTaken
from edge_module.store import NAME_PATTERN, sha256_of_file

ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
ENV_ROOT = "CLOUD_REGISTRY_DIR"  # deprecated: $CLOUD_REGISTRY (cloud/registry_location.py) replaces it
DEFAULT_ALIAS = "production"
MODEL_FILE = "model.onnx"
ENTRY_FILE = "entry.json"
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
MAX_CLAIM_ATTEMPTS = 1000


def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or "registry")


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    version: str
    sha256: str
    size: int
    path: Path | None  # the file, for a local registry; None when it must be fetched (Registry.fetch)
    metrics: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created_at: str = ""
    uri: str = ""  # where the registry keeps the file: its path, or an azureml:// asset id

    def local_path(self) -> Path:
        """The file of a local registry's entry; entries of a remote registry go through ``Registry.fetch``."""
        if self.path is None:
            raise RegistryError(f"{self.name} version {self.version} is not a local file ({self.uri}); fetch it first")
        return self.path

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "path": str(self.path) if self.path is not None else None,
            "uri": self.uri,
            "metrics": self.metrics,
            "tags": self.tags,
            "metadata": self.metadata,
            "aliases": list(self.aliases),
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Registration:
    """What ``register`` did: ``created`` is False when the bytes equal the latest version's (nothing added)."""

    entry: RegistryEntry
    created: bool

    def message(self) -> str:
        verb = "registered" if self.created else "unchanged:"
        return f"{verb} {self.entry.name} version {self.entry.version}"


class Registry(Protocol):
    """What every backend provides; see docs/registry.md for the shared semantics."""

    @property
    def location(self) -> str: ...

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        *,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> Registration: ...

    def get(self, name: str, version: str | None = None, alias: str | None = None) -> RegistryEntry: ...

    def list(self, name: str | None = None) -> list[RegistryEntry]: ...

    def latest(self, name: str) -> RegistryEntry | None: ...

    def next_version(self, name: str) -> str: ...

    def promote(self, name: str, version: str, alias: str = DEFAULT_ALIAS) -> RegistryEntry: ...

    def fetch(self, entry: RegistryEntry, folder: Path) -> Path:
        """A local copy of the version's file, checked against the sha256 recorded at registration."""
        ...


def check_file(entry: RegistryEntry, path: Path) -> Path:
    """Refuse a file that no longer matches the sha256 recorded when its version was registered."""
    try:
        actual = sha256_of_file(path)
    except OSError as error:
        what = f"{entry.name} version {entry.version}"
        raise ModelIntegrityError(f"{what}: cannot read {path}: {error.strerror}") from None
    if actual != entry.sha256:
        raise ModelIntegrityError(
            f"{entry.name} version {entry.version}: the file's sha256 is {actual}, "
            f"the registry recorded {entry.sha256} at registration; refusing to use it"
        )
    return path


def validate_alias(alias: str) -> str:
    if not ALIAS_PATTERN.fullmatch(alias):
        raise RegistryError(f"invalid alias {alias!r}: use 1-64 of [A-Za-z0-9_-], starting with a letter")
    return alias


def validate_version(version: str) -> str:
    if not version.isdigit() or version.startswith("0"):
        raise RegistryError(f"invalid version {version!r}: versions are 1, 2, 3, ...")
    return version


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise RegistryError(f"invalid model name {name!r}: use 1-64 of [A-Za-z0-9_-]")
    return name


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """Serialise registrations and alias moves of one model across processes (flock on a lock file)."""
    import fcntl

    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class LocalRegistry:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    @property
    def location(self) -> str:
        return str(self.root)

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
        """Store a new version, unless ``onnx_bytes`` equal the latest version's (then nothing is added).

        ``version`` claims exactly that number (see ``next_version``) or fails with RegistryError.
        """
        validate_name(name)
        if not onnx_bytes:
            raise RegistryError("refusing to register an empty model file")
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        model_dir = self.root / name
        with _locked(model_dir):
            latest = self.latest(name)
            if latest is not None and latest.sha256 == digest:
                return Registration(latest, created=False)
            claim = self._claim_version(model_dir) if version is None else self._claim_exact(model_dir, version)
            version_dir = claim
            entry = self._write_version(version_dir, name, onnx_bytes, digest, metrics, tags, metadata)
        return Registration(entry, created=True)

    def _write_version(
        self,
        version_dir: Path,
        name: str,
        onnx_bytes: bytes,
        digest: str,
        metrics: dict[str, Any] | None,
        tags: dict[str, str] | None,
        metadata: dict[str, Any] | None,
    ) -> RegistryEntry:
        record = {
            "name": name,
            "version": version_dir.name,
            "sha256": digest,
            "size": len(onnx_bytes),
            "metrics": dict(metrics or {}),
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "metadata": dict(metadata or {}),
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        try:
            (version_dir / MODEL_FILE).write_bytes(onnx_bytes)
            # entry.json last: a version without it is incomplete and is ignored by readers.
            _write_atomic(version_dir / ENTRY_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
        return self._entry(version_dir.parent, version_dir.name, self._aliases(version_dir.parent))

    def latest(self, name: str) -> RegistryEntry | None:
        model_dir = self.root / validate_name(name)
        versions = self._versions(model_dir)
        return self._entry(model_dir, versions[-1], self._aliases(model_dir)) if versions else None

    def fetch(self, entry: RegistryEntry, folder: Path) -> Path:
        """The registered file itself (no copy), after checking its sha256."""
        return check_file(entry, entry.local_path())

    def get(self, name: str, version: str | None = None, alias: str | None = None) -> RegistryEntry:
        validate_name(name)
        if version is not None and alias is not None:
            raise RegistryError("give a version or an alias, not both")
        model_dir = self.root / name
        versions = self._versions(model_dir)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not in the registry at {self.root}")
        aliases = self._aliases(model_dir)
        if alias is not None:
            if alias not in aliases:
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
            version = aliases[alias]
        if version is None:
            version = versions[-1]
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return self._entry(model_dir, version, aliases)

    def promote(self, name: str, version: str, alias: str = DEFAULT_ALIAS) -> RegistryEntry:
        """Point ``alias`` at ``version``: one atomic replace of aliases.json, so it never names two versions."""
        validate_alias(alias)
        entry = self.get(name, version)
        model_dir = self.root / name
        with _locked(model_dir):  # read-modify-write: concurrent moves of other aliases are not lost
            aliases = self._aliases(model_dir)
            aliases[alias] = entry.version
            _write_atomic(model_dir / ALIASES_FILE, json.dumps(aliases, indent=2, sort_keys=True) + "\n")
        return self._entry(model_dir, entry.version, aliases)

    def list(self, name: str | None = None) -> list[RegistryEntry]:
        if name is not None:
            validate_name(name)
            names = [name]
        elif self.root.is_dir():
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name))
        else:
            names = []
        entries: builtins.list[RegistryEntry] = []
        for model_name in names:
            model_dir = self.root / model_name
            aliases = self._aliases(model_dir)
            entries.extend(self._entry(model_dir, v, aliases) for v in self._versions(model_dir))
        return entries

    def next_version(self, name: str) -> str:
        """The version the next ``register`` will get, barring a concurrent registration."""
        model_dir = self.root / validate_name(name)
        if not model_dir.is_dir():
            return "1"
        return str(max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0) + 1)

    @staticmethod
    def _claim_exact(model_dir: Path, version: str) -> Path:
        validate_version(version)
        candidate = model_dir / version
        try:
            candidate.mkdir()
        except FileExistsError as error:
            raise VersionTaken(
                f"version {version} of {model_dir.name} already exists; versions are immutable"
            ) from error
        return candidate

    def _claim_version(self, model_dir: Path) -> Path:
        existing = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        number = max(existing, default=0) + 1
        for _ in range(MAX_CLAIM_ATTEMPTS):
            candidate = model_dir / str(number)
            try:
                candidate.mkdir()
            except FileExistsError:
                number += 1
                continue
            return candidate
        raise RegistryError(f"could not claim a new version under {model_dir}")

    @staticmethod
    def _versions(model_dir: Path) -> builtins.list[str]:
        if not model_dir.is_dir():
            return []
        complete = (p for p in model_dir.iterdir() if p.name.isdigit() and (p / ENTRY_FILE).is_file())
        return sorted((p.name for p in complete), key=int)

    @staticmethod
    def _aliases(model_dir: Path) -> dict[str, str]:
        path = model_dir / ALIASES_FILE
        if not path.is_file():
            return {}
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise RegistryError(f"{path} is not a JSON object")
        return {str(k): str(v) for k, v in raw.items()}

    @staticmethod
    def _entry(model_dir: Path, version: str, aliases: dict[str, str]) -> RegistryEntry:
        record = json.loads((model_dir / version / ENTRY_FILE).read_text(encoding="utf-8"))
        path = (model_dir / version / MODEL_FILE).resolve()
        return RegistryEntry(
            name=record["name"],
            version=record["version"],
            sha256=record["sha256"],
            size=int(record["size"]),
            path=path,
            metrics=record.get("metrics", {}),
            tags=record.get("tags", {}),
            metadata=record.get("metadata", {}),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
            created_at=record.get("created_at", ""),
            uri=str(path),
        )
