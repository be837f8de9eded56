"""The scheduled data-loop pipelines (.github/workflows/monitor.yml, azure-pipelines-monitor.yml): every
`python -m cloud` call exists and accepts its flags, both run the same commands on a schedule, secrets come from
the secret stores, and the monitor and retrain steps' shell, run as written with the real CLI, turn the exit
codes into the path: monitor 10 -> retrain, 0 -> stop, else fail; retrain 0 -> release, 11 -> stop, else fail."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.__main__ import build_parser
from cloud.registry import LocalRegistry
from tests.support.data_loop import records_for, register_cancer, segments, shifted, trained_cancer, write_labels

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "azure-pipelines-monitor.yml"
GITHUB = REPO / ".github" / "workflows" / "monitor.yml"
SEQUENCE = [
    ("monitor", None),
    ("retrain", None),
    ("release", None),
    ("deploy", "layered"),
    ("fleet", "status"),
    ("deploy", "layered"),
]
SECRETS = ["IOTHUB_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING", "CLOUD_SIGNING_KEY_PASSPHRASE"]


def shell_scripts(node: Any) -> list[str]:
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


def cloud_calls(script: str) -> list[list[str]]:
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        for match in re.finditer(r"python -m cloud (.*)", line):
            command = re.split(r"\s(?:>|\||;|&&|\|\|)\s?|;", match.group(1), maxsplit=1)[0]
            calls.append(shlex.split(command))
    return calls


def calls_of(path: Path) -> list[list[str]]:
    return [call for script in shell_scripts(yaml.safe_load(path.read_text())) for call in cloud_calls(script)]


def script_with(path: Path, command: str) -> str:
    (script,) = [s for s in shell_scripts(yaml.safe_load(path.read_text())) if f"python -m cloud {command} " in s]
    return script


@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_every_cloud_command_exists_and_accepts_its_flags(path: Path) -> None:
    sequence = []
    for call in calls_of(path):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = build_parser().parse_args(call)
        except SystemExit:
            pytest.fail(f"`python -m cloud {shlex.join(call)}` is refused: {stderr.getvalue().strip()}")
        sequence.append((args.command, getattr(args, "action", None)))
    assert sequence == SEQUENCE


def test_both_run_the_same_commands_on_a_schedule_only() -> None:
    assert calls_of(AZURE) == calls_of(GITHUB)
    github = yaml.safe_load(GITHUB.read_text())
    triggers = github[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"schedule", "workflow_dispatch"} and triggers["schedule"][0]["cron"]
    azure = yaml.safe_load(AZURE.read_text())
    assert azure["trigger"] == "none" and azure["pr"] == "none" and azure["schedules"][0]["always"] is True
    assert [s["stage"] for s in azure["stages"]] == ["monitor", "retrain", "release", "canary", "fleet"]
    assert list(github["jobs"]) == ["monitor", "retrain", "release", "canary", "fleet"]


@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_secrets_come_from_the_ci_secret_store(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"SharedAccessKey=|AccountKey=|BEGIN [A-Z ]*PRIVATE KEY|[?&]sig=", text)
    for name in SECRETS:
        sources = re.findall(rf"^\s*{name}: (.+)$", text, re.MULTILINE)
        assert sources, f"{name} is not passed to any step of {path.name}"
        assert set(sources) <= {f"${{{{ secrets.{name} }}}}", f"$({name})"}, sources


def run_step(script: str, workdir: Path, env: dict[str, str]) -> tuple[int, str]:
    """A step's shell as the CI runs it (bash -e), with the real CLI first on PATH; returns (exit, outputs)."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    outputs = workdir / "github-output"
    outputs.write_text("")
    full_env = {**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GITHUB_OUTPUT": str(outputs),
                "PYTHONPATH": str(REPO)}  # fmt: skip
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=workdir, env=full_env, capture_output=True, text=True, timeout=240,
        check=False,
    )  # fmt: skip
    return result.returncode, outputs.read_text() + result.stdout


def azure_value(output: str, name: str) -> str | None:
    match = re.search(rf"##vso\[task\.setvariable variable={name};isOutput=true\](\w+)", output)
    return match.group(1) if match else None


@pytest.mark.slow
@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_the_monitor_and_retrain_steps_turn_exit_codes_into_the_path(path: Path, tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    register_cancer(registry)
    # Inside one hour window (the steps use --window 1h), within the look-back, whatever the time now.
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    calm = tmp_path / "calm"
    moved = tmp_path / "moved"
    for folder, rows, prefix in ((calm, trained_cancer().x_test, "c"), (moved, shifted(trained_cancer().x_test), "m")):
        records = records_for(rows, start=start, prefix=prefix)
        folder.mkdir()
        for index, message in enumerate(segments(records)):
            (folder / f"capture-{index:012d}.jsonl").write_bytes(message.body)
    env = {"MODEL_NAME": "cancer", "CLOUD_REGISTRY": str(registry.root), "MONITOR_LOOKBACK": "1 day",
           "TRAINING_DATA": "sklearn:breast_cancer", "TARGET_COLUMN": "target"}  # fmt: skip
    monitor = script_with(path, "monitor")
    github = path == GITHUB

    def verdict(output: str, name: str) -> str | None:
        if github:
            match = re.search(rf"^{name}=(\w+)$", output, re.MULTILINE)
            return match.group(1) if match else None
        return azure_value(output, name)

    code, output = run_step(monitor, tmp_path, {**env, "CAPTURE_SOURCE": str(moved)})
    assert code == 0 and verdict(output, "retrain") == "true", output
    code, output = run_step(monitor, tmp_path, {**env, "CAPTURE_SOURCE": str(calm)})
    assert code == 0 and verdict(output, "retrain") == "false", output
    code, output = run_step(monitor, tmp_path, {**env, "CAPTURE_SOURCE": str(tmp_path / "nothing-here")})
    assert code == 1 and verdict(output, "retrain") is None and "monitor failed (exit 1)" in output

    # retrain reads labels.csv from the working folder (the step before downloads it).
    retrain = script_with(path, "retrain")
    records = records_for(shifted(trained_cancer().x_test), start=start, prefix="m")
    write_labels(tmp_path / "labels.csv", records, [r["outputs"]["label"] for r in records])
    code, output = run_step(retrain, tmp_path, {**env, "CAPTURE_SOURCE": str(moved)})
    assert code == 0 and verdict(output, "promoted") == "false", output
    assert "the challenger is not better" in output
    assert registry.get("cancer", alias="production").version == "1"
