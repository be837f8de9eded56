"""Build the amd64 image with buildah and run its own entrypoint; check the arm64 wheelhouse is complete.

Both call scripts/build-image, which caches the debootstrap base and the wheelhouses outside the repository
(EDGE_IMAGE_CACHE, default /var/cache/edge-inference): a cold run downloads them once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from tests.container.buildah import container, inspect_image
from tests.container.smoke import problems, smoke
from tests.support.system import require_binary

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# Debian bookworm's glibc is 2.36; every manylinux wheel up to it runs there.
AARCH64_PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37))]
SOURCE_ONLY = {"paho-mqtt"}  # built into a wheel in the Dockerfile's builder stage
ARM64_PROBE = (
    "import platform, numpy, pydantic, uvicorn, azure.iot.device, paho.mqtt.client;"
    " from edge_module.settings import Settings; s = Settings(); print(platform.machine(), s.host, s.model_dir)"
)
# Guards against the cloud stack (scikit-learn, scipy, azure-ai-ml) creeping in. 249 MB before grpcio (about
# 19 MB with its bytecode, docs/grpc.md#image-size); 268 MB with it.
MAX_IMAGE_BYTES = 280_000_000


def build_image(*args: str, timeout: float) -> dict[str, str]:
    result = subprocess.run(
        ["scripts/build-image", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    facts = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    facts["last_line"] = result.stdout.strip().splitlines()[-1]
    return facts


def require_root() -> None:
    if os.geteuid() != 0:
        reason = "buildah with --isolation chroot needs root"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip: {reason}")
        pytest.skip(reason)


@pytest.mark.timeout(1800)
def test_amd64_image_builds_and_its_entrypoint_serves_the_default_model(tmp_path: Path) -> None:
    require_binary("buildah")
    require_binary("debootstrap")
    require_root()
    facts = build_image("amd64", "--no-smoke", timeout=1700)

    result = smoke(facts["image"], tmp_path / "smoke.log")

    assert problems(result) == []
    assert result.architecture == "amd64"
    assert result.user == "10001:10001"
    assert result.infer_response["model_name"] == "wine"
    assert result.infer_response["model_version"] == "1"
    assert result.healthcheck_exit_code == 0
    assert int(facts["size_bytes"]) == result.size_bytes < MAX_IMAGE_BYTES


def locked(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[str(canonicalize_name(name))] = version
    return pins


@pytest.mark.timeout(900)
def test_every_locked_edge_dependency_has_an_aarch64_wheel_or_builds_in_the_builder() -> None:
    context = Path(build_image("arm64", "--stage-only", timeout=850)["last_line"])
    try:
        check_aarch64_wheelhouse(context)
    finally:
        shutil.rmtree(context)


def check_aarch64_wheelhouse(context: Path) -> None:
    supported: set[Tag] = set(cpython_tags((3, 11), abis=["cp311"], platforms=AARCH64_PLATFORMS))
    supported |= set(compatible_tags((3, 11), interpreter="cp311", platforms=AARCH64_PLATFORMS))
    found: dict[str, str] = {}
    for path in (context / "wheelhouse").iterdir():
        if path.suffix == ".whl":
            name, version, _, tags = parse_wheel_filename(path.name)
            if tags & supported:
                found[str(name)] = str(version)
        elif path.name.endswith(".tar.gz"):
            name, version = parse_sdist_filename(path.name)
            if name in SOURCE_ONLY:
                found[str(name)] = str(version)

    pins = locked(context / "requirements" / "edge.lock")
    without_aarch64_wheel = {name: version for name, version in pins.items() if found.get(name) != version}
    assert len(pins) > 20
    assert without_aarch64_wheel == {}


@pytest.mark.timeout(2400)
def test_arm64_image_builds_when_asked() -> None:
    """Opt-in (EDGE_BUILD_ARM64=1): its RUN steps run under qemu-user; about 75 s with cached bases."""
    if os.environ.get("EDGE_BUILD_ARM64") != "1":
        pytest.skip("set EDGE_BUILD_ARM64=1 to build the arm64 image (slow: qemu-user emulation)")
    require_binary("buildah")
    require_binary("debootstrap")
    require_binary("update-binfmts", "binfmt-support")
    require_root()
    facts = build_image("arm64", timeout=2300)

    info = inspect_image(facts["image"])
    assert info.architecture == "arm64"
    assert info.config["User"] == "10001:10001"
    assert info.command == ["python", "-m", "edge_module"]
    # onnxruntime segfaults on import under qemu-user; the rest of the runtime must import on aarch64.
    with container(facts["image"]) as box:
        probe = box.run(["python", "-c", ARM64_PROBE], timeout=600)
        has_onnxruntime = (box.rootfs / "opt/venv/lib/python3.11/site-packages/onnxruntime/capi").is_dir()
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["aarch64", "0.0.0.0", "/var/lib/edge-module/models"]
    assert has_onnxruntime
