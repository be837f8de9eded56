"""ed25519 release-signing keys.

The private key is a PKCS#8 PEM file written with mode 0600 (optionally encrypted with a passphrase); the
public key is a SubjectPublicKeyInfo PEM block, the format ``EDGE_TRUSTED_KEYS`` reads (a trusted-keys
file may hold several such blocks, which is how keys are rotated). Nothing here prints or logs a private key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.releases.errors import SigningKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub.pem"
PASSPHRASE_ENV = "CLOUD_SIGNING_KEY_PASSPHRASE"


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    fingerprint: str


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``SHA256:<base64>`` of the raw 32-byte public key, like ``ssh-keygen -l`` prints."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def public_pem(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never follow or replace an existing file; the mode is set at creation, so no window where
    # the private key is readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key_pair(directory: Path, name: str = "release", passphrase: bytes | None = None) -> KeyPair:
    """Write ``<name>.key`` (0600) and ``<name>.pub.pem`` (0644) into ``directory``; never overwrites."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    if not name or "/" in name or name.startswith("."):
        raise SigningKeyError(f"invalid key name {name!r}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path} already exists; refusing to overwrite a key (choose another --name)")
    key = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    _write_new(private_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption), 0o600)
    try:
        _write_new(public_path, public_pem(key.public_key()).encode(), 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return KeyPair(private_path, public_path, fingerprint(key.public_key()))


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Read an ed25519 private key; refuse files other users can read, as ssh does."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read signing key {path}: {error.strerror}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"signing key {path} is accessible by other users (mode {mode & 0o777:o}); chmod 600 it")
    try:
        key = load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        raise SigningKeyError(f"signing key {path} is encrypted: set {PASSPHRASE_ENV}") from None
    except ValueError:
        # The library's message could echo key material in some versions: keep ours generic.
        raise SigningKeyError(f"{path} is not a PEM private key (or the passphrase is wrong)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an ed25519 private key")
    return key


def passphrase_from_env() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None
