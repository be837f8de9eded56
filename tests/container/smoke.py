"""Smoke-test a built edge module image: its own entrypoint serves the bundled default model and answers an infer.

    python -m tests.container.smoke IMAGE      (scripts/build-image runs it after each build)

The container runs with `buildah run --isolation chroot`, which shares the host's network, so the module is told
to listen on 127.0.0.1 and a free port. An arm64 image on an amd64 host runs under qemu-user, with the setup
tests/container/emulation.py describes and more patience. Prints the facts as JSON; exits 1 when any check fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from packaging.utils import canonicalize_name

from tests.container.buildah import Container, ImageInfo, container, inspect_image
from tests.container.emulation import MACHINES, QEMU_CPU, run_setup
from tests.support.models import WINE_ROW
from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "edge_module" / "default_model" / "model.onnx"
MODEL_STORE = "/var/lib/edge-module/models"
APP_MODEL = "opt/app/edge_module/default_model/model.onnx"
EDGE_LOCK = REPO / "requirements" / "edge.lock"
MACHINE_PROBE = "import platform; print(platform.machine())"
# Every locked distribution is installed at its pinned version, and every direct dependency (with the modules the
# module loads lazily) imports: the same list the image build imports to write bytecode.
DEPENDENCIES_PROBE = (
    "import importlib, importlib.metadata as m, json;"
    " from edge_module.bytecode import LAZY_IMPORTS, dependency_roots;"
    " names = [*dependency_roots(), *LAZY_IMPORTS]; [importlib.import_module(n) for n in names];"
    " print(json.dumps({'imported': len(names), 'installed':"
    " {d.metadata['Name']: d.version for d in m.distributions()}}))"
)
SETTINGS_PROBE = "from edge_module.settings import Settings; s = Settings(); print(s.host, s.model_dir)"
EDGE_ONLY_PROBE = (
    "import importlib.util as u;"
    " print([m for m in ('sklearn', 'skl2onnx', 'onnx', 'azure.ai', 'cloud', 'pip', 'pytest') if u.find_spec(m)])"
)
READY_TIMEOUT = 90.0
ADMIN_TOKEN = "smoke-admin-token"
# Bytecode the build writes (the installed files are read-only to the image user, so none is written at run time).
BYTECODE_DIRS = ("opt/app/edge_module/__pycache__", "opt/venv/lib/python3.11/site-packages/numpy/__pycache__")


@dataclass
class SmokeResult:
    image: str
    architecture: str
    machine: str  # platform.machine() inside the container
    emulated_cpu: str | None  # the CPU qemu-user emulated, None when the host ran the image natively
    size_bytes: int
    user: str
    store_owner_uid: int
    baked_model_sha256: str
    settings_in_container: str
    non_edge_modules: str
    dependencies_imported: int
    installed_versions: dict[str, str]
    ready_seconds: float
    model_metadata: dict[str, Any]
    infer_response: dict[str, Any]
    expected_label: int
    expected_probabilities: list[float]
    vetted_load_status: int
    vetted_version_answer: dict[str, Any]
    bytecode_dirs: dict[str, int]
    healthcheck_exit_code: int
    grpc_label: int | None  # the label the image's gRPC port (EDGE_GRPC_PORT) answered with
    env: dict[str, str]


def expected_answer() -> tuple[int, list[float]]:
    """The host's onnxruntime's label and class probabilities for WINE_ROW on the default model."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": np.array([WINE_ROW], dtype=np.float32)})
    return int(label[0]), [float(p) for p in probabilities[0]]


