"""Publish an ONNX file where devices fetch it: a folder (``file://``, labs) or Azure Blob Storage.

Published files are immutable: ``<name>/<version>/model.onnx`` is written once; publishing the same
content again is a no-op, different content under the same version is refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from cloud.releases.errors import PublishError
from edge_module.store import sha256_of_file

BLOB_SCHEME = "az"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
DEFAULT_SAS_DAYS = 365
MAX_SAS_DAYS = 3650
# Allows for clock skew between the machine that signs the SAS and the storage service.
SAS_START_SKEW = timedelta(minutes=15)
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Published:
    uri: str  # what goes into the release (may hold a SAS token: never log it)
    location: str  # the same place without any secret, for messages and logs


class Publisher(Protocol):
    def publish(self, name: str, version: str, source: Path, sha256: str) -> Published: ...


def object_path(name: str, version: str) -> str:
    return f"{name}/{version}/model.onnx"


class FolderPublisher:
    def __init__(self, root: Path, base_uri: str | None = None) -> None:
        self.root = root
        self.base_uri = base_uri.rstrip("/") if base_uri else None

    def publish(self, name: str, version: str, source: Path, sha256: str) -> Published:
        target = self.root / object_path(name, version)
        if target.exists():
            if sha256_of_file(target) != sha256:
                raise PublishError(f"{target} already holds different content; published versions are immutable")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.onnx.")
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if sha256_of_file(target) != sha256:
                raise PublishError(f"{target}: sha256 changed while copying")
        uri = f"{self.base_uri}/{object_path(name, version)}" if self.base_uri else target.resolve().as_uri()
        return Published(uri=uri, location=uri)


class BlobPublisher:
    """Upload with ``azure-storage-blob`` and hand out a read-only SAS for this one blob.

    The SAS is signed with the account key of the connection string: a user-delegation SAS lives at most
    7 days, too short for devices that stay offline for weeks.
    """

    def __init__(
        self,
        connection_string: str,
        container: str,
        prefix: str = "",
        sas_days: int = DEFAULT_SAS_DAYS,
        retries: int = 3,
    ) -> None:
        if not 1 <= sas_days <= MAX_SAS_DAYS:
            raise PublishError(f"SAS expiry must be 1-{MAX_SAS_DAYS} days, got {sas_days}")
        self.connection_string = connection_string
        self.container = container
        self.prefix = prefix.strip("/")
        self.sas_days = sas_days
        # The SDK's default (10 retries, exponential backoff) keeps a CLI waiting for minutes on a dead endpoint.
        self.retries = retries

    def publish(self, name: str, version: str, source: Path, sha256: str) -> Published:
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import BlobServiceClient, ContentSettings

        blob_name = f"{self.prefix}/{object_path(name, version)}" if self.prefix else object_path(name, version)
        try:
            service = BlobServiceClient.from_connection_string(
                self.connection_string, retry_total=self.retries, connection_timeout=20
            )
        except ValueError:
            raise PublishError("the storage connection string is malformed") from None
        account_key = getattr(service.credential, "account_key", None)
        if not account_key:
            raise PublishError("the storage connection string has no AccountKey; it is needed to sign the SAS")
        blob = service.get_blob_client(self.container, blob_name)
        location = blob.url
        try:
            container = service.get_container_client(self.container)
            if not container.exists():
                container.create_container()
            try:
                with source.open("rb") as data:
                    blob.upload_blob(
                        data,
                        overwrite=False,
                        content_settings=ContentSettings(content_type="application/octet-stream"),
                        metadata={"sha256": sha256, "model": name, "version": version},
                    )
            except ResourceExistsError:
                existing = blob.get_blob_properties().metadata.get("sha256")
                if existing != sha256:
                    raise PublishError(
                        f"{location} already holds different content (sha256 {existing}); versions are immutable"
                    ) from None
            self._check_uploaded(blob, source)
        except AzureError as error:
            raise PublishError(f"upload to {location} failed: {type(error).__name__}: {_first_line(error)}") from None
        sas = self._sas(str(service.account_name), account_key, blob_name, location)
        return Published(uri=f"{location}?{sas}", location=location)

    @staticmethod
    def _check_uploaded(blob: Any, source: Path) -> None:
        # The service computes Content-MD5 of single-shot uploads; for block uploads compare the length.
        properties = blob.get_blob_properties()
        if properties.size != source.stat().st_size:
            raise PublishError(f"{blob.url}: uploaded size {properties.size} != {source.stat().st_size}")
        served_md5 = properties.content_settings.content_md5
        if served_md5:
            local_md5 = hashlib.md5(usedforsecurity=False)
            with source.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    local_md5.update(chunk)
            if bytes(served_md5) != local_md5.digest():
                raise PublishError(f"{blob.url}: the service's MD5 differs from the local file")

    def _sas(self, account: str, account_key: str, blob_name: str, location: str) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = datetime.now(timezone.utc)
        # https only in production; Azurite (labs, tests) serves http.
        protocol = "https" if location.startswith("https://") else "https,http"
        return str(
            generate_blob_sas(
                account_name=account,
                container_name=self.container,
                blob_name=blob_name,
                account_key=account_key,
                permission=BlobSasPermissions(read=True),
                start=now - SAS_START_SKEW,
                expiry=now + timedelta(days=self.sas_days),
                protocol=protocol,
            )
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def publisher_for(
    destination: str,
    *,
    base_uri: str | None = None,
    connection_string: str | None = None,
    sas_days: int = DEFAULT_SAS_DAYS,
) -> Publisher:
    """``az://<container>[/<prefix>]`` for Azure Blob; ``file:///path`` or a plain path for a folder."""
    parsed = urllib.parse.urlsplit(destination)
    if parsed.scheme == BLOB_SCHEME:
        if not parsed.netloc:
            raise PublishError(f"{destination!r}: give a container, as in az://models")
        connection_string = connection_string or os.environ.get(CONNECTION_STRING_ENV)
        if not connection_string:
            raise PublishError(f"publishing to Azure Blob needs a connection string: set {CONNECTION_STRING_ENV}")
        return BlobPublisher(connection_string, parsed.netloc, parsed.path, sas_days)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PublishError(f"{destination!r}: file URIs must be local (file:///path)")
        return FolderPublisher(Path(urllib.request.url2pathname(parsed.path)), base_uri)
    if len(parsed.scheme) <= 1:  # a plain path (or a Windows drive letter)
        return FolderPublisher(Path(destination), base_uri)
    raise PublishError(f"unsupported destination {destination!r}: use a folder, file:///path or az://container")
