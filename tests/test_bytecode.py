"""The image's bytecode step: which names it imports, and that every edge_module submodule imports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from edge_module.bytecode import compile_dependencies, package_roots


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


def test_a_package_crashing_on_import_gets_its_files_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As onnxruntime does under qemu-user emulation, where the arm64 image is built."""
    package = tmp_path / "crashes_on_import"
    package.mkdir()
    (package / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    (package / "helpers.py").write_text("VALUE = 1\n")
    (tmp_path / "fine.py").write_text("VALUE = 2\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))

    notes = compile_dependencies(["crashes_on_import", "fine"])

    assert notes[1:] == [f"import crashes_on_import exited {-signal.SIGSEGV}: compiled its files instead"]
    compiled = sorted(p.name.split(".")[0] for p in tmp_path.rglob("*.pyc"))
    assert compiled == ["__init__", "fine", "helpers"]
