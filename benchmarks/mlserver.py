"""MLServer 1.7.1 on the same ONNX model, for ``python -m benchmarks.run --mlserver``.

MLServer lives in its own virtual environment (it needs uvloop<0.22, the module a newer one), made once
from ``benchmarks/mlserver-requirements.txt`` with the package registry as the only network access.
It has no onnxruntime runtime of its own, so ``benchmarks/mlserver_runtime.py`` provides a minimal one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.load import free_port
from benchmarks.models import Reference

HERE = Path(__file__).parent
REQUIREMENTS = HERE / "mlserver-requirements.txt"
RUNTIME = HERE / "mlserver_runtime.py"
INSTALL_TIMEOUT_S = 900
# Two configurations. "mlserver": as shipped, i.e. one inference worker process beside the HTTP process
# (what the issue measured). "mlserver-inline": tuned for this benchmark, inference on the HTTP
# process's event loop (parallel_workers 0) and no debug logging; on one core that saves the hop.
CONFIGS: dict[str, dict[str, object]] = {
    "mlserver": {},
    "mlserver-inline": {"parallel_workers": 0, "debug": False},
}
LABELS = {"mlserver": "MLServer 1.7.1 as shipped", "mlserver-inline": "MLServer 1.7.1 tuned (inline)"}


def ensure_venv(venv: Path) -> Path:
    """The ``mlserver`` command of a virtual environment holding the pinned requirements (made if missing)."""
    wanted = REQUIREMENTS.read_text()
    marker = venv / "benchmark-requirements.txt"
    command = venv / "bin" / "mlserver"
    if command.exists() and marker.exists() and marker.read_text() == wanted:
        return command
    print(f"creating MLServer's virtual environment in {venv} (once; a few minutes)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    log = venv / "install.log"
    with log.open("wb") as out:
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-r", str(REQUIREMENTS)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    marker.write_text(wanted)
    return command


def model_folder(ref: Reference, workdir: Path, config: str) -> tuple[Path, int]:
    """An MLServer repository folder serving ``ref`` with the onnxruntime runtime; returns it and its HTTP port."""
    root = workdir / config
    model_dir = root / ref.name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(RUNTIME, model_dir / RUNTIME.name)
    port = free_port()
    ports = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}
    # MLServer keeps its Prometheus files in ./.metrics by default: in the run's folder, not the caller's.
    settings = CONFIGS[config] | ports | {"metrics_dir": str(root / ".metrics")}
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": ref.name,
        "implementation": f"{RUNTIME.stem}.OnnxRuntime",
        "parameters": {"uri": str(ref.path.resolve()), "version": "1"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    return root, port
