"""Download training data from Azure: an ``azureml://`` datastore URI or an Azure Blob URL."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

from cloud.errors import DataError

# azureml://[subscriptions/<s>/resourcegroups/<rg>/workspaces/<ws>/]datastores/<ds>/paths/<path>
AZUREML_URI = re.compile(
    r"^azureml://(?:subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/workspaces/(?P<ws>[^/]+)/)?"
    r"datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$",
    re.IGNORECASE,
)


def parse_azureml_uri(uri: str) -> dict[str, str | None]:
    match = AZUREML_URI.match(uri)
    if not match:
        raise DataError(f"not an azureml datastore URI: {uri} (azureml://datastores/<name>/paths/<path>)")
    return match.groupdict()


def is_blob_url(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme == "https" and parsed.hostname is not None and ".blob." in parsed.hostname


def download(source: str, credential: Any = None) -> bytes:
    if source.startswith("azureml://"):
        return _download_datastore(source, credential)
    if is_blob_url(source):
        return _download_blob_url(source, credential)
    raise DataError(f"unsupported data URL {source}: use a file path, sklearn:<name>, azureml:// or a Blob URL")


def credential_or_default(credential: Any) -> Any:
    if credential is not None:
        return credential
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _download_blob_url(url: str, credential: Any) -> bytes:
    from azure.storage.blob import BlobClient

    has_sas = "sig=" in (urlparse(url).query or "")
    client = BlobClient.from_blob_url(url, credential=None if has_sas else credential_or_default(credential))
    return bytes(client.download_blob().readall())


def resolve_datastore(uri: str, credential: Any) -> tuple[str, str, str, Any]:
    """(account URL, container, path inside it, credential) of an ``azureml://`` datastore URI. The workspace is
    the URI's when it names one, else the ``AZUREML_*`` settings'."""
    from cloud.azureml import AzureWorkspace, ml_client, workspace_from_environment

    parts = parse_azureml_uri(uri)
    if parts["sub"]:
        workspace = AzureWorkspace(
            subscription_id=str(parts["sub"]), resource_group=str(parts["rg"]), workspace=str(parts["ws"])
        )
    else:
        workspace = workspace_from_environment()
    credential = credential_or_default(credential)
    datastore = ml_client(workspace, credential).datastores.get(str(parts["datastore"]))
    account = getattr(datastore, "account_name", None)
    container = getattr(datastore, "container_name", None)
    if not account or not container:
        raise DataError(f"datastore {parts['datastore']} is not an Azure Blob datastore")
    endpoint = getattr(datastore, "endpoint", None) or "core.windows.net"
    return f"https://{account}.blob.{endpoint}", str(container), str(parts["path"]), credential


def _download_datastore(uri: str, credential: Any) -> bytes:
    from azure.storage.blob import BlobClient

    account_url, container, path, credential = resolve_datastore(uri, credential)
    blob = BlobClient(account_url, container, path, credential=credential)
    return bytes(blob.download_blob().readall())
