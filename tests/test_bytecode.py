"""The image's bytecode step: which names it imports, and that every edge_module submodule imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

from edge_module.bytecode import package_roots


def test_package_roots_find_packages_modules_and_namespace_subpackages() -> None:
    files = [
        PurePosixPath(p)
        for p in (
            "numpy/__init__.py",
            "numpy/_core/multiarray.py",
            "azure/iot/device/__init__.py",
            "azure/iot/device/aio/__init__.py",
            "typing_extensions.py",
            "numpy-2.4.6.dist-info/METADATA",
            "../../bin/uvicorn",
            "paho_mqtt-1.6.1.data/scripts/tool.py",
            "uvloop/loop.cpython-311-x86_64-linux-gnu.so",
            "not-a-name/__init__.py",
        )
    ]
    assert package_roots(files) == {"numpy", "azure.iot.device", "typing_extensions"}


def test_every_edge_module_submodule_imports_and_gets_bytecode(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "edge_module.bytecode"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bytecode written for")
    written = {p.name.split(".")[0] for p in tmp_path.rglob("edge_module/**/*.pyc")}
    assert {"server", "model_check", "onnx_wire", "connection", "infer"} <= written


def test_unknown_arguments_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_module.bytecode", "--everything"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "usage" in result.stderr
