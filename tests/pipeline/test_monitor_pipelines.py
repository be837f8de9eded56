"""The scheduled data-loop pipelines (.github/workflows/monitor.yml, azure-pipelines-monitor.yml): every
`python -m cloud` call exists and accepts its flags, both run the same commands on a schedule, secrets come from
the secret stores, and the monitor and retrain steps' shell, run as written with the real CLI, turn the exit
codes into the path: monitor 10 -> retrain, 0 -> stop, else fail; retrain 0 -> plan the challenger's rollout,
11 -> stop, else fail. After retrain, the path is mlops.yml's: plan, release, canary, fleet, `rollout promote`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from cloud.registry import LocalRegistry
from tests.pipeline.workflow_files import assert_secrets_from_the_store, parse, pipeline_calls, script_with, step_names
from tests.support.data_loop import records_for, register_cancer, segments, shifted, trained_cancer, write_labels

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "azure-pipelines-monitor.yml"
GITHUB = REPO / ".github" / "workflows" / "monitor.yml"
MLOPS_AZURE = REPO / "azure-pipelines.yml"
MLOPS_GITHUB = REPO / ".github" / "workflows" / "mlops.yml"
# monitor, retrain (the challenger gets the alias `challenger`), then mlops.yml's rollout path: plan, release,
# canary ring, the optional shadow stage, fleet ring, record production.
SEQUENCE = [
    ("monitor", None),
    ("retrain", None),
    ("rollout", "plan"),
    ("release", None),
    ("rollout", "deploy"),
    ("rollout", "shadow"),
    ("rollout", "promote-if-agrees"),
    ("rollout", "deploy"),
    ("rollout", "promote"),
]
STEPS = [
    "monitor",
    "labels",
    "retrain",
    "plan",
    "release",
    "deploy canary",
    "shadow",
    "promote if agrees",
    "deploy fleet",
    "record production",
]
PLUMBING = {"setup", "collect the release", "nothing to deploy"}
SECRETS = [
    "IOTHUB_CONNECTION_STRING",
    "AZURE_STORAGE_CONNECTION_STRING",
    "CLOUD_SIGNING_KEY_PASSPHRASE",
    "AZURE_CLIENT_SECRET",
]


@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_every_cloud_command_exists_and_accepts_its_flags(path: Path) -> None:
    sequence = []
    for call in pipeline_calls(path):
        args = parse(call)
        sequence.append((args.command, getattr(args, "action", None)))
    assert sequence == SEQUENCE
    (retrain,) = [call for call in pipeline_calls(path) if call[0] == "retrain"]
    assert parse(retrain).alias == "challenger"  # production moves only through `rollout promote`


def test_both_run_the_same_commands_on_a_schedule_only() -> None:
    assert pipeline_calls(AZURE) == pipeline_calls(GITHUB)
    github = yaml.safe_load(GITHUB.read_text())
    triggers = github[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"schedule", "workflow_dispatch"} and triggers["schedule"][0]["cron"]
    azure = yaml.safe_load(AZURE.read_text())
    assert azure["trigger"] == "none" and azure["pr"] == "none" and azure["schedules"][0]["always"] is True
    assert [s["stage"] for s in azure["stages"]] == ["monitor", "retrain", "canary", "shadow", "fleet"]
    assert list(github["jobs"]) == ["monitor", "retrain", "canary", "shadow", "fleet"]
    assert [name for name in step_names(azure) if name not in PLUMBING] == STEPS
    assert [name for name in step_names(github) if name not in PLUMBING] == STEPS


def test_the_rings_are_those_of_the_mlops_pipelines() -> None:
    """The canary and fleet rings (deploy, wait, record production) are mlops.yml's and azure-pipelines.yml's,
    only started by the retrain job instead of the build job."""
    github, mlops_github = (yaml.safe_load(p.read_text())["jobs"] for p in (GITHUB, MLOPS_GITHUB))
    assert github["canary"] == {**mlops_github["canary"], "needs": "retrain",
                                "if": "needs.retrain.outputs.deploy == 'true'"}  # fmt: skip
    assert github["shadow"] == mlops_github["shadow"]  # the optional shadow stage, the same
    assert github["fleet"] == mlops_github["fleet"]
    assert github["retrain"]["outputs"] == {"deploy": "${{ steps.plan.outputs.deploy }}"}
    azure, mlops_azure = (
        {s["stage"]: s for s in yaml.safe_load(p.read_text())["stages"]} for p in (AZURE, MLOPS_AZURE)
    )
    condition = "and(succeeded(), eq(dependencies.retrain.outputs['retrain.plan.deploy'], 'true'))"
    assert azure["canary"] == {**mlops_azure["canary"], "dependsOn": "retrain", "condition": condition}
    assert azure["shadow"] == mlops_azure["shadow"]
    assert azure["fleet"] == mlops_azure["fleet"]
    for path, name in ((GITHUB, "monitor.yml"), (MLOPS_GITHUB, "mlops.yml")):
        assert yaml.safe_load(path.read_text())["env"]["CLOUD_REGISTRY"] == "azureml:", name
    for path in (AZURE, MLOPS_AZURE):
        variables = {v.get("name"): v.get("value") for v in yaml.safe_load(path.read_text())["variables"]}
        assert variables["CLOUD_REGISTRY"] == "azureml:" and variables["RING_TIMEOUT"] == "1800", path.name


@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_secrets_come_from_the_ci_secret_store(path: Path) -> None:
    assert_secrets_from_the_store(path, SECRETS)


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
    assert code == 0 and verdict(output, "better") == "false", output
    assert "the challenger is not better" in output
    assert registry.get("cancer", alias="production").version == "1"

    # Labels of a changed concept make a better challenger: registered under `challenger`, production untouched,
    # and the plan step reads its version from retrain.json and sees something to deploy.
    production = shifted(trained_cancer().frame.drop(columns="target"))
    records = records_for(production, start=start, prefix="n", per_request=4)
    changed = tmp_path / "changed"
    changed.mkdir()
    for index, message in enumerate(segments(records)):
        (changed / f"capture-{index:012d}.jsonl").write_bytes(message.body)
    radius = production["mean radius"].to_numpy()
    write_labels(tmp_path / "labels.csv", records, [int(v) for v in radius > np.median(radius)])
    code, output = run_step(retrain, tmp_path, {**env, "CAPTURE_SOURCE": str(changed)})
    assert code == 0 and verdict(output, "better") == "true", output
    challenger = registry.get("cancer", alias="challenger")
    assert challenger.version != "1" and registry.get("cancer", alias="production").version == "1"
    code, output = run_step(script_with(path, "rollout plan"), tmp_path, env)
    assert code == 0 and verdict(output, "deploy") == "true", output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["candidate"]["version"] == challenger.version and plan["production"]["version"] == "1"
