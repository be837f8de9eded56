"""The local file registry: immutable, numbered model versions with sha256, metrics, tags and aliases.

Layout under the root::

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloud.errors import ModelNotFound, RegistryError
from edge_module.store import NAME_PATTERN

ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
ENV_ROOT = "CLOUD_REGISTRY_DIR"
MODEL_FILE = "model.onnx"
ENTRY_FILE = "entry.json"
ALIASES_FILE = "aliases.json"
MAX_CLAIM_ATTEMPTS = 1000


def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or "registry")


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    version: str
    sha256: str
    size: int
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "path": str(self.path),
            "metrics": self.metrics,
            "tags": self.tags,
            "metadata": self.metadata,
            "aliases": list(self.aliases),
            "created_at": self.created_at,
        }


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


class LocalRegistry:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        *,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> RegistryEntry:
        """Store a new version. ``version`` claims exactly that number (see ``next_version``) or fails."""
        validate_name(name)
        if not onnx_bytes:
            raise RegistryError("refusing to register an empty model file")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        version_dir = self._claim_version(model_dir) if version is None else self._claim_exact(model_dir, version)
        record = {
            "name": name,
            "version": version_dir.name,
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
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
        return self._entry(model_dir, version_dir.name, self._aliases(model_dir))

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

    def promote(self, name: str, version: str, alias: str = "production") -> RegistryEntry:
        if not ALIAS_PATTERN.fullmatch(alias):
            raise RegistryError(f"invalid alias {alias!r}")
        entry = self.get(name, version)
        model_dir = self.root / name
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
        if not version.isdigit() or version.startswith("0"):
            raise RegistryError(f"invalid version {version!r}: versions are 1, 2, 3, ...")
        candidate = model_dir / version
        try:
            candidate.mkdir()
        except FileExistsError as error:
            raise RegistryError(
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
        return RegistryEntry(
            name=record["name"],
            version=record["version"],
            sha256=record["sha256"],
            size=int(record["size"]),
            path=(model_dir / version / MODEL_FILE).resolve(),
            metrics=record.get("metrics", {}),
            tags=record.get("tags", {}),
            metadata=record.get("metadata", {}),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
            created_at=record.get("created_at", ""),
        )