@contextmanager
def serving(box: Container, info: ImageInfo, log_path: Path, grpc_port: int) -> Iterator[tuple[str, float]]:
    """Start the image's own entrypoint; yield its URL and how long it took to become ready."""
    ready_timeout = READY_TIMEOUT * box.setup.patience
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            box.run_args(
                info.command,
                env={
                    "EDGE_HOST": "127.0.0.1",
                    "EDGE_PORT": str(port),
                    "EDGE_GRPC_PORT": str(grpc_port),  # the host's network: not the image's 8001, which may be taken
                    "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
                },
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(trust_env=False, timeout=2.0) as client:
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"the entrypoint exited with {process.returncode}: {log_path.read_text()}")
                    if time.monotonic() - started > ready_timeout:
                        raise TimeoutError(f"not ready after {ready_timeout}s: {log_path.read_text()}")
                    try:
                        if client.get(url + "/v2/health/ready").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
            yield url, time.monotonic() - started
        finally:
            process.terminate()
            try:
                process.wait(20 * box.setup.patience)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def grpc_label(target: str, timeout: float) -> int | None:
    """The default model's label for WINE_ROW over gRPC, with tritonclient.grpc; None when the port fails."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(target)
    try:
        tensor = grpcclient.InferInput("input", [1, 13], "FP32")
        tensor.set_data_from_numpy(np.array([WINE_ROW], dtype=np.float32))
        return int(client.infer("wine", [tensor], client_timeout=timeout).as_numpy("label")[0])
    except InferenceServerException:
        return None
    finally:
        client.close()


def probe(box: Container, code: str) -> str:
    result = box.run(["python", "-c", code], timeout=60 * box.setup.patience)
    if result.returncode != 0:
        raise RuntimeError(f"probe failed ({result.returncode}): {result.stderr}")
    return result.stdout.strip()


def smoke(ref: str, log_path: Path) -> SmokeResult:
    info = inspect_image(ref)
    setup = run_setup(info.architecture, str(info.config.get("User", "")))
    with setup as run, container(ref, run) as box:
        patience = run.patience
        store = box.rootfs / MODEL_STORE.lstrip("/")
        baked = hashlib.sha256((box.rootfs / APP_MODEL).read_bytes()).hexdigest()
        machine = probe(box, MACHINE_PROBE)
        settings = probe(box, SETTINGS_PROBE)
        non_edge = probe(box, EDGE_ONLY_PROBE)
        dependencies = json.loads(probe(box, DEPENDENCIES_PROBE))
        grpc_port = free_port()
        serve = serving(box, info, log_path, grpc_port)
        with serve as (url, ready_seconds), httpx.Client(trust_env=False, timeout=10 * patience) as client:
            metadata = client.get(f"{url}/v2/models/wine").json()
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": WINE_ROW}]}
            answer = client.post(f"{url}/v2/models/wine/infer", json=body)
            answer.raise_for_status()
            # A new version goes through vetting (a child process, without the onnx package) before it serves.
            load = {"parameters": {"file:2/model.onnx": base64.b64encode(DEFAULT_MODEL.read_bytes()).decode()}}
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            load_url = f"{url}/v2/repository/models/wine/load"
            loaded = client.post(load_url, json=load, headers=headers, timeout=60 * patience)
            second = client.post(f"{url}/v2/models/wine/versions/2/infer", json=body).json()
            healthcheck = box.run(info.config["Healthcheck"]["Test"][1:], env={"EDGE_PORT": url.rsplit(":", 1)[1]})
            grpc_answer = grpc_label(f"127.0.0.1:{grpc_port}", timeout=30 * patience)
        label, probabilities = expected_answer()
        return SmokeResult(
            image=ref,
            architecture=info.architecture,
            machine=machine,
            emulated_cpu=QEMU_CPU if run.emulated else None,
            size_bytes=info.size,
            user=str(info.config.get("User", "")),
            store_owner_uid=store.stat().st_uid,
            baked_model_sha256=baked,
            settings_in_container=settings,
            non_edge_modules=non_edge,
            dependencies_imported=int(dependencies["imported"]),
            installed_versions=dependencies["installed"],
            ready_seconds=round(ready_seconds, 2),
            model_metadata=metadata,
            infer_response=answer.json(),
            expected_label=label,
            expected_probabilities=probabilities,
            vetted_load_status=loaded.status_code,
            vetted_version_answer=second,
            bytecode_dirs={d: len(list((box.rootfs / d).glob("*.pyc"))) for d in BYTECODE_DIRS},
            healthcheck_exit_code=healthcheck.returncode,
            grpc_label=grpc_answer,
            env=info.env,
        )


def locked_versions() -> dict[str, str]:
    pins = (line.split("==") for line in EDGE_LOCK.read_text().splitlines() if line and not line.startswith("#"))
    return {str(canonicalize_name(name)): version for name, version in pins}


def problems(result: SmokeResult) -> list[str]:
    """Every way the result falls short of the image contract (empty when the image is good)."""
    found = []
    uid = result.user.split(":")[0]
    if not uid.isdigit() or uid == "0":
        found.append(f"the image must run as a numeric non-root user, got {result.user!r}")
    if str(result.store_owner_uid) != uid:
        found.append(f"{MODEL_STORE} is owned by uid {result.store_owner_uid}, not the image user {uid}")
    if result.baked_model_sha256 != hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest():
        found.append("the baked-in default model differs from edge_module/default_model/model.onnx")
    if result.settings_in_container != f"0.0.0.0 {MODEL_STORE}":
        found.append(f"container defaults are host/store {result.settings_in_container!r}")
    if result.non_edge_modules != "[]":
        found.append(f"the image holds more than the edge runtime: {result.non_edge_modules}")
    if result.machine != MACHINES.get(result.architecture):
        found.append(f"a {result.architecture} image ran on a {result.machine} CPU")
    # The module itself is installed from source, not pinned by the lock.
    installed = {
        str(canonicalize_name(name)): version
        for name, version in result.installed_versions.items()
        if canonicalize_name(name) != "edge-inference"
    }
    if installed != locked_versions():
        found.append(f"installed {installed} differs from {EDGE_LOCK.name}: {locked_versions()}")
    if result.dependencies_imported < 10:
        found.append(f"only {result.dependencies_imported} dependency packages imported")
    for key, value in {"EDGE_IN_CONTAINER": "1", "ORT_DISABLE_TELEMETRY": "1", "EDGE_GRPC_PORT": "8001"}.items():
        if result.env.get(key) != value:
            found.append(f"{key} is {result.env.get(key)!r}, expected {value!r}")
    if result.model_metadata.get("platform") != "onnxruntime_onnx":
        found.append(f"unexpected model metadata: {result.model_metadata}")
    outputs = {output["name"]: output["data"] for output in result.infer_response.get("outputs", [])}
    if result.infer_response.get("model_name") != "wine" or outputs.get("label") != [result.expected_label]:
        found.append(f"infer answered {result.infer_response}, expected label {result.expected_label}")
    # Another CPU (or its emulation) may round differently in the last bits, never more.
    probabilities = outputs.get("probabilities") or []
    if len(probabilities) != len(result.expected_probabilities) or any(
        abs(got - expected) > 1e-5 for got, expected in zip(probabilities, result.expected_probabilities, strict=True)
    ):
        found.append(f"infer answered probabilities {probabilities}, expected {result.expected_probabilities}")
    if result.vetted_load_status != 200 or result.vetted_version_answer.get("model_version") != "2":
        found.append(f"loading a vetted version 2 answered {result.vetted_load_status}: {result.vetted_version_answer}")
    for directory, count in result.bytecode_dirs.items():
        if not count:
            found.append(f"no bytecode in /{directory}")
    if result.grpc_label != result.expected_label:
        found.append(f"the gRPC port answered label {result.grpc_label}, expected {result.expected_label}")
    if result.healthcheck_exit_code != 0:
        found.append(f"the image's HEALTHCHECK command exited {result.healthcheck_exit_code}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m tests.container.smoke IMAGE\n")
        return 2
    log_path = Path("/tmp") / f"edge-image-smoke-{free_port()}.log"
    result = smoke(argv[0], log_path)
    sys.stdout.write(json.dumps(asdict(result), indent=2) + "\n")
    found = problems(result)
    for problem in found:
        sys.stderr.write(f"smoke: {problem}\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
