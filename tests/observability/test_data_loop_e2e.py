"""The data loop end to end: the real module captures, IoT Hub routing (stood in) stores the capture messages in
Azurite as Avro and as JSON, ``cloud monitor`` reads them through azure-storage-blob and ``cloud retrain`` decides.

A model trained by the sidecar serves with capture at rate 1.0 on the real module, with the real IoT SDK over
MQTT/TLS to mosquitto. In-distribution rows go first, then rows with two features shifted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from tests.observability.test_capture_e2e import captured, wait_captured
from tests.release.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.support.data_loop import SHIFTED, register_cancer, shifted, trained_cancer, write_labels
from tests.support.inprocess import ADMIN_TOKEN
from tests.support.iothub_routing import routed, write_endpoint
from tests.twin.conftest import EdgeFactory, broker, releases, start_edge, workload  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


def infer(client: httpx.Client, rows: Any, request_id: str) -> list[int]:
    body = {
        "id": request_id,
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": [len(rows), 1], "data": rows[name].astype(float).tolist()}
            for name in rows.columns
        ],
    }
    response = client.post("/v2/models/cancer/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == request_id
    (label,) = [o for o in response.json()["outputs"] if o["name"] == "label"]
    return [int(v) for v in label["data"]]


def send(client: httpx.Client, rows: Any, prefix: str, per_request: int) -> dict[tuple[str, int], int]:
    """Rows in requests of ``per_request``; returns the module's predicted label per (correlationId, row)."""
    predicted = {}
    for start in range(0, len(rows), per_request):
        request_id = f"{prefix}-{start // per_request}"
        for row, label in enumerate(infer(client, rows.iloc[start : start + per_request], request_id)):
            predicted[(request_id, row)] = label
    return predicted


def monitor(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["monitor", "cancer", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def test_capture_to_storage_to_monitor_to_retrain(
    start_edge: EdgeFactory,  # noqa: F811
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    champion = register_cancer(registry)
    trained = trained_cancer()
    env = {
        "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EDGE_SERVE_DEFAULT_MODEL": "true",
        "EDGE_CAPTURE_RATE": "1.0",
        "EDGE_CAPTURE_FLUSH_SECONDS": "1",
    }
    edge = start_edge(env=env)
    calm_rows = trained.x_test
    moved_rows = shifted(trained.frame.drop(columns="target"))
    with httpx.Client(base_url=edge.module.url, timeout=30) as client:
        model = base64.b64encode(champion.local_path().read_bytes()).decode()
        response = client.post(
            "/v2/repository/models/cancer/load",
            json={"parameters": {"file:1/model.onnx": model}},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        calm = send(client, calm_rows, "calm", 3)
        boundary = datetime.now(timezone.utc)
        # Records carry milliseconds, cut down: the shifted rows must finish a whole millisecond later.
        while datetime.now(timezone.utc) < boundary + timedelta(milliseconds=2):
            pass
        moved = send(client, moved_rows, "moved", 4)
    wait_captured(edge.hub, set(calm) | set(moved), timeout=120)
    records = captured(edge.hub)
    assert {k: r["outputs"]["label"] for k, r in records.items()} == {**calm, **moved}
    assert all(r["deviceId"] == edge.hub.device_id and r["version"] == "1" for r in records.values())

    # IoT Hub routing to two storage endpoints: one Avro, one JSON.
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    messages = [routed(m, edge.hub.device_id, edge.hub.module_id) for m in edge.hub.outputs("capture")]
    for encoding in ("avro", "json"):
        container = service.create_container(f"capture-{encoding}")
        assert write_endpoint(container, messages, encoding, hub="edge-hub")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    # One window per run, from --since or the first record: these rows take seconds and may straddle any boundary.
    registry_args = ["--registry", str(registry.root), "--window", "all"]
    since, until = ["--since", boundary.isoformat()], ["--until", boundary.isoformat()]
    for encoding in ("avro", "json"):
        source = ["--capture", f"az://capture-{encoding}/edge-hub/"]
        shifted_out = ["--out", str(tmp_path / f"monitor-{encoding}-shifted")]
        code, summary, err = monitor([*source, *registry_args, *since, *shifted_out], capsys)
        assert code == 10, err
        assert summary["driftedFeatures"] == sorted(SHIFTED), summary["driftedFeatures"]
        assert summary["driftedDevices"] == [edge.hub.device_id] and summary["capture"]["records"] == len(moved_rows)
        assert [g["rows"] for g in summary["groups"]] == [len(moved_rows)]
        calm_out = ["--out", str(tmp_path / f"monitor-{encoding}-calm")]
        code, summary, err = monitor([*source, *registry_args, *until, *calm_out], capsys)
        assert code == 0, err
        assert summary["capture"]["records"] == len(calm_rows) and summary["signals"] == []
    monitor_report = tmp_path / "monitor-avro-shifted" / "summary.json"
    # A container URL with a read/list SAS, no connection string: what an operator hands a job.
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    sas = generate_container_sas(
        ACCOUNT, "capture-avro", account_key=ACCOUNT_KEY, permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )  # fmt: skip
    url = f"{azurite.endpoint}/capture-avro/edge-hub?{sas}"
    code, summary, err = monitor(["--capture", url, *registry_args, *since, "--out", str(tmp_path / "m")], capsys)
    assert code == 10 and summary["driftedFeatures"] == sorted(SHIFTED), err
    assert summary["capture"]["source"] == f"{azurite.endpoint}/capture-avro/edge-hub?<SAS>"
    signature = sas.split("sig=")[1].split("&")[0]
    assert signature not in err + "".join(p.read_text() for p in (tmp_path / "m").glob("*.*") if p.suffix != ".png")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)

    # Ground truth arrives for the shifted rows. First it matches the old concept (what the champion says).
    keys = sorted(moved, key=lambda k: (int(k[0].split("-")[1]), k[1]))
    as_records = [{"correlationId": cid, "row": row} for cid, row in keys]
    old = write_labels(tmp_path / "old.csv", as_records, [moved[k] for k in keys])
    radius = moved_rows["mean radius"].to_numpy()
    changed = [int(v) for v in radius > np.median(radius)]  # rows are in request order, as the keys
    new = write_labels(tmp_path / "new.csv", as_records, changed)
    retrain = ["retrain", "cancer", "--data", "sklearn:breast_cancer", "--capture", "az://capture-json/edge-hub/",
               "--registry", str(registry.root), "--algorithm", "random_forest", "--trials", "2", "--cv", "2",
               "--monitor-report", str(monitor_report), "--json"]  # fmt: skip
    code = main([*retrain, "--labels", str(old), "--out", str(tmp_path / "retrain-old")])
    out, err = capsys.readouterr()
    assert code == 11, err
    assert registry.get("cancer", alias="production").version == "1" and len(registry.list("cancer")) == 1

    code = main([*retrain, "--labels", str(new), "--out", str(tmp_path / "retrain-new")])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["challenger"]["scores"]["f1_macro"] >= summary["champion"]["scores"]["f1_macro"] + 0.01
    entry = registry.get("cancer", alias="production")
    assert entry.version == "2" and entry.metadata["lineage"]["parent"]["version"] == "1"
    assert entry.metadata["lineage"]["monitorReport"]["driftedFeatures"] == sorted(SHIFTED)
