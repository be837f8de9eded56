"""The on-disk model store: content-addressed versions and a crash-safe active pointer per model.

Layout under the store root::

    blobs/<sha256>        immutable ONNX files, named by their content hash
    models/<name>.json    the pointer: active version, last-known-good, kept versions
    tmp/                  partial writes; anything here after a crash is garbage
    partial/<sha256>      a download in progress, kept across failures and restarts so that it resumes

Every write goes to ``tmp/``, is fsynced, then renamed into place, and the directory is fsynced.
A pointer only ever names blobs that were fully written first, so a crash at any point leaves
either the old or the new version active.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from edge_module.errors import DigestMismatch, InvalidRequest, StoreError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PARTIAL_MAX_AGE_S = 7 * 24 * 3600  # a download untouched this long is for a release nobody wants any more
_CHUNK = 1024 * 1024


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(f"invalid model name {name!r}: use 1-64 characters from [A-Za-z0-9_-]")
    return name


def validate_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version) or version in (".", ".."):
        raise InvalidRequest(f"invalid model version {version!r}: use 1-64 characters from [A-Za-z0-9._-]")
    return version


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VersionRecord:
    version: str
    sha256: str
    added_at: str = ""


@dataclass(frozen=True)
class Rejection:
    """A release rolled back after activation: not applied again until the desired release changes."""

    version: str
    sha256: str
    reason: str
    at: str = ""


MAX_REJECTIONS = 8


@dataclass
class ModelRecord:
    name: str
    active: VersionRecord
    previous: VersionRecord | None = None
    versions: list[VersionRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def find(self, version: str) -> VersionRecord | None:
        return next((record for record in self.versions if record.version == version), None)

    def rejection(self, version: str, sha256: str) -> Rejection | None:
        return next((r for r in self.rejected if r.version == version and r.sha256 == sha256), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecord:
        previous = data.get("previous")
        return cls(
            name=data["name"],
            active=VersionRecord(**data["active"]),
            previous=VersionRecord(**previous) if previous else None,
            versions=[VersionRecord(**item) for item in data.get("versions", [])],
            rejected=[Rejection(**item) for item in data.get("rejected", [])],
        )


class ModelStore:
    def __init__(self, root: Path, keep_versions: int = 2) -> None:
        self.root = root
        self.keep_versions = max(2, keep_versions)
        self._blobs = root / "blobs"
        self._models = root / "models"
        self._tmp = root / "tmp"
        self._partial = root / "partial"
        self._lock = threading.RLock()
        self._resuming: set[str] = set()  # partial downloads open right now
        # Blobs committed but not yet named by a pointer; garbage collection must spare them.
        self._pending: set[str] = set()

    def open(self) -> None:
        for path in (self._blobs, self._models, self._tmp):
            path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.root, 0o700)
        # Nothing is mid-write at start, so every temp file is a leftover of a crash.
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._drop_stale_partials()
        self.collect_garbage()

    def _drop_stale_partials(self) -> None:
        # partial/ is made on first use: a store shipped read-only (an Azure ML model mount) has none.
        if not self._partial.is_dir():
            return
        now = time.time()
        for partial in self._partial.iterdir():
            with contextlib.suppress(OSError):
                named = SHA256_PATTERN.fullmatch(partial.name) is not None
                if not named or self.has_blob(partial.name) or now - partial.stat().st_mtime > PARTIAL_MAX_AGE_S:
                    partial.unlink()

    # -- blobs -----------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not SHA256_PATTERN.fullmatch(sha256):
            raise StoreError(f"not a sha256 digest: {sha256!r}")
        return self._blobs / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A file in the store's tmp dir (same filesystem, so renames are atomic). Removed unless committed."""
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="part-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield path, handle
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def resumable_file(self, sha256: str) -> Iterator[tuple[Path, BinaryIO]]:
        """The partial download of blob ``sha256``, open for appending at its end.

        It outlives a failed attempt and a restart, so the next download of the same content resumes where
        this one stopped, whatever URL (or SAS token) it comes from. ``commit_temp`` moves it into place;
        ``discard_partial`` drops bytes that proved wrong. A second download of the same content at the same
        time gets a plain temp file.
        """
        path = self._partial_path(sha256)
        with self._lock:
            busy = sha256 in self._resuming
            self._resuming.add(sha256)
        if busy:
            with self.temp_file() as pair:
                yield pair
            return
        try:
            self._partial.mkdir(exist_ok=True)
            # Unbuffered: what the file holds is what arrived, should the process die now.
            with path.open("ab", buffering=0) as handle:
                yield path, handle
        finally:
            with self._lock:
                self._resuming.discard(sha256)
            with contextlib.suppress(FileNotFoundError):
                # Committed (or the same content was already there), or nothing arrived: nothing to resume.
                if self.has_blob(sha256) or path.stat().st_size == 0:
                    path.unlink()

    def discard_partial(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._partial_path(sha256).unlink()

    def _partial_path(self, sha256: str) -> Path:
        return self._partial / self.blob_path(sha256).name  # blob_path refuses what is not a digest

    def commit_temp(self, temp_path: Path, expected_sha256: str | None = None) -> str:
        """fsync a finished temp file, check its hash, and move it into place. Returns its sha256."""
        with temp_path.open("rb") as handle:
            os.fsync(handle.fileno())
        actual = sha256_of_file(temp_path)
        if expected_sha256 is not None and actual != expected_sha256:
            raise DigestMismatch(f"sha256 mismatch: expected {expected_sha256}, got {actual}")
        target = self.blob_path(actual)
        with self._lock:
            if not target.exists():
                os.replace(temp_path, target)
                _fsync_dir(self._blobs)
            self._pending.add(actual)
        return actual

    def put_bytes(self, data: bytes) -> str:
        with self.temp_file() as (path, handle):
            handle.write(data)
            handle.flush()
            return self.commit_temp(path)

    def read_blob(self, sha256: str) -> bytes:
        """Read a blob and prove it is intact: disks on unattended devices do rot."""
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {sha256} is missing from the store") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise StoreError(f"blob {sha256} is corrupt (its content hashes to {actual})")
        return data

    # -- pointers --------------------------------------------------------------------------------

    def _pointer(self, name: str) -> Path:
        return self._models / f"{validate_name(name)}.json"

    def get(self, name: str) -> ModelRecord | None:
        try:
            data = json.loads(self._pointer(name).read_text())
            return ModelRecord.from_json(data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"pointer for model '{name}' is unreadable: {exc}") from exc

    def records(self) -> dict[str, ModelRecord]:
        records: dict[str, ModelRecord] = {}
        for path in sorted(self._models.glob("*.json")):
            name = path.stem
            if not NAME_PATTERN.fullmatch(name):
                continue
            # An unreadable pointer must not stop the other models from serving.
            with contextlib.suppress(StoreError):
                record = self.get(name)
                if record is not None:
                    records[name] = record
        return records

    def _write_pointer(self, record: ModelRecord) -> None:
        payload = json.dumps(record.to_json(), indent=2, sort_keys=True).encode()
        with self.temp_file() as (path, handle):
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(path, self._pointer(record.name))
        _fsync_dir(self._models)

    def activate(self, name: str, version: str, sha256: str) -> ModelRecord:
        """Make ``version`` active; the version it replaces becomes last-known-good."""
        validate_version(version)
        if not self.has_blob(sha256):
            raise StoreError(f"cannot activate {name}:{version}: blob {sha256} is not in the store")
        with self._lock:
            current = self.get(name)
            entry = VersionRecord(version=version, sha256=sha256, added_at=_utc_now())
            if current is None:
                record = ModelRecord(name=name, active=entry, previous=None, versions=[entry])
            else:
                previous = current.previous if current.active.version == version else current.active
                versions = [v for v in current.versions if v.version != version] + [entry]
                # Activating a rejected release by hand (the repository API) takes it off the list.
                rejected = [r for r in current.rejected if (r.version, r.sha256) != (version, sha256)]
                record = ModelRecord(name, entry, previous, versions, rejected)
            record.versions = self._retained(record)
            self._write_pointer(record)
            self._pending.discard(sha256)
        self.collect_garbage()
        return record

    def _retained(self, record: ModelRecord) -> list[VersionRecord]:
        pinned = {record.active.version}
        if record.previous is not None:
            pinned.add(record.previous.version)
        kept = [v for v in record.versions if v.version in pinned]
        for candidate in reversed(record.versions):
            if len(kept) >= self.keep_versions:
                break
            if candidate.version not in pinned:
                kept.append(candidate)
        order = {v.version: i for i, v in enumerate(record.versions)}
        return sorted(kept, key=lambda v: order[v.version])

    def rollback(self, name: str) -> ModelRecord:
        with self._lock:
            current = self.get(name)
            if current is None or current.previous is None:
                raise StoreError(f"model '{name}' has no last-known-good version to roll back to")
            record = ModelRecord(name, current.previous, current.active, current.versions, list(current.rejected))
            self._write_pointer(record)
        return record

    def reject(self, name: str, version: str, reason: str) -> ModelRecord:
        """Roll the active ``version`` back and forget it: it is never last-known-good, and its release is
        remembered as rejected (the newest ``MAX_REJECTIONS``) so a restart does not apply it again."""
        with self._lock:
            current = self.get(name)
            if current is None or current.active.version != version or current.previous is None:
                raise StoreError(f"model '{name}' version {version} is not active with a version to roll back to")
            bad = current.active
            versions = [v for v in current.versions if v.version != version]
            active = current.previous
            previous = next((v for v in reversed(versions) if v.version != active.version), None)
            rejected = [r for r in current.rejected if (r.version, r.sha256) != (bad.version, bad.sha256)]
            rejected = [*rejected, Rejection(bad.version, bad.sha256, reason, _utc_now())][-MAX_REJECTIONS:]
            record = ModelRecord(name, active, previous, versions, rejected)
            self._write_pointer(record)
        self.collect_garbage()
        return record

    def remove(self, name: str) -> bool:
        with self._lock:
            pointer = self._pointer(name)
            try:
                pointer.unlink()
            except FileNotFoundError:
                return False
            _fsync_dir(self._models)
        self.collect_garbage()
        return True

    def discard(self, sha256: str) -> None:
        """Forget a committed blob that will not be activated (it failed to load); keep it if a pointer names it."""
        with self._lock:
            self._pending.discard(sha256)
        self.collect_garbage()

    def collect_garbage(self) -> None:
        """Drop blobs that no pointer names and no pending activation holds."""
        with self._lock:
            records = self.records().values()
            referenced = {v.sha256 for record in records for v in record.versions}
            referenced |= {record.active.sha256 for record in records} | self._pending
            for blob in self._blobs.iterdir():
                if blob.name not in referenced:
                    with contextlib.suppress(OSError):
                        blob.unlink()
