"""The model release block of the twin's desired ``models`` property, and its ed25519 signature.

Both sides use this module: the cloud signs with it, the edge parses and verifies with it.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge_module.errors import InvalidRequest
from edge_module.store import NAME_PATTERN, VERSION_PATTERN

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
ALLOWED_KEYS = frozenset({"version", "uri", "sha256", "size", "signature", "spreadSeconds"})
# The longest download start delay a release may ask for (docs/fleet-scale.md#download-spreading).
MAX_SPREAD_SECONDS = 3600


class ReleaseError(InvalidRequest):
    """A release block that does not follow the contract."""


class SignatureError(ReleaseError):
    """A release that is unsigned, or not signed by a trusted key, where signatures are required."""


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    uri: str
    sha256: str
    size: int | None = None
    signature: str | None = None
    # Not covered by the signature (like ``uri``): it only delays the download, at most MAX_SPREAD_SECONDS.
    spread_seconds: int | None = None

    def signed_message(self) -> bytes:
        return signing_message(self.name, self.version, self.sha256, self.size)

    def as_desired(self) -> dict[str, Any]:
        block: dict[str, Any] = {"version": self.version, "uri": self.uri, "sha256": self.sha256}
        if self.size is not None:
            block["size"] = self.size
        if self.signature is not None:
            block["signature"] = self.signature
        if self.spread_seconds is not None:
            block["spreadSeconds"] = self.spread_seconds
        return block


def signing_message(name: str, version: str, sha256: str, size: int | None) -> bytes:
    """ed25519 signs UTF-8 ``"<name>\\n<version>\\n<sha256>\\n<size>"`` (size empty when absent)."""
    return f"{name}\n{version}\n{sha256}\n{'' if size is None else size}".encode()


def parse_release(name: str, block: Any) -> Release:
    """Validate one desired release; raises ReleaseError with a message fit for reported properties."""
    if not NAME_PATTERN.fullmatch(name):
        raise ReleaseError(f"invalid model name {name!r}: use 1-64 characters from [A-Za-z0-9_-]")
    if not isinstance(block, dict):
        raise ReleaseError(f"release for '{name}' must be an object with version, uri and sha256")
    version = block.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ReleaseError(f"release for '{name}': 'version' must be 1-64 characters from [A-Za-z0-9._-]")
    uri = block.get("uri")
    if not isinstance(uri, str) or not uri:
        raise ReleaseError(f"release for '{name}': 'uri' is required")
    sha256 = block.get("sha256")
    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise ReleaseError(f"release for '{name}': 'sha256' must be 64 lowercase hex characters")
    size = block.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ReleaseError(f"release for '{name}': 'size' must be a positive integer")
    signature = block.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise ReleaseError(f"release for '{name}': 'signature' must be a base64 string")
    spread = block.get("spreadSeconds")
    if spread is not None and (
        not isinstance(spread, int) or isinstance(spread, bool) or not 0 <= spread <= MAX_SPREAD_SECONDS
    ):
        raise ReleaseError(f"release for '{name}': 'spreadSeconds' must be an integer from 0 to {MAX_SPREAD_SECONDS}")
    return Release(
        name=name, version=version, uri=uri, sha256=sha256, size=size, signature=signature, spread_seconds=spread
    )


def load_public_keys(pem_text: str) -> list[Any]:
    """Every ed25519 public key among the PEM blocks of a trusted-keys file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    for block in re.findall(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", pem_text, re.DOTALL):
        key = load_pem_public_key(block.encode())
        if isinstance(key, Ed25519PublicKey):
            keys.append(key)
    return keys


def verify_signature(release: Release, trusted_keys: Iterable[Any]) -> None:
    """Raise SignatureError unless one trusted ed25519 key signed this release."""
    from cryptography.exceptions import InvalidSignature

    keys = list(trusted_keys)
    if not keys:
        return
    if not release.signature:
        raise SignatureError(f"release {release.name}:{release.version} is unsigned; this module requires signatures")
    try:
        signature = base64.b64decode(release.signature, validate=True)
    except ValueError:
        raise SignatureError(f"release {release.name}:{release.version}: signature is not valid base64") from None
    message = release.signed_message()
    for key in keys:
        try:
            key.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise SignatureError(f"release {release.name}:{release.version}: signature does not match any trusted key")


def sign_release(release: Release, private_key: Any) -> Release:
    """Return ``release`` with its ed25519 signature (``private_key``: an Ed25519PrivateKey)."""
    signature = base64.b64encode(private_key.sign(release.signed_message())).decode()
    return dataclasses.replace(release, signature=signature)
