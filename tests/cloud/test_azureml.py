"""The Azure ML backends, offline: every HTTP request is answered at the transport (tests/cloud/azure_fake.py)
and any connection outside 127.0.0.1 fails the test."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.azureml import AzureMLRegistry, AzureWorkspace, ml_client
from cloud.registry import LocalRegistry
from tests.cloud.azure_fake import (
    ACCOUNT,
    CLIENT_ID,
    CONTAINER,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TENANT,
    WORKSPACE,
    FakeAzure,
    StaticCredential,
    add_job_routes,
    add_login_routes,
    add_workspace_routes,
    fake_azure,
)
from tests.support.models import mixed_types_pipeline

ARM = "https://management.azure.com"
BLOB = f"https://{ACCOUNT}.blob.core.windows.net"


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    with fake_azure(monkeypatch) as fake:
        fake.add_blob_routes()
        add_workspace_routes(fake)
        add_job_routes(fake)
        add_login_routes(fake)
        yield fake


@pytest.fixture
def workspace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configured workspace, and a service principal for DefaultAzureCredential's EnvironmentCredential."""
    monkeypatch.setenv("AZUREML_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("AZUREML_RESOURCE_GROUP", RESOURCE_GROUP)
    monkeypatch.setenv("AZUREML_WORKSPACE", WORKSPACE)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-a-secret")


def model_sequence(name: str, version: str, blob: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/models/{name}/versions"),  # latest version (the SDK checks the model kind)
        ("GET", "/datastores/workspaceblobstore"),
        ("POST", "/datastores/workspaceblobstore/listSecrets"),
        ("HEAD", f"blob:{blob}"),
        ("PUT", f"blob:{blob}"),
        ("PUT", f"blob:{blob}?comp=metadata"),
        ("PUT", f"/models/{name}/versions/{version}"),
    ]


def test_register_model_version_request_sequence_and_bodies(azure: FakeAzure, tmp_path: Path) -> None:
    onnx_bytes = mixed_types_pipeline().onnx
    entry = LocalRegistry(tmp_path).register(
        "mixed", onnx_bytes, metrics={"accuracy": 0.9}, tags={"team": "edge"}, metadata={"task": "classification"}
    )
    credential = StaticCredential()
    client = ml_client(
        AzureWorkspace(subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP, workspace=WORKSPACE), credential
    )

    model = AzureMLRegistry(client).register_entry(entry)

    assert (model.name, model.version) == ("mixed", "1")
    blob_path = (
        f"{CONTAINER}/LocalUpload/{re.findall(r'LocalUpload/([0-9a-f]+)/', azure.requests[3].path)[0]}/model.onnx"
    )
    assert azure.summary() == model_sequence("mixed", "1", blob_path)
    latest, _, secrets, _, upload, metadata, put = azure.requests
    assert "$orderBy=createdtime" in latest.url and "$top=1" in latest.url
    assert secrets.json() == {"expirableSecret": True, "expireAfterHours": 1}
    assert upload.body == onnx_bytes
    assert upload.headers["Authorization"].startswith(f"SharedKey {ACCOUNT}:")  # the key from listSecrets
    assert (metadata.headers["x-ms-meta-name"], metadata.headers["x-ms-meta-version"]) == ("mixed", "1")
    assert put.headers["Authorization"] == "Bearer test-token"
    assert credential.scopes and all(scope == "https://management.azure.com/.default" for scope in credential.scopes)
    properties = put.json()["properties"]
    assert properties["modelType"] == "custom_model"
    assert properties["modelUri"].endswith(f"/datastores/workspaceblobstore/paths/{blob_path.split('/', 1)[1]}")
    assert properties["tags"] == {"team": "edge", "sha256": entry.sha256, "format": "onnx"}
    assert properties["properties"]["sha256"] == entry.sha256
    assert properties["properties"]["size"] == str(len(onnx_bytes))
    assert json.loads(properties["properties"]["metrics"]) == {"accuracy": 0.9}
    assert json.loads(properties["properties"]["metadata"]) == {"task": "classification"}


def test_train_registers_locally_and_in_azure_with_default_credential(
    azure: FakeAzure, workspace_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", "sklearn:iris", "--algorithm", "logistic_regression", "--trials", "1", "--cv", "2"]
    args += ["--registry", str(tmp_path / "registry"), "--out", str(tmp_path / "run"), "--no-progress", "--azure"]
    assert main(args) == 0
    assert "registered in Azure ML: iris version 1" in capsys.readouterr().out

    entry = LocalRegistry(tmp_path / "registry").get("iris")
    # DefaultAzureCredential -> EnvironmentCredential: the service principal's token from Entra ID first.
    assert azure.summary()[:2] == [
        ("GET", f"https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration"),
        ("POST", f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"),
    ]
    assert "client_secret=not-a-secret" in azure.requests[1].body.decode()
    blob_path = azure.summary()[5][1].removeprefix("blob:")
    assert azure.summary()[2:] == model_sequence("iris", "1", blob_path)
    assert azure.requests[6].body == entry.path.read_bytes()
    put = azure.requests[-1]
    assert put.headers["Authorization"] == "Bearer env-credential-token"
    assert put.json()["properties"]["properties"]["sha256"] == entry.sha256


def test_azure_without_a_workspace_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    code = main(["train", "--data", "sklearn:iris", "--registry", str(tmp_path / "r"), "--azure", "--no-progress"])
    assert code == 1
    assert "no Azure ML workspace configured: set AZUREML_SUBSCRIPTION_ID" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_training_data_from_a_blob_url(
    azure: FakeAzure, tmp_path: Path, sensor_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    azure.blobs[f"{BLOB}/data/sensors.csv"] = sensor_csv.read_bytes()
    url = f"{BLOB}/data/sensors.csv?sv=2021-10-04&sr=b&sp=r&sig=c2ln"
    args = ["train", "--data", url, "--target", "status", "--algorithm", "logistic_regression", "--trials", "1"]
    assert main([*args, "--registry", str(tmp_path / "r"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert azure.summary() == [("GET", "blob:data/sensors.csv")]
    assert LocalRegistry(tmp_path / "r").get("sensors").tags["dataset"] == url


def test_training_data_from_an_azureml_datastore_uri(
    azure: FakeAzure, workspace_env: None, tmp_path: Path, sensor_csv: Path
) -> None:
    azure.blobs[f"{BLOB}/{CONTAINER}/telemetry/sensors.csv"] = sensor_csv.read_bytes()
    uri = "azureml://datastores/workspaceblobstore/paths/telemetry/sensors.csv"
    args = ["train", "--data", uri, "--target", "status", "--algorithm", "logistic_regression", "--trials", "1"]
    assert main([*args, "--registry", str(tmp_path / "r"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    requested = [r for r in azure.summary() if "login.microsoftonline.com" not in r[1]]
    assert requested == [("GET", "/datastores/workspaceblobstore"), ("GET", f"blob:{CONTAINER}/telemetry/sensors.csv")]
    assert LocalRegistry(tmp_path / "r").get("sensors").version == "1"


@pytest.mark.parametrize("sweep", [False, True])
def test_submit_dry_run_prints_yaml_that_load_job_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: bool
) -> None:
    from azure.ai.ml import load_job

    uri = "azureml://datastores/workspaceblobstore/paths/telemetry/sensors.csv"
    args = ["submit", "--data", uri, "--target", "status", "--task", "classification", "--name", "sensors"]
    args += ["--compute", "cpu-cluster", "--code-dir", str(tmp_path / "code"), "--dry-run"]
    assert main([*args, "--sweep"] if sweep else args) == 0
    text = capsys.readouterr().out
    (tmp_path / "job.yml").write_text(text)
    job: Any = load_job(tmp_path / "job.yml")  # a CommandJob or a SweepJob

    assert job.compute == "azureml:cpu-cluster" or job.compute == "cpu-cluster"
    assert job.inputs["data"].path == uri
    command = job.trial.command if sweep else job.command
    assert command.startswith("python -m cloud train --data ${{inputs.data}} --task classification --name sensors")
    environment = job.trial.environment if sweep else job.environment
    pins = environment.conda_file["dependencies"][2]["pip"]
    assert any(pin.startswith("scikit-learn==") for pin in pins) and "azureml-mlflow" in pins
    assert (tmp_path / "code" / "cloud" / "train.py").exists() is False
    assert (tmp_path / "code" / "cloud" / "commands" / "train.py").is_file()
    assert not (tmp_path / "code" / ".venv").exists()
    if sweep:
        assert job.type == "sweep"
        assert "--algorithm ${{search_space.algorithm}}" in command
        assert job.search_space["algorithm"].values == [
            "logistic_regression",
            "random_forest",
            "gradient_boosting",
            "mlp",
        ]
        assert (job.objective.primary_metric, job.objective.goal) == ("cv_f1_macro", "maximize")
    else:
        assert job.type == "command"


@pytest.mark.parametrize("sweep", [False, True])
def test_submit_uploads_code_creates_environment_and_puts_the_job(
    azure: FakeAzure, workspace_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: bool
) -> None:
    args = ["submit", "--data", "sklearn:diabetes", "--task", "regression", "--name", "diabetes"]
    args += ["--compute", "cpu-cluster", "--code-dir", str(tmp_path / "code"), "--select-by", "mae"]
    assert main([*args, "--sweep"] if sweep else args) == 0
    assert "submitted" in capsys.readouterr().out

    calls = [c for c in azure.summary() if "login.microsoftonline.com" not in c[1]]
    code_name = calls[0][1].split("/")[2]
    assert calls[:2] == [
        ("GET", f"/codes/{code_name}/versions"),  # is this code (by hash) already there?
        ("POST", f"/codes/{code_name}/versions/1/startPendingUpload"),
    ]
    uploads = [c for c in calls[2:-3] if c[0] == "PUT" and "comp=metadata" not in c[1]]
    staged = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "code").rglob("*") if p.is_file())
    assert sorted(c[1].removeprefix(f"blob:{code_name}/") for c in uploads) == staged
    assert all(c[1].startswith(f"blob:{code_name}/code/") for c in calls[2:-3])
    assert calls[-3] == ("PUT", f"/codes/{code_name}/versions/1")
    assert calls[-2][0] == "PUT" and calls[-2][1].startswith("/environments/CliV2AnonymousEnvironment/versions/")
    assert calls[-1][0] == "PUT" and calls[-1][1].startswith("/jobs/")

    environment = azure.requests[-2].json()["properties"]
    assert environment["image"].startswith("mcr.microsoft.com/azureml/")
    assert "scikit-learn==" in environment["condaFile"]
    job = azure.requests[-1].json()["properties"]
    assert job["computeId"].endswith("/computes/cpu-cluster")
    assert job["experimentName"] == "edge-inference"
    if sweep:
        assert job["jobType"] == "Sweep"
        assert job["objective"] == {"goal": "minimize", "primaryMetric": "cv_mae"}
        assert job["searchSpace"]["algorithm"][0] == "choice"
        trial = job["trial"]
    else:
        assert job["jobType"] == "Command"
        trial = job
    assert trial["command"].startswith("python -m cloud train --data sklearn:diabetes --task regression")
    assert trial["codeId"].endswith(f"/codes/{code_name}/versions/1")
    assert "/environments/CliV2AnonymousEnvironment/versions/" in trial["environmentId"]


def test_the_socket_guard_catches_an_outside_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from tests.cloud.azure_fake import OutsideConnection

    guard = fake_azure(monkeypatch)
    guard.__enter__()
    with pytest.raises(OutsideConnection):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    with pytest.raises(AssertionError, match="outside connections were attempted"):
        guard.__exit__(None, None, None)
