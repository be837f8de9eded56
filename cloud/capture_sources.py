"""Where captured data is read from: a folder, an Azure Blob container or prefix, or an Azure ML datastore path.

- a folder (or one file): every file below it, in name order (hidden files are skipped);
- ``az://<container>[/<prefix>]``: with ``$AZURE_STORAGE_CONNECTION_STRING``, else the account at
  ``$AZURE_STORAGE_ACCOUNT_URL`` with ``DefaultAzureCredential``;
- ``https://<account>.blob.core.windows.net/<container>[/<prefix>][?<SAS>]``: a container URL with a SAS
  token (read and list rights), or without one, ``DefaultAzureCredential``;
- ``azureml://[subscriptions/<s>/resourcegroups/<g>/workspaces/<w>/]datastores/<name>/paths/<prefix>``: the
  datastore's Blob container (as cloud/azure_data.py resolves it), under that prefix.

Blobs are listed, never guessed: IoT Hub's file name format can put partitions and dates anywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cloud.azure_data import credential_or_default
from cloud.errors import DataError

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_ENV = "AZURE_STORAGE_ACCOUNT_URL"


@dataclass(frozen=True)
class CaptureFile:
    name: str
    payload: bytes


class SourceDigest:
    """The sha256 of everything read from a source: each file's name and content hash, in order (lineage)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, file: CaptureFile) -> None:
        self._hash.update(f"{file.name}\n{hashlib.sha256(file.payload).hexdigest()}\n".encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def redacted(source: str) -> str:
    """The source as reports and lineage show it: a URL's SAS token (a secret) replaced by ``<SAS>``."""
    base, sep, query = source.partition("?")
    return f"{base}?<SAS>" if sep and "sig=" in query else source


def iter_files(source: str, credential: Any = None) -> Iterator[CaptureFile]:
    if source.startswith("az://"):
        yield from _az_files(source, credential)
    elif source.startswith("azureml://"):
        yield from _datastore_files(source, credential)
    elif source.startswith(("https://", "http://")):
        yield from _container_url_files(source, credential)
    else:
        yield from _folder_files(Path(source))


def _folder_files(path: Path) -> Iterator[CaptureFile]:
    if path.is_file():
        yield CaptureFile(path.name, path.read_bytes())
        return
    if not path.is_dir():
        raise DataError(f"no such capture folder or file: {path}")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        yield CaptureFile(relative.as_posix(), file.read_bytes())


def _az_files(source: str, credential: Any) -> Iterator[CaptureFile]:
    from azure.storage.blob import ContainerClient

    parsed = urlparse(source)
    if not parsed.netloc:
        raise DataError(f"{source!r}: give a container, as in az://capture or az://capture/iothub-name/")
    connection_string = os.environ.get(CONNECTION_STRING_ENV)
    if connection_string:
        container = ContainerClient.from_connection_string(connection_string, parsed.netloc)
    else:
        account_url = os.environ.get(ACCOUNT_URL_ENV)
        if not account_url:
            raise DataError(f"{source}: set {CONNECTION_STRING_ENV}, or {ACCOUNT_URL_ENV} to sign in with Entra ID")
        container = ContainerClient(account_url, parsed.netloc, credential=credential_or_default(credential))
    yield from _container_files(container, parsed.path.lstrip("/"), source)


def _container_url_files(source: str, credential: Any) -> Iterator[CaptureFile]:
    from azure.storage.blob import ContainerClient

    parsed = urlparse(source)
    has_sas = "sig=" in (parsed.query or "")
    # The container is the first path segment (the second on an emulator's path-style URL, after the account).
    segments = [s for s in parsed.path.split("/") if s]
    path_style = parsed.hostname in ("127.0.0.1", "localhost")
    skip = 2 if path_style else 1
    if len(segments) < skip:
        raise DataError(
            f"{redacted(source)}: not a container URL (https://<account>.blob.core.windows.net/<container>/...)"
        )
    base = "/".join(segments[:skip])
    prefix = "/".join(segments[skip:])
    container_url = f"{parsed.scheme}://{parsed.netloc}/{base}" + (f"?{parsed.query}" if parsed.query else "")
    container = ContainerClient.from_container_url(
        container_url, credential=None if has_sas else credential_or_default(credential)
    )
    yield from _container_files(container, prefix, redacted(source))


def _datastore_files(source: str, credential: Any) -> Iterator[CaptureFile]:
    from azure.storage.blob import ContainerClient

    from cloud.azure_data import resolve_datastore

    account_url, container_name, path, credential = resolve_datastore(source, credential_or_default(credential))
    container = ContainerClient(account_url, container_name, credential=credential)
    yield from _container_files(container, path, source)


def _container_files(container: Any, prefix: str, source: str) -> Iterator[CaptureFile]:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        names = sorted(blob.name for blob in container.list_blobs(name_starts_with=prefix or None))
        for name in names:
            yield CaptureFile(name, bytes(container.download_blob(name).readall()))
    except ResourceNotFoundError as error:
        raise DataError(f"{source}: the container or a blob does not exist ({_first_line(error)})") from error
    except AzureError as error:
        raise DataError(f"{source}: cannot read from Azure Storage: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
