"""Publishing to Azure Blob Storage, against Azurite (a real storage emulator) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from cloud.__main__ import main
from cloud.registry import LocalRegistry, RegistryEntry
from cloud.releases.errors import PublishError
from cloud.releases.keys import KeyPair, load_private_key
from cloud.releases.publish import BlobPublisher
from cloud.releases.signing import make_release
from edge_module.release import load_public_keys, parse_release, verify_signature
from tests.release.azurite import Azurite
from tests.support.server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield server
    server.stop()


def test_release_to_blob_uploads_and_the_read_only_sas_url_downloads_it(
    azurite: Azurite,
    registered: RegistryEntry,
    registry: LocalRegistry,
    keys: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    args = ["release", "iris", "--registry", str(registry.root), "--key", str(keys.private_path)]
    assert main([*args, "--to", "az://models/fleet-a", "--sas-days", "400"]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    block = json.loads(out)["iris"]
    url = urllib.parse.urlsplit(block["uri"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{azurite.endpoint}/models/fleet-a/iris/1/model.onnx"
    verify_signature(parse_release("iris", block), load_public_keys(keys.public_path.read_text()))

    # The blob itself, read back with the account key: same bytes, same sha256, metadata recorded.
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    blob = service.get_blob_client("models", "fleet-a/iris/1/model.onnx")
    stored = blob.download_blob().readall()
    assert hashlib.sha256(stored).hexdigest() == block["sha256"] == registered.sha256
    assert blob.get_blob_properties().metadata == {"sha256": registered.sha256, "model": "iris", "version": "1"}

    # The SAS URL alone downloads it (what a device does), and only reads.
    with httpx.Client(timeout=10) as client:
        response = client.get(block["uri"])
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == block["sha256"]
        assert len(response.content) == block["size"]
        assert client.put(block["uri"], content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
        assert client.delete(block["uri"]).status_code == 403
        assert client.get(block["uri"].split("?")[0]).status_code in (401, 403, 404)
    sas = urllib.parse.parse_qs(url.query)
    assert sas["sp"] == ["r"] and sas["sr"] == ["b"]
    expiry = datetime.strptime(sas["se"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(expiry - (datetime.now(timezone.utc) + timedelta(days=400))) < timedelta(hours=1)
    # The signature of the SAS is a secret of sorts: only the release block carries it, not the messages.
    assert sas["sig"][0] not in err


def test_blob_versions_are_immutable(
    azurite: Azurite, registered: RegistryEntry, keys: KeyPair, tmp_path: Path
) -> None:
    publisher = BlobPublisher(azurite.connection_string, "immutable")
    key = load_private_key(keys.private_path)
    first = make_release("iris", "1", registered.local_path(), registered.sha256, publisher, key)
    again = make_release("iris", "1", registered.local_path(), registered.sha256, publisher, key)
    assert (again.sha256, again.uri.split("?")[0]) == (first.sha256, first.uri.split("?")[0])
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another model")
    with pytest.raises(PublishError, match="already holds different content"):
        publisher.publish("iris", "1", other, hashlib.sha256(b"another model").hexdigest())


def test_blob_errors_are_clear(azurite: Azurite, registered: RegistryEntry) -> None:
    with pytest.raises(PublishError, match="SAS expiry must be"):
        BlobPublisher(azurite.connection_string, "models", sas_days=0)
    no_key = f"BlobEndpoint={azurite.endpoint};SharedAccessSignature=sv=2020-08-04&sig=x"
    with pytest.raises(PublishError, match="no AccountKey"):
        BlobPublisher(no_key, "models").publish("iris", "1", registered.local_path(), registered.sha256)
    nobody = azurite.connection_string.replace(f":{azurite.port}/", f":{free_port()}/")
    with pytest.raises(PublishError, match=r"upload to .* failed"):
        publisher = BlobPublisher(nobody, "models", retries=0)
        publisher.publish("iris", "1", registered.local_path(), registered.sha256)
