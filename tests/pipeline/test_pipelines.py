"""The CI/CD definitions: every `python -m cloud` call they make exists and accepts its flags, all three run
the same sequence, secrets come from the CI's secret stores, and the local run goes end to end."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.__main__ import build_parser

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "azure-pipelines.yml"
GITHUB = REPO / ".github" / "workflows" / "mlops.yml"
LOCAL = REPO / "scripts" / "pipeline-local"
# The pipeline: train (parity-gated), parity gate, register, release, canary, wait for it, fleet.
SEQUENCE = [
    ("train", None),
    ("registry", "show"),
    ("registry", "promote"),
    ("release", None),
    ("deploy", "layered"),
    ("fleet", "status"),
    ("deploy", "layered"),
]
STEPS = [
    "tests",
    "train",
    "parity gate",
    "register",
    "release",
    "deploy canary",
    "wait for the canary devices",
    "deploy fleet",
]
PLUMBING = {"setup", "collect the release"}
SECRETS = ["IOTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING", "CLOUD_SIGNING_KEY_PASSPHRASE"]


def shell_scripts(node: Any) -> list[str]:
    """Every shell body in a pipeline file, in order (GitHub `run`, Azure Pipelines `bash`/`script`)."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key in ("run", "bash", "script") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(shell_scripts(value))
        return found
    if isinstance(node, list):
        return [script for item in node for script in shell_scripts(item)]
    return []


def step_names(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node[key] for key in ("name", "displayName") if isinstance(node.get(key), str) and "run" in node]
        own += [node["displayName"]] if "bash" in node and isinstance(node.get("displayName"), str) else []
        return own + [name for value in node.values() for name in step_names(value)]
    if isinstance(node, list):
        return [name for item in node for name in step_names(item)]
    return []


def cloud_calls(script: str) -> list[list[str]]:
    """The argument lists of every `python -m cloud ...` in a shell script (up to a redirect, pipe or `;`)."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        for match in re.finditer(r"python -m cloud (.*)", line):
            command = re.split(r"\s(?:>|\||;|&&)\s?|;", match.group(1), maxsplit=1)[0]
            calls.append(shlex.split(command))
    return calls


def pipeline_calls(path: Path) -> list[list[str]]:
    scripts = shell_scripts(yaml.safe_load(path.read_text())) if path.suffix == ".yml" else [path.read_text()]
    return [call for script in scripts for call in cloud_calls(script)]


def parse(call: list[str]) -> Any:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(call)
    except SystemExit:
        pytest.fail(f"`python -m cloud {shlex.join(call)}` is refused by the CLI: {stderr.getvalue().strip()}")


@pytest.mark.parametrize("path", [AZURE, GITHUB, LOCAL], ids=lambda p: p.name)
def test_every_cloud_command_exists_and_accepts_its_flags(path: Path) -> None:
    calls = pipeline_calls(path)
    assert calls, f"no python -m cloud call found in {path}"
    sequence = []
    for call in calls:
        args = parse(call)
        if (args.command, getattr(args, "action", None)) == ("keys", "new"):
            continue  # the local run makes its own signing key; CI reads it from a secret
        sequence.append((args.command, getattr(args, "action", None)))
        if args.command == "deploy":
            assert args.apply, f"{call} must apply the deployment"
    # The local run also prints the fleet's state at the end.
    assert sequence == ([*SEQUENCE, ("fleet", "status")] if path == LOCAL else SEQUENCE)


def test_the_ci_definitions_run_the_same_commands_in_the_same_steps() -> None:
    azure, github = (yaml.safe_load(path.read_text()) for path in (AZURE, GITHUB))
    assert pipeline_calls(AZURE) == pipeline_calls(GITHUB)
    assert [name for name in step_names(azure) if name not in PLUMBING] == STEPS
    assert [name for name in step_names(github) if name not in PLUMBING] == STEPS
    assert shell_scripts(azure)[0] == shell_scripts(github)[0] == 'sudo env "PATH=$PATH" bash .ci/run'


def test_the_local_run_makes_the_same_calls_against_the_stand_ins() -> None:
    local = [call for call in pipeline_calls(LOCAL) if call[:2] != ["keys", "new"]][:-1]
    ci = pipeline_calls(GITHUB)
    without_hub = [[arg for arg in call if arg not in ("--hub-endpoint", "$HUB_ENDPOINT")] for call in local]
    assert without_hub == ci


@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_secrets_come_from_the_ci_secret_store(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"SharedAccessKey=|AccountKey=|BEGIN [A-Z ]*PRIVATE KEY|[?&]sig=", text)
    for name in SECRETS:
        sources = re.findall(rf"^\s*{name}: (.+)$", text, re.MULTILINE)
        assert sources, f"{name} is not passed to any step of {path.name}"
        allowed = {f"${{{{ secrets.{name} }}}}", f"$({name})"}
        assert set(sources) <= allowed, sources


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_local_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(LOCAL), str(tmp_path)], capture_output=True, text=True, timeout=280, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    release = json.loads((tmp_path / "release.json").read_text())["wine"]
    status = json.loads((tmp_path / "fleet-status.json").read_text())
    assert status["summary"]["wine"] == {"active": {release["version"]: 3}, "failed": {}, "pending": []}
    canary = json.loads((tmp_path / "canary-deployment.json").read_text())
    fleet = json.loads((tmp_path / "fleet-deployment.json").read_text())
    assert (canary["targetCondition"], canary["priority"]) == ("tags.ring='canary'", 20)
    assert (fleet["targetCondition"], fleet["priority"]) == ("tags.environment='prod'", 10)
    assert canary["content"]["modulesContent"]["edge-inference"]["properties.desired.models"] == {"wine": release}
    assert "canary devices report wine 1 active" in result.stdout
