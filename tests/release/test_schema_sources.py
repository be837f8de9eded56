"""Where ``deploy validate`` and ``deploy manifest`` get the IoT Edge schemas: a named folder, else the per-user
cache, else SchemaStore, downloaded once into that cache. SchemaStore is played by a local HTTP server on
127.0.0.1 serving the official files from ../shared/iotedge-schemas; nothing here reaches the network."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.releases.errors import SchemaUnavailable
from cloud.releases.schema_sources import REQUIRED_SCHEMAS, SchemaCache, locate_schema_dir
from tests.support.server import free_port

FIXTURES = Path(__file__).parent / "fixtures"


class SchemaStore:
    """json.schemastore.org on 127.0.0.1: ``GET /<name>`` answers the official file, unless a fault is set for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        self.faults: dict[str, str] = {}  # name -> "truncate" | "cut" | "html" | "404"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                store.requests.append(name)
                path = store.folder / name
                fault = store.faults.get(name)
                if fault == "404" or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if fault == "html":  # a captive portal's answer
                    data = b"<html><body>Sign in to continue</body></html>"
                if fault == "truncate":  # complete as HTTP, but half a JSON document
                    data = data[: len(data) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "cut":  # the connection drops mid-body
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> SchemaStore:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def published() -> Path:
    folder = Path(os.environ["IOTEDGE_SCHEMA_DIR"]) / "schemastore"
    if not folder.is_dir():
        reason = f"the official schemas are not at {folder} (set IOTEDGE_SCHEMA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip: {reason}")
        pytest.skip(reason)
    return folder


@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No named folder, and a fresh per-user cache (platformdirs follows XDG_CACHE_HOME)."""
    monkeypatch.delenv("IOTEDGE_SCHEMA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "edge-inference" / "iotedge-schemas"


def cached(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir()) if cache.is_dir() else []


def test_validate_downloads_the_schemas_once_into_the_user_cache_and_prints_url_and_sha256(
    published: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = published / "example.deployment-2.0.json"
    with SchemaStore(published) as store:
        monkeypatch.setenv("IOTEDGE_SCHEMA_BASE_URL", store.url)
        assert main(["deploy", "validate", str(manifest), "--module", "SampleModule"]) == 0
        first = capsys.readouterr()
        assert sorted(store.requests) == sorted(REQUIRED_SCHEMAS)
        assert "valid IoT Edge deployment manifest" in first.out
        for name in REQUIRED_SCHEMAS:
            data = (published / name).read_bytes()
            assert f"downloaded {store.url}{name} sha256 {hashlib.sha256(data).hexdigest()}" in first.err
            assert (user_cache / name).read_bytes() == data  # byte for byte, as published
        assert cached(user_cache) == sorted(REQUIRED_SCHEMAS)  # no temporary file left behind

        # Once cached, nothing is fetched again and nothing is printed.
        assert main(["deploy", "validate", str(manifest), "--module", "SampleModule"]) == 0
        again = capsys.readouterr()
    assert len(store.requests) == len(REQUIRED_SCHEMAS) and "downloaded" not in again.err

    # And the cache serves offline: the base URL now points where nothing listens.
    monkeypatch.setenv("IOTEDGE_SCHEMA_BASE_URL", f"http://127.0.0.1:{free_port()}/")
    invalid = FIXTURES / "invalid" / "restart-policy.json"
    assert main(["deploy", "validate", str(invalid)]) == 5
    assert "'sometimes' is not one of" in capsys.readouterr().err


def test_deploy_manifest_validates_with_the_downloaded_schemas(
    published: Path, user_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.release.conftest import VARIABLES
    from tests.release.test_manifest import RELEASE, write_release

    out = tmp_path / "deployment.amd64.json"
    args = ["deploy", "manifest", "--release", str(write_release(tmp_path, {"iris": RELEASE}))]
    args += ["--platform", "amd64", "--out", str(out), *(f"--set={k}={v}" for k, v in VARIABLES.items())]
    with SchemaStore(published) as store:
        monkeypatch.setenv("IOTEDGE_SCHEMA_BASE_URL", store.url)
        assert main(args) == 0
    assert sorted(store.requests) == sorted(REQUIRED_SCHEMAS)
    assert json.loads(out.read_text())["modulesContent"]["edge-inference"]["properties.desired"]["models"]["iris"]


@pytest.mark.parametrize("fault", ["truncate", "cut", "html", "404"])
def test_a_bad_download_never_lands_in_the_cache(fault: str, published: Path, user_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    broken = "azure-iot-edgeagent-deployment-1.1.json"
    with SchemaStore(published) as store:
        store.faults[broken] = fault
        with pytest.raises(SchemaUnavailable) as info:
            locate_schema_dir(cache_dir=cache, base_url=store.url)
        # Every file before the broken one is cached and whole; the broken one is not there, not even in part.
        before = list(REQUIRED_SCHEMAS[: REQUIRED_SCHEMAS.index(broken)])
        assert cached(cache) == sorted(before)
        assert f"{store.url}{broken}" in str(info.value) and "--schema-dir" in str(info.value)

        # The server is fixed: the next run fetches only what is missing and validation works.
        del store.faults[broken]
        store.requests.clear()
        assert locate_schema_dir(cache_dir=cache, base_url=store.url) == cache
    assert sorted(store.requests) == sorted(set(REQUIRED_SCHEMAS) - set(before))
    assert cached(cache) == sorted(REQUIRED_SCHEMAS)


def test_a_cached_file_that_rotted_is_fetched_again(published: Path, user_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with SchemaStore(published) as store:
        locate_schema_dir(cache_dir=cache, base_url=store.url)
        (cache / "azure-iot-edgehub-deployment-1.2.json").write_text('{"$schema": "http://json-schema.org/dr')
        store.requests.clear()
        printed: list[str] = []
        locate_schema_dir(cache_dir=cache, base_url=store.url, report=printed.append)
    assert store.requests == ["azure-iot-edgehub-deployment-1.2.json"] and len(printed) == 1
    assert (cache / "azure-iot-edgehub-deployment-1.2.json").read_bytes() == (
        published / "azure-iot-edgehub-deployment-1.2.json"
    ).read_bytes()


def test_offline_the_error_names_every_url_and_schema_dir(
    user_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setenv("IOTEDGE_SCHEMA_BASE_URL", nowhere)
    assert main(["deploy", "validate", str(FIXTURES / "invalid" / "restart-policy.json")]) == 4
    err = capsys.readouterr().err
    assert "cannot download the IoT Edge JSON schemas" in err and "ConnectError" in err
    for name in REQUIRED_SCHEMAS:
        assert f"{nowhere}{name}" in err
    assert "--schema-dir" in err and "IOTEDGE_SCHEMA_DIR" in err
    assert cached(user_cache) == []


def test_a_named_folder_wins_and_must_exist(
    published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOTEDGE_SCHEMA_DIR", str(tmp_path / "absent"))
    with pytest.raises(SchemaUnavailable, match=r"no IoT Edge JSON schemas at .*absent"):
        locate_schema_dir(cache_dir=tmp_path / "cache")
    assert locate_schema_dir(published, cache_dir=tmp_path / "cache") == published  # --schema-dir first
    assert not (tmp_path / "cache").exists()  # a named folder never touches the cache


def test_the_base_url_must_be_http() -> None:
    with pytest.raises(SchemaUnavailable, match="must be an http"):
        SchemaCache(Path("unused"), "file:///etc/")
