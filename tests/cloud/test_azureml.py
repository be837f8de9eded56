"""The Azure ML backends, offline: every HTTP request is answered at the transport (tests/cloud/azure_fake.py)
and any connection outside 127.0.0.1 fails the test."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.__main__ import main
from cloud.azureml import AzureWorkspace
from cloud.azureml_registry import AzureMLRegistry
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
from tests.cloud.azureml_service import AzureMLService
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


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[FakeAzure, AzureMLService]]:
    """The stateful Azure ML stand-in (models, blob datastore) and Entra ID, instead of canned replies."""
    with fake_azure(monkeypatch) as fake:
        stand_in = AzureMLService(tmp_path / "azureml")
        stand_in.install(fake)
        add_login_routes(fake)
        yield fake, stand_in


def test_register_model_version_request_sequence_and_bodies(
    service: tuple[FakeAzure, AzureMLService], tmp_path: Path
) -> None:
    azure, stand_in = service
    onnx_bytes = mixed_types_pipeline().onnx
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    credential = StaticCredential()
    workspace = AzureWorkspace(subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP, workspace=WORKSPACE)
    registry = AzureMLRegistry.for_workspace(workspace, credential)

    registration = registry.register(
        "mixed", onnx_bytes, metrics={"accuracy": 0.9}, tags={"team": "edge"}, metadata={"task": "classification"}
    )

    assert (registration.created, registration.entry.version, registration.entry.sha256) == (True, "1", digest)
    blob = f"{CONTAINER}/LocalUpload/{re.findall(r'LocalUpload/([0-9a-f]+)/', azure.requests[4].path)[0]}/model.onnx"
    assert azure.summary() == [
        ("GET", "/models/mixed/versions"),  # ours: every version, to find the latest and the next number
        ("GET", "/models/mixed/versions"),  # the SDK's: the latest version's kind
        ("GET", "/datastores/workspaceblobstore"),
        ("POST", "/datastores/workspaceblobstore/listSecrets"),
        ("HEAD", f"blob:{blob}"),
        ("PUT", f"blob:{blob}"),
        ("PUT", f"blob:{blob}?comp=metadata"),
        ("PUT", "/models/mixed/versions/1"),
        ("GET", "/models/mixed/versions"),  # read back what was created
    ]
    ours, latest, _, secrets, _, upload, metadata, put, _ = azure.requests
    assert "listViewType=All" in ours.url
    assert "$orderBy=createdtime" in latest.url and "$top=1" in latest.url
    assert secrets.json() == {"expirableSecret": True, "expireAfterHours": 1}
    assert upload.body == onnx_bytes
    assert upload.headers["Authorization"].startswith(f"SharedKey {ACCOUNT}:")  # the key from listSecrets
    assert (metadata.headers["x-ms-meta-name"], metadata.headers["x-ms-meta-version"]) == ("mixed", "1")
    assert put.headers["Authorization"] == "Bearer test-token"
    assert credential.scopes and all(scope == "https://management.azure.com/.default" for scope in credential.scopes)
    properties = put.json()["properties"]
    assert properties["modelType"] == "custom_model"
    assert properties["modelUri"].endswith(f"/datastores/workspaceblobstore/paths/{blob.split('/', 1)[1]}")
    assert properties["tags"] == {"team": "edge", "sha256": digest, "format": "onnx"}
    assert properties["properties"]["edge.sha256"] == digest
    assert properties["properties"]["edge.size"] == str(len(onnx_bytes))
    assert json.loads(properties["properties"]["edge.metrics"]) == {"accuracy": 0.9}
    assert json.loads(properties["properties"]["edge.metadata"]) == {"task": "classification"}
    assert [v["name"] for v in stand_in.versions("mixed")] == ["1"]


def test_train_registers_in_azure_ml_with_default_credential_and_azure_is_a_deprecated_alias(
    service: tuple[FakeAzure, AzureMLService],
    workspace_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    azure, stand_in = service
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", "sklearn:iris", "--algorithm", "logistic_regression", "--trials", "1", "--cv", "2"]
    args += ["--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--azure"]) == 0
    captured = capsys.readouterr()
    assert "warning: --azure is deprecated; use --registry azureml:" in captured.err
    assert "registered iris version 1 sha256 " in captured.out
    assert not (tmp_path / "registry").exists()  # Azure ML is the registry of record, not a second copy

    # DefaultAzureCredential -> EnvironmentCredential: the service principal's token from Entra ID first.
    assert azure.summary()[:2] == [
        ("GET", f"https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration"),
        ("POST", f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"),
    ]
    assert "client_secret=not-a-secret" in azure.requests[1].body.decode()
    put = [r for r in azure.requests if r.method == "PUT" and "/models/iris/versions/" in r.path][-1]
    assert put.headers["Authorization"] == "Bearer env-credential-token"
    onnx_bytes = (tmp_path / "run" / "model.onnx").read_bytes()
    assert put.json()["properties"]["properties"]["edge.sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    [version] = stand_in.versions("iris")
    record = version["properties"]["properties"]
    metadata = json.loads(
        record.get("edge.metadata")
        or "".join(record[f"edge.metadata.{i}"] for i in range(int(record["edge.metadata.parts"])))
    )
    assert metadata["parity"]["passed"] is True
    assert metadata["lineage"]["dataset"] == "sklearn:iris"

    # The same data, code and settings again: byte-identical ONNX, nothing registered.
    assert main([*args, "--registry", "azureml:"]) == 0
    assert "unchanged: iris version 1" in capsys.readouterr().out
    assert [v["name"] for v in stand_in.versions("iris")] == ["1"]
    assert main([*args, "--azure", "--registry", str(tmp_path / "elsewhere")]) == 1
    assert "give one of them" in capsys.readouterr().err

    # evaluate reads the version back from Azure ML (downloaded through azure-ai-ml, sha256 checked).
    assert main(["evaluate", "iris", "--registry", "azureml:", "--data", "sklearn:iris"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["model"], scored["version"], scored["rows"]) == ("iris", "1", 150)
    assert scored["accuracy"] > 0.8


def test_train_when_azure_ml_fails_mid_registration_then_a_retry(
    service: tuple[FakeAzure, AzureMLService],
    workspace_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, stand_in = service
    stand_in.fail("PUT", r"/models/iris/versions/\d+$", status=503, times=100)
    args = ["train", "--data", "sklearn:iris", "--algorithm", "logistic_regression", "--trials", "1", "--cv", "2"]
    args += ["--out", str(tmp_path / "run"), "--no-progress", "--registry", "azureml:"]

    assert main(args) == 1
    error = capsys.readouterr().err
    assert "error: register iris version 1: Azure ML failed or is unreachable" in error
    assert "nothing was changed, retry" in error
    assert stand_in.versions("iris") == []

    stand_in.clear_faults()
    assert main(args) == 0
    assert "registered iris version 1 " in capsys.readouterr().out
    assert [v["name"] for v in stand_in.versions("iris")] == ["1"]


@pytest.mark.parametrize("option", [["--azure"], ["--registry", "azureml:"]])
def test_azure_without_a_workspace_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    for name in ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--data", "sklearn:iris", *option, "--no-progress"])
    assert code == 1
    assert "no Azure ML workspace configured: set AZUREML_SUBSCRIPTION_ID" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == []


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
