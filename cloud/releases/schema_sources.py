"""Where the official IoT Edge JSON schemas come from, in this order:

1. ``--schema-dir`` or ``$IOTEDGE_SCHEMA_DIR``: a folder the user names (offline machines, CI, pinned copies);
2. the per-user cache (``iotedge-schemas`` in platformdirs' user cache folder for ``edge-inference``, e.g.
   ``~/.cache/edge-inference/iotedge-schemas`` on Linux);
3. SchemaStore, where the schemas are published (``https://json.schemastore.org/<name>``, or
   ``$IOTEDGE_SCHEMA_BASE_URL``): downloaded once into that cache, each URL and sha256 reported.

A download lands in the cache only whole and only if it parses as a JSON schema with the expected id (written to
a temporary file, checked, then renamed), and a cached file that no longer parses is fetched again, so a cut
connection or a captive portal's HTML page never poisons the cache. The project ships no copy of the schemas.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.releases.errors import SchemaUnavailable
from cloud.releases.schemas import DEPLOYMENT_SCHEMA, SYSTEM_SCHEMAS, TEMPLATE_SCHEMA

SCHEMA_DIR_ENV = "IOTEDGE_SCHEMA_DIR"
BASE_URL_ENV = "IOTEDGE_SCHEMA_BASE_URL"
DEFAULT_BASE_URL = "https://json.schemastore.org/"
CACHE_APP = "edge-inference"
CACHE_FOLDER = "iotedge-schemas"
# What validation reads: the manifest schema, the template schema, and each system module schemaVersion IoT Edge 1.x
# deploys ($edgeAgent 1.0/1.1, $edgeHub 1.0-1.2, the versions the az CLI validates against).
REQUIRED_SCHEMAS = (
    DEPLOYMENT_SCHEMA,
    TEMPLATE_SCHEMA,
    *(SYSTEM_SCHEMAS["$edgeAgent"].format(version) for version in ("1.0", "1.1")),
    *(SYSTEM_SCHEMAS["$edgeHub"].format(version) for version in ("1.0", "1.1", "1.2")),
)
MAX_SCHEMA_BYTES = 1024 * 1024  # the largest is about 12 KB
DOWNLOAD_TIMEOUT_S = 30.0

Report = Callable[[str], None]


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir(CACHE_APP, appauthor=False)) / CACHE_FOLDER


def schema_urls(base_url: str) -> list[str]:
    return [base_url.rstrip("/") + "/" + name for name in REQUIRED_SCHEMAS]


def locate_schema_dir(
    explicit: Path | None = None,
    *,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    report: Report | None = None,
) -> Path:
    """The folder to validate against: named, else cached, else downloaded into the cache (see the module doc)."""
    named = explicit or (Path(os.environ[SCHEMA_DIR_ENV]) if os.environ.get(SCHEMA_DIR_ENV) else None)
    if named is not None:
        if not named.is_dir():
            raise SchemaUnavailable(
                f"no IoT Edge JSON schemas at {named}: pass --schema-dir or set {SCHEMA_DIR_ENV} to a folder "
                f"holding {DEPLOYMENT_SCHEMA} (validation cannot be skipped)"
            )
        return named
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return SchemaCache(cache_dir or default_cache_dir(), base).ensure(report or (lambda line: None))


class SchemaCache:
    """The per-user copy of the published schemas, filled from ``base_url`` the first time it is needed."""

    def __init__(self, directory: Path, base_url: str) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise SchemaUnavailable(f"{BASE_URL_ENV} must be an http(s) URL, got {base_url!r}")
        self.directory = directory
        self.base_url = base_url.rstrip("/") + "/"

    def ensure(self, report: Report) -> Path:
        missing = [name for name in REQUIRED_SCHEMAS if not self._usable(self.directory / name)]
        if not missing:
            return self.directory
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SchemaUnavailable(f"cannot create the schema cache {self.directory}: {error}") from None
        import httpx

        with httpx.Client(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True) as client:
            for name in missing:
                url = self.base_url + name
                try:
                    data = _download(client, url)
                    _check(data, name)
                except _DownloadFailed as error:
                    raise SchemaUnavailable(self._offline_message(url, str(error))) from None
                self._store(name, data)
                report(f"downloaded {url} sha256 {hashlib.sha256(data).hexdigest()} -> {self.directory / name}")
        return self.directory

    def _usable(self, path: Path) -> bool:
        try:
            _check(path.read_bytes(), path.name)
        except (OSError, _DownloadFailed):
            return False
        return True

    def _store(self, name: str, data: bytes) -> None:
        # Write aside, then rename: a reader sees the old state or the whole new file, never a part.
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.directory / name)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise SchemaUnavailable(f"cannot write {name} into the schema cache {self.directory}: {error}") from None

    def _offline_message(self, url: str, reason: str) -> str:
        urls = "".join(f"\n  {each}" for each in schema_urls(self.base_url))
        return (
            f"cannot download the IoT Edge JSON schemas ({url}: {reason}), and the cache {self.directory} does not "
            f"hold them all. Validation needs:{urls}\nDownload them where there is network, then pass --schema-dir "
            f"DIR or set {SCHEMA_DIR_ENV}=DIR (validation cannot be skipped)"
        )


class _DownloadFailed(Exception):
    pass


def _download(client: Any, url: str) -> bytes:
    import httpx

    try:
        with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise _DownloadFailed(f"HTTP {response.status_code}")
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_SCHEMA_BYTES:
                    raise _DownloadFailed(f"larger than {MAX_SCHEMA_BYTES} bytes")
            return data
    except httpx.HTTPError as error:
        raise _DownloadFailed(f"{type(error).__name__}: {error}") from None


def _check(data: bytes, name: str) -> None:
    """``data`` is the JSON schema ``name``: it parses, its metaschema accepts it, and its id names the file."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        schema: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _DownloadFailed(f"not JSON ({error})") from None
    if not isinstance(schema, dict) or not str(schema.get("$schema", "")).startswith("http://json-schema.org/"):
        raise _DownloadFailed("not a JSON schema (no json-schema.org $schema)")
    identifier = str(schema.get("id") or schema.get("$id") or "")
    if not identifier.endswith("/" + name):
        raise _DownloadFailed(f"a schema with id {identifier!r}, not {name}")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as error:
        raise _DownloadFailed(f"not a valid JSON schema ({error.message})") from None
