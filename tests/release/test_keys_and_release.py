"""``cloud keys`` and ``cloud release`` to a folder: key files, the signed release block, immutability."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cloud.__main__ import main
from cloud.registry import LocalRegistry, RegistryEntry
from cloud.releases.errors import PublishError, SigningKeyError
from cloud.releases.keys import KeyPair, generate_key_pair, load_private_key
from cloud.releases.publish import FolderPublisher, publisher_for
from cloud.releases.signing import make_release
from edge_module.release import (
    SignatureError,
    load_public_keys,
    parse_release,
    signing_message,
    verify_signature,
)
from tests.support.models import iris_classifier


def raw_private_b64(pair: KeyPair) -> str:
    key = load_private_key(pair.private_path)
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def test_keys_new_writes_a_private_key_only_its_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "--dir", str(tmp_path / "k"), "--name", "fleet"]) == 0
    out, err = capsys.readouterr()
    private, public = tmp_path / "k" / "fleet.key", tmp_path / "k" / "fleet.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    # The public half is exactly what EDGE_TRUSTED_KEYS reads, and it matches the private half.
    [trusted] = load_public_keys(public.read_text())
    key = load_private_key(private)
    trusted.verify(key.sign(b"message"), b"message")
    pair = KeyPair(private, public, "")
    for text in (out, err):
        assert "PRIVATE KEY" not in text and raw_private_b64(pair) not in text
    assert str(private) in out and "fingerprint: SHA256:" in out
    # Never overwrites a key.
    assert main(["keys", "new", "--dir", str(tmp_path / "k"), "--name", "fleet"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert load_private_key(private).private_bytes_raw() == key.private_bytes_raw()


def test_private_keys_readable_by_others_or_of_the_wrong_kind_are_refused(keys: KeyPair, tmp_path: Path) -> None:
    keys.private_path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="accessible by other users"):
        load_private_key(keys.private_path)
    keys.private_path.chmod(0o600)
    not_a_key = tmp_path / "junk.key"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    not_a_key.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        load_private_key(not_a_key)


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path, "locked", passphrase=b"correct horse battery")
    assert b"ENCRYPTED" in pair.private_path.read_bytes()
    with pytest.raises(SigningKeyError, match="CLOUD_SIGNING_KEY_PASSPHRASE"):
        load_private_key(pair.private_path)
    with pytest.raises(SigningKeyError, match="passphrase is wrong"):
        load_private_key(pair.private_path, b"wrong")
    assert load_private_key(pair.private_path, b"correct horse battery") is not None


def test_release_publishes_to_a_folder_and_prints_a_signed_block_the_edge_accepts(
    registered: RegistryEntry,
    registry: LocalRegistry,
    keys: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_file = tmp_path / "release.json"
    code = main(
        ["release", "iris", "--registry", str(registry.root), "--key", str(keys.private_path),
         "--to", str(tmp_path / "published"), "--out", str(out_file)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)
    assert json.loads(out_file.read_text()) == document
    block = document["iris"]
    assert set(block) == {"version", "uri", "sha256", "size", "signature"}
    published = tmp_path / "published" / "iris" / "1" / "model.onnx"
    assert block["uri"] == published.resolve().as_uri()
    assert published.read_bytes() == iris_classifier().onnx
    assert block["sha256"] == hashlib.sha256(published.read_bytes()).hexdigest() == registered.sha256
    assert block["size"] == registered.size and block["version"] == "1"
    # The signature is over DESIGN.md's message, and verifies with the edge module's own code.
    public = load_public_keys(keys.public_path.read_text())
    release = parse_release("iris", block)
    verify_signature(release, public)
    public[0].verify(
        base64.b64decode(block["signature"]), signing_message("iris", "1", registered.sha256, registered.size)
    )
    for text in (out, err, out_file.read_text()):
        assert "PRIVATE KEY" not in text and raw_private_b64(keys) not in text


def test_a_release_signed_by_another_key_is_refused_by_the_edge_check(
    registered: RegistryEntry, keys: KeyPair, tmp_path: Path
) -> None:
    other = generate_key_pair(tmp_path / "other", "other")
    publisher = FolderPublisher(tmp_path / "published")
    release = make_release(
        "iris", "1", registered.local_path(), registered.sha256, publisher, load_private_key(other.private_path)
    )
    with pytest.raises(SignatureError, match="does not match any trusted key"):
        verify_signature(release, load_public_keys(keys.public_path.read_text()))


def test_release_refuses_a_registry_file_that_no_longer_matches_its_sha256(
    registered: RegistryEntry, keys: KeyPair, tmp_path: Path
) -> None:
    registered.local_path().write_bytes(registered.local_path().read_bytes() + b"tampered")
    with pytest.raises(PublishError, match="refusing to release"):
        make_release(
            "iris", "1", registered.local_path(), registered.sha256, FolderPublisher(tmp_path / "p"),
            load_private_key(keys.private_path),
        )  # fmt: skip
    assert not (tmp_path / "p").exists()


def test_published_versions_are_immutable(registered: RegistryEntry, tmp_path: Path) -> None:
    publisher = FolderPublisher(tmp_path / "p", base_uri="https://models.example.com/lab/")
    first = publisher.publish("iris", "1", registered.local_path(), registered.sha256)
    assert first.uri == "https://models.example.com/lab/iris/1/model.onnx"
    again = publisher.publish("iris", "1", registered.local_path(), registered.sha256)  # same content: fine
    assert again == first
    other = tmp_path / "other.onnx"
    other.write_bytes(b"different model")
    with pytest.raises(PublishError, match="immutable"):
        publisher.publish("iris", "1", other, hashlib.sha256(b"different model").hexdigest())
    assert (tmp_path / "p" / "iris" / "1" / "model.onnx").read_bytes() == registered.local_path().read_bytes()


def test_destinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(publisher_for((tmp_path / "x").as_uri()), FolderPublisher)
    assert publisher_for((tmp_path / "x").as_uri()).root == tmp_path / "x"  # type: ignore[attr-defined]
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(PublishError, match="AZURE_STORAGE_CONNECTION_STRING"):
        publisher_for("az://models")
    with pytest.raises(PublishError, match="unsupported destination"):
        publisher_for("s3://bucket")
    with pytest.raises(PublishError, match="must be local"):
        publisher_for("file://server/share")


def test_release_without_a_key_or_model_fails_clearly(
    registry: LocalRegistry, keys: KeyPair, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("CLOUD_SIGNING_KEY", raising=False)
    assert main(["release", "iris", "--registry", str(registry.root), "--to", str(tmp_path)]) == 1
    assert "no signing key" in capsys.readouterr().err
    args = ["release", "iris", "--registry", str(registry.root), "--to", str(tmp_path), "--key", str(keys.private_path)]
    assert main(args) == 1
    assert "not in the registry" in capsys.readouterr().err
