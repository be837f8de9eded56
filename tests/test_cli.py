from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cloud.__main__ import main as cloud_main
from edge_module.module import default_model_dir, default_model_manifest
from tests.support.models import WINE_ROW
from tests.support.server import ModuleProcess


def test_bundled_default_model_matches_its_manifest_and_command(tmp_path: Path) -> None:
    manifest = default_model_manifest()
    data = (default_model_dir() / manifest["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"] and len(data) == manifest["size"]
    assert manifest["command"] == "python -m cloud bundle-default"
    assert manifest["metrics"]["accuracy"] >= 0.9
    # The recorded command reproduces the file byte for byte.
    assert cloud_main(["bundle-default", "--out", str(tmp_path)]) == 0
    rebuilt = json.loads((tmp_path / "manifest.json").read_text())
    assert rebuilt["sha256"] == manifest["sha256"]


@pytest.mark.slow
def test_no_configuration_serves_the_default_model_and_sigterm_stops_cleanly(model_dir: Path) -> None:
    module = ModuleProcess(model_dir).start()
    try:
        response = httpx.post(
            f"{module.url}/v2/models/wine/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 13],
                        "data": WINE_ROW,
                    }
                ]
            },
        )
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [0]
    finally:
        code = module.stop()
    assert code == 0, module.logs()
    assert '"edge module stopped"' in module.logs()
    for line in module.logs().splitlines():
        json.loads(line)  # every log line is structured JSON


def _run_module(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_module", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_command_lines_and_settings_exit_with_a_reason(tmp_path: Path) -> None:
    missing = _run_module(["--model", f"x={tmp_path / 'nope.onnx'}"], {"EDGE_MODEL_DIR": str(tmp_path)})
    assert missing.returncode == 2 and "not found" in missing.stdout
    malformed = _run_module(["--model", "no-equals-sign"], {})
    assert malformed.returncode == 2 and "NAME=PATH.onnx" in malformed.stderr
    weak_token = _run_module([], {"EDGE_ADMIN_TOKEN": "changeme"})
    assert weak_token.returncode == 2 and "admin_token" in weak_token.stderr
