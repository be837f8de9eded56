"""Turn a registered model version into the twin's signed release block (DESIGN.md, "Model release")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.releases.errors import PublishError, SigningKeyError
from cloud.releases.publish import Publisher
from edge_module.release import Release, ReleaseError, parse_release, sign_release, verify_signature
from edge_module.store import sha256_of_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_release(
    name: str,
    version: str,
    model_path: Path,
    sha256: str,
    publisher: Publisher,
    private_key: Ed25519PrivateKey,
) -> Release:
    """Check the file against its recorded sha256, publish it, and sign the resulting release."""
    try:
        size = model_path.stat().st_size
    except OSError as error:
        raise PublishError(f"cannot read {model_path}: {error.strerror}") from None
    actual = sha256_of_file(model_path)
    if actual != sha256:
        raise PublishError(f"{model_path}: sha256 is {actual}, the registry recorded {sha256}; refusing to release")
    published = publisher.publish(name, version, model_path, sha256)
    release = sign_release(Release(name, version, published.uri, sha256, size), private_key)
    try:
        # The edge module runs exactly these checks; fail here rather than on every device.
        verify_signature(parse_release(name, release.as_desired()), [private_key.public_key()])
    except ReleaseError as error:
        raise SigningKeyError(f"the release does not pass the edge module's checks: {error}") from None
    return release


def models_block(releases: list[Release]) -> dict[str, Any]:
    """The ``models`` desired property holding these releases (one per name)."""
    block: dict[str, Any] = {}
    for release in releases:
        if release.name in block:
            raise PublishError(f"two releases for model {release.name!r}")
        block[release.name] = release.as_desired()
    return block


def releases_from_models_block(block: Any, source: str) -> list[Release]:
    """Parse a ``{"<name>": {release}}`` document (what ``cloud release`` writes) with the edge's own rules."""
    if not isinstance(block, dict) or not block:
        raise PublishError(f'{source}: expected a JSON object {{"<model>": {{version, uri, sha256, ...}}}}')
    try:
        return [parse_release(name, value) for name, value in block.items()]
    except ReleaseError as error:
        raise PublishError(f"{source}: {error}") from None
