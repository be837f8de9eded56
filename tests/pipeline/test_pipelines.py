"""The CI/CD definitions: every `python -m cloud` call they make exists and accepts its flags, all three run
the same sequence, secrets come from the CI's secret stores, and the local run goes end to end."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sklearn.datasets import load_wine

from tests.pipeline.workflow_files import (
    assert_secrets_from_the_store,
    parse,
    pipeline_calls,
    shell_scripts,
    step_names,
)
from tests.support.azureml_fake import subprocess_env

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "azure-pipelines.yml"
GITHUB = REPO / ".github" / "workflows" / "mlops.yml"
LOCAL = REPO / "scripts" / "pipeline-local"
# The pipeline: train, plan, parity gate, release, canary ring, the optional shadow stage, fleet ring,
# production; then the manual rollback.
SEQUENCE = [
    ("train", None),
    ("rollout", "plan"),
    ("registry", "show"),
    ("release", None),
    ("rollout", "deploy"),
    ("rollout", "shadow"),
    ("rollout", "promote-if-agrees"),
    ("rollout", "deploy"),
    ("rollout", "promote"),
    ("rollout", "rollback"),
]
STEPS = [
    "tests",
    "arm64 image",
    "train",
    "plan",
    "parity gate",
    "release",
    "deploy canary",
    "shadow",
    "promote if agrees",
    "deploy fleet",
    "record production",
    "rollback",
]
PLUMBING = {"setup", "collect the release", "nothing to deploy"}
SECRETS = [
    "IOTHUB_CONNECTION_STRING",
    "AZURE_STORAGE_CONNECTION_STRING",
    "CLOUD_SIGNING_KEY_PASSPHRASE",
    "AZURE_CLIENT_SECRET",
]


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
        if hasattr(args, "registry") and getattr(args, "release", None) is None:  # with --release: not read
            assert str(args.registry) == "$CLOUD_REGISTRY", f"{call} must use the registry of record"
    # The local run also writes the fleet's state whenever it ends (its EXIT trap comes first in the file).
    assert sequence == ([("fleet", "status"), *SEQUENCE] if path == LOCAL else SEQUENCE)
    rings = [parse(call).ring for call in calls if call[:2] == ["rollout", "deploy"]]
    assert rings == ["canary", "fleet"]


def test_the_ci_definitions_run_the_same_commands_in_the_same_steps() -> None:
    azure, github = (yaml.safe_load(path.read_text()) for path in (AZURE, GITHUB))
    assert pipeline_calls(AZURE) == pipeline_calls(GITHUB)
    assert [name for name in step_names(azure) if name not in PLUMBING] == STEPS
    assert [name for name in step_names(github) if name not in PLUMBING] == STEPS
    assert shell_scripts(azure)[0] == shell_scripts(github)[0] == 'sudo env "PATH=$PATH" bash .ci/run'


def test_the_local_run_makes_the_same_calls_against_the_stand_ins() -> None:
    local = [call for call in pipeline_calls(LOCAL) if call[:2] != ["keys", "new"]][1:]
    ci = pipeline_calls(GITHUB)
    without_hub = [[arg for arg in call if arg not in ("--hub-endpoint", "$HUB_ENDPOINT")] for call in local]
    assert without_hub == ci


def test_github_skips_the_rollout_when_there_is_nothing_to_deploy_and_rolls_back_by_hand() -> None:
    workflow = yaml.safe_load(GITHUB.read_text())
    jobs = workflow["jobs"]
    # PyYAML reads the key `on` as True.
    assert workflow[True]["workflow_dispatch"]["inputs"]["action"]["options"] == ["deploy", "rollback"]
    assert workflow["env"]["CLOUD_REGISTRY"] == "azureml:"
    assert {f"AZUREML_{part}" for part in ("SUBSCRIPTION_ID", "RESOURCE_GROUP", "WORKSPACE")} <= set(workflow["env"])
    assert jobs["build"]["outputs"]["deploy"] == "${{ steps.plan.outputs.deploy }}"
    gated = [step for step in jobs["build"]["steps"] if step.get("name") in ("parity gate", "release")]
    assert [step["if"] for step in gated] == ["steps.plan.outputs.deploy == 'true'"] * 2
    assert jobs["canary"]["if"] == "needs.build.outputs.deploy == 'true'"
    assert jobs["fleet"]["needs"] == ["canary", "shadow"] and jobs["fleet"]["environment"] == "production"
    assert jobs["shadow"]["needs"] == "canary" and jobs["shadow"]["if"] == "vars.SHADOW_MIN_AGREEMENT != ''"
    # A skipped shadow stage must not skip the fleet ring; a failed one (the shadow disagreed) must.
    assert "needs.shadow.result != 'failure'" in jobs["fleet"]["if"]
    assert jobs["rollback"]["if"] == "github.event_name == 'workflow_dispatch' && inputs.action == 'rollback'"
    assert "needs" not in jobs["rollback"] and jobs["rollback"]["environment"] == "production"
    assert jobs["tests"]["if"] == "github.event_name != 'workflow_dispatch' || inputs.action == 'deploy'"


def test_azure_skips_the_rollout_when_there_is_nothing_to_deploy_and_rolls_back_by_hand() -> None:
    pipeline = yaml.safe_load(AZURE.read_text())
    stages = {stage["stage"]: stage for stage in pipeline["stages"]}
    assert pipeline["parameters"][0]["values"] == ["deploy", "rollback"]
    variables = {v.get("name"): v.get("value") for v in pipeline["variables"]}
    assert variables["CLOUD_REGISTRY"] == "azureml:"
    [plan] = [step for step in stages["build"]["jobs"][0]["steps"] if step.get("displayName") == "plan"]
    assert plan["name"] == "plan" and "task.setvariable variable=deploy;isOutput=true" in plan["bash"]
    assert (
        stages["canary"]["condition"] == "and(succeeded(), eq(dependencies.build.outputs['build.plan.deploy'], 'true'))"
    )
    assert stages["tests"]["condition"] == "eq('${{ parameters.action }}', 'deploy')"
    assert stages["rollback"]["condition"] == "eq('${{ parameters.action }}', 'rollback')"
    assert stages["rollback"]["dependsOn"] == [] and stages["fleet"]["dependsOn"] == ["canary", "shadow"]
    assert stages["shadow"]["condition"] == "and(succeeded(), ne(variables['SHADOW_MIN_AGREEMENT'], ''))"
    assert "in(dependencies.shadow.result, 'Succeeded', 'Skipped')" in stages["fleet"]["condition"]


def test_both_ci_definitions_build_and_serve_the_arm64_image_on_an_arm64_machine_before_training() -> None:
    azure, github = (yaml.safe_load(path.read_text()) for path in (AZURE, GITHUB))
    [azure_tests] = [stage for stage in azure["stages"] if stage["stage"] == "tests"]
    azure_job = {job["job"]: job for job in azure_tests["jobs"]}["arm64"]
    github_job = github["jobs"]["arm64"]
    variables = {v.get("name"): v.get("value") for v in azure["variables"]}

    assert github_job["runs-on"] == "ubuntu-24.04-arm"
    assert azure_job["pool"] == {
        "name": "${{ variables.ARM64_POOL }}",
        "demands": "Agent.OSArchitecture -equals ARM64",
    }
    assert variables["ARM64_POOL"]  # read when the pipeline compiles, so it cannot come from the variable group
    assert github_job["if"] == github["jobs"]["tests"]["if"]
    assert set(github["jobs"]["build"]["needs"]) == {"tests", "arm64"}
    scripts = shell_scripts(azure_job) + shell_scripts(github_job)
    assert len(scripts) == 2 and scripts[0] == scripts[1]
    command = shlex.split(scripts[0])
    assert command[:5] == ["sudo", "env", "PATH=$PATH", "EDGE_BUILD_ARM64=1", "bash"]
    # The test it selects exists (a renamed test would select nothing and pass).
    path, _, name = command[-1].partition("::")
    assert (command[-2], path) == (".ci/run", "tests/container/test_image.py")
    assert callable(getattr(importlib.import_module("tests.container.test_image"), name, None))


@pytest.mark.parametrize("path", [AZURE, GITHUB], ids=lambda p: p.name)
def test_secrets_come_from_the_ci_secret_store(path: Path) -> None:
    assert_secrets_from_the_store(path, SECRETS)


AZUREML_LOCATION = (
    "azureml://subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-edge/workspaces/ws-edge"
)


class Backend:
    """Where the pipeline's registry lives: the state folder, or Azure ML through its cross-process stand-in."""

    def __init__(self, kind: str, state: Path) -> None:
        self.kind, self.state = kind, state
        if kind == "azureml":
            self.environment = subprocess_env(state / "azureml")
            self.environment["CLOUD_REGISTRY"] = AZUREML_LOCATION
        else:
            self.environment = dict(os.environ)
            self.environment.pop("CLOUD_REGISTRY", None)

    def run_pipeline(self, *options: str, data: str = "sklearn:wine") -> subprocess.CompletedProcess[str]:
        environment = {**self.environment, "TRAINING_DATA": data, "RING_TIMEOUT": "240"}
        return subprocess.run(
            [str(LOCAL), "--state", str(self.state), *options],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=REPO,
            env=environment,
        )

    def registry(self, *args: str) -> Any:
        """``python -m cloud registry ...`` against this backend, as JSON."""
        location = AZUREML_LOCATION if self.kind == "azureml" else str(self.state / "registry")
        result = subprocess.run(
            [sys.executable, "-m", "cloud", "registry", "--registry", location, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
            env=self.environment,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    def versions(self) -> list[str]:
        return [entry["version"] for entry in self.registry("list", "wine", "--json")]

    def aliased(self, alias: str) -> str:
        return str(self.registry("show", "wine", "--alias", alias, "--no-profile")["version"])


def hub_configurations(state: Path) -> dict[str, Any]:
    configurations: dict[str, Any] = json.loads((state / "hub" / "state.json").read_text())["configurations"]
    return configurations


def fleet_summary(state: Path) -> Any:
    return json.loads((state / "fleet-status.json").read_text())["summary"]["wine"]


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("kind", ["local", "azureml"])
def test_the_local_pipeline_runs_again_and_again_on_one_state_dir(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    backend = Backend(kind, state)
    data_b = tmp_path / "wine-half.csv"
    load_wine(as_frame=True).frame.iloc[::2].to_csv(data_b, index=False)  # other data, deterministically

    # 1. data A: version 1 to the canary ring, then the fleet.
    out = succeeded(backend.run_pipeline())
    assert backend.versions() == ["1"]
    v1_sha256 = backend.registry("show", "wine", "--version", "1", "--no-profile")["sha256"]
    assert out.index("canary ring: wine version 1 active on 1 device(s)") < out.index(
        "fleet ring: wine version 1 active on 3 device(s)"
    )
    assert sorted(hub_configurations(state)) == ["wine-v1-r1-canary", "wine-v1-r1-fleet"]
    assert fleet_summary(state) == {"active": {"1": 3}, "failed": {}, "pending": []}
    canary = json.loads((state / "canary-deployment.json").read_text())
    fleet = json.loads((state / "fleet-deployment.json").read_text())
    assert (canary["targetCondition"], fleet["targetCondition"]) == ("tags.ring='canary'", "tags.environment='prod'")
    assert canary["priority"] > fleet["priority"]
    assert (state / "registry").exists() == (kind == "local")

    # Bad input: a rollback with no previous release is refused, and nothing changes.
    before = hub_configurations(state)
    refused = backend.run_pipeline("--rollback")
    assert refused.returncode == 7, refused.stdout + refused.stderr
    assert "error: no previous release of wine to roll back to: version 1 is the only one" in refused.stderr
    assert "pipeline failed at step 'rollback' (exit 7)" in refused.stderr
    assert hub_configurations(state) == before and fleet_summary(state)["active"] == {"1": 3}

    # 2. data A again: nothing to deploy, no new version, no new configuration.
    out = succeeded(backend.run_pipeline())
    assert "unchanged: wine version 1" in out and "nothing to deploy" in out
    assert backend.versions() == ["1"]
    assert hub_configurations(state) == before
    assert fleet_summary(state) == {"active": {"1": 3}, "failed": {}, "pending": []}

    # 3. data B: version 2, canary then fleet; version 1's configurations go, its file stays in the registry.
    out = succeeded(backend.run_pipeline(data=str(data_b)))
    assert backend.versions() == ["1", "2"]
    assert out.index("canary ring: wine version 2 active on 1 device(s)") < out.index("deleted wine-v1-r1-canary")
    assert fleet_summary(state) == {"active": {"2": 3}, "failed": {}, "pending": []}
    assert sorted(hub_configurations(state)) == ["wine-v2-r2-canary", "wine-v2-r2-fleet"]
    # `registry show` fetches version 1's file and checks it against the sha256 recorded at registration.
    assert backend.registry("show", "wine", "--version", "1")["sha256"] == v1_sha256
    assert (backend.aliased("production"), backend.aliased("previous")) == ("2", "1")

    # 4. --rollback: version 1 again on every device, through the canary ring first.
    out = succeeded(backend.run_pipeline("--rollback"))
    assert out.index("wine-v1-r3-canary: 1 device(s) report wine 1 active") < out.index("created wine-v1-r3-fleet")
    assert fleet_summary(state) == {"active": {"1": 3}, "failed": {}, "pending": []}
    assert sorted(hub_configurations(state)) == ["wine-v1-r3-canary", "wine-v1-r3-fleet"]
    assert (backend.aliased("production"), backend.aliased("previous")) == ("1", "2")
