"""Data capture: the record format and correlation ids over HTTP, the ring's budget and recovery, and retraining."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from edge_module.capture import PENDING_REQUESTS, RECORD_KEYS, CaptureRing, DataCapture, device_id
from edge_module.runtime import OnnxModel, SessionConfig
from tests.observability.conftest import cancer_request, install_cancer_model
from tests.observability.models import breast_cancer_model
from tests.support.inprocess import running_module
from tests.support.models import mixed_types_pipeline

BUDGET = 64 * 1024
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def ring_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("capture-*.jsonl"))


def ring_records(directory: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in sorted(directory.glob("capture-*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line
    ]


def binary_request(rows: np.ndarray, request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    head: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "parameters": {"binary_data_size": rows.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    if request_id is not None:
        head["id"] = request_id
    header = orjson.dumps(head)
    return header + rows.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def binary_outputs(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the outputs of a binary response (label INT64, probabilities FP32)."""
    length = int(response.headers["inference-header-content-length"])
    header: dict[str, Any] = orjson.loads(response.content[:length])
    arrays, offset = {}, length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = np.int64 if output["datatype"] == "INT64" else np.float32
        arrays[output["name"]] = np.frombuffer(response.content[offset : offset + size], dtype).reshape(output["shape"])
        offset += size
    return header, arrays


async def test_records_and_correlation_ids_over_http_json_and_binary(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IOTEDGE_DEVICEID", raising=False)
    monkeypatch.delenv("EdgeHubConnectionString", raising=False)
    capture_dir = tmp_path / "capture"
    trained = breast_cancer_model()
    x = trained.x_holdout
    started = time.time()
    async with running_module(model_dir, capture_rate=1.0, capture_dir=capture_dir, device_id="line-7") as (
        module,
        client,
    ):
        await install_cancer_model(client)
        responses: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # correlation id -> rows, outputs

        async def json_call(rows: np.ndarray, request_id: str | None) -> str:
            body = cancer_request(rows) | ({"id": request_id} if request_id is not None else {})
            response = await client.post("/v2/models/cancer/infer", json=body)
            assert response.status_code == 200, response.text
            payload = response.json()
            outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in payload["outputs"]}
            responses[payload["id"]] = (rows, outputs)
            return str(payload["id"])

        async def binary_call(rows: np.ndarray, request_id: str | None) -> str:
            content, headers = binary_request(rows, request_id)
            response = await client.post("/v2/models/cancer/infer", content=content, headers=headers)
            assert response.status_code == 200, response.text
            header, outputs = binary_outputs(response)
            assert outputs["label"].tolist() == trained_labels(trained, rows)  # the binary body is still right
            responses[header["id"]] = (rows, outputs)
            return str(header["id"])

        assert await json_call(x[0:3], "order-4711") == "order-4711"
        generated = await json_call(x[3:4], None)
        empty = await json_call(x[4:5], "")  # an empty id joins nothing: a new one is made
        assert await binary_call(x[5:7], "batch-9") == "batch-9"
        # The same binary header twice: the second comes from the cached decode plan, and still gets its own id.
        first_binary, second_binary = await binary_call(x[7:9], None), await binary_call(x[9:11], None)
        for made in (generated, empty, first_binary, second_binary):
            assert GENERATED_ID.match(made), made
        assert len({generated, empty, first_binary, second_binary}) == 4

        await module.observability.tick()  # drain to disk (the test drives the periodic work)

    records = ring_records(capture_dir)
    assert len(records) == 11
    names = trained.feature_names
    by_key = {(r["correlationId"], r["row"]): r for r in records}
    assert len(by_key) == len(records)  # (correlationId, row) is unique: the join key
    for correlation_id, (rows, outputs) in responses.items():
        for row, values in enumerate(rows):
            record = by_key[(correlation_id, row)]
            assert list(record)[: len(RECORD_KEYS)] == list(RECORD_KEYS) and "shadowOutputs" not in record
            assert record["deviceId"] == "line-7" and record["model"] == "cancer" and record["version"] == "1"
            assert ISO_UTC.match(record["time"])
            stamp = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
            assert started - 0.01 <= stamp <= time.time()
            assert list(record["inputs"]) == list(names)
            np.testing.assert_array_equal(np.array(list(record["inputs"].values()), dtype=np.float32), values)
            assert record["outputs"]["label"] == outputs["label"][row]
            np.testing.assert_allclose(record["outputs"]["probabilities"], outputs["probabilities"][row], rtol=1e-6)


def trained_labels(trained: Any, rows: np.ndarray) -> list[int]:
    model = OnnxModel("cancer", None, hashlib.sha256(trained.onnx).hexdigest(), trained.onnx, SessionConfig())
    labels: list[int] = model.run({"input": rows})["label"].tolist()
    return labels


def test_records_of_a_model_with_one_input_per_feature_and_a_string_column(tmp_path: Path) -> None:
    mixed = mixed_types_pipeline()
    model = OnnxModel("mixed", "3", hashlib.sha256(mixed.onnx).hexdigest(), mixed.onnx, SessionConfig())
    inputs = {
        "temperature": np.array([[21.5], [np.nan]], dtype=np.float32),
        "site": np.array([["east"], ["north"]], dtype=object),
    }
    capture = DataCapture(CaptureRing(tmp_path / "ring", BUDGET), rate=1.0, device="dev-1")
    capture.observe(model, inputs, model.run(inputs), 0, 0, 0, "cid-1")
    assert capture.drain() == 2
    rows = ring_records(tmp_path / "ring")
    assert [r["inputs"] for r in rows] == [
        {"temperature": 21.5, "site": "east"},
        {"temperature": None, "site": "north"},  # NaN: JSON has none, so null
    ]
    assert [(r["correlationId"], r["row"], r["version"]) for r in rows] == [("cid-1", 0, "3"), ("cid-1", 1, "3")]
    assert all(set(r["outputs"]) == set(model.output_names) for r in rows)


def test_device_id_comes_from_iot_edge_then_dev_mode_then_the_setting_then_the_host() -> None:
    assert device_id("configured", {"IOTEDGE_DEVICEID": "edge-7"}) == "edge-7"
    dev_mode = {"EdgeHubConnectionString": "HostName=h.azure-devices.net;DeviceId=dev-box;ModuleId=m;SharedAccessKey=k"}
    assert device_id("configured", dev_mode) == "dev-box"
    assert device_id("configured", {}) == "configured"
    assert device_id(None, {}) and device_id(None, {}) == device_id("", {})


async def test_ring_stays_within_budget_under_sustained_load(model_dir: Path, tmp_path: Path) -> None:
    capture_dir = tmp_path / "capture"
    x = breast_cancer_model().x_holdout
    high_water = 0
    async with running_module(model_dir, capture_rate=1.0, capture_dir=capture_dir, capture_budget_bytes=BUDGET) as (
        module,
        client,
    ):
        await install_cancer_model(client)
        observability = module.observability
        observability.close()  # the test drives the periodic work itself
        for round_ in range(12):  # 12 x 40 requests x 4 rows, about 1.5 KB a row: several times the budget
            for i in range(40):
                start = (round_ * 40 + i) * 4 % (len(x) - 4)
                response = await client.post("/v2/models/cancer/infer", json=cancer_request(x[start : start + 4]))
                assert response.status_code == 200
            await observability.tick()  # no sender (offline): drain the queue to disk in a thread, send nothing
            high_water = max(high_water, ring_bytes(capture_dir))
            assert observability.capture.ring.total_bytes == ring_bytes(capture_dir)
        ring = observability.capture.ring
        written, dropped = ring.written, ring.dropped["budget"]
        metrics = (await client.get("/metrics")).text
    assert written == 12 * 40 * 4
    assert BUDGET // 2 < high_water <= BUDGET
    assert ring_bytes(capture_dir) <= BUDGET
    assert len(list(capture_dir.glob("capture-*.jsonl"))) > 1
    # Every record is either on disk or counted as dropped for the budget: none vanish uncounted.
    assert dropped > 0 and len(ring_records(capture_dir)) == written - dropped
    assert f"edge_capture_records_total {written}" in metrics
    assert f'edge_capture_dropped_records_total{{reason="budget"}} {dropped}' in metrics
    # What survived is the newest: the oldest segments went first.
    last = (479 * 4) % (len(x) - 4) + 3  # the last row of the last request
    assert ring_records(capture_dir)[-1]["inputs"]["mean_radius"] == pytest.approx(float(x[last, 0]))


def test_segments_become_due_when_full_or_old_and_a_cut_line_is_cut_off_on_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring = CaptureRing(tmp_path / "ring", budget_bytes=BUDGET, segment_bytes=4096)
    line = b'{"x":' + b"1" * 90 + b"}\n"  # 97 bytes: 42 to a segment
    ring.append([line] * 50)
    assert ring.segments == 2
    assert [p.name for p in ring.due_segments(max_age=3600)] == ["capture-000000000001.jsonl"]  # the full one
    assert len(ring.due_segments(max_age=0)) == 2  # the current one, old enough: closed and due
    ring.append([line])  # starts a new segment
    assert ring.segments == 3 and len(ring.due_segments(max_age=3600)) == 2

    # A crash in the middle of a write leaves part of a line: the next run cuts it off and counts whole records.
    with (tmp_path / "ring" / "capture-000000000002.jsonl").open("ab") as segment:
        segment.write(b'{"x":12')
    with caplog.at_level(logging.WARNING, logger="edge_module.capture"):
        reopened = CaptureRing(tmp_path / "ring", budget_bytes=BUDGET, segment_bytes=4096)
        due = reopened.due_segments(max_age=3600)
    assert len(due) == 3  # found on disk: all closed
    assert (tmp_path / "ring" / "capture-000000000002.jsonl").read_bytes() == line * 8
    assert "partial record" in caplog.text
    reopened.append([line])
    assert sorted(p.name for p in (tmp_path / "ring").iterdir())[-1] == "capture-000000000004.jsonl"


def test_a_full_pending_queue_drops_the_oldest_request_counted(tmp_path: Path) -> None:
    trained = breast_cancer_model()
    model = OnnxModel("cancer", None, hashlib.sha256(trained.onnx).hexdigest(), trained.onnx, SessionConfig())
    capture = DataCapture(CaptureRing(tmp_path / "ring", BUDGET), rate=1.0, device="d")
    inputs = {"input": trained.x_holdout[:2]}
    results = model.run(inputs)
    for i in range(PENDING_REQUESTS + 3):
        capture.observe(model, inputs, results, 0, 0, 0, f"c{i}")
    assert capture.pending == PENDING_REQUESTS and capture.ring.dropped["queue"] == 3 * 2


def test_python_m_cloud_trains_on_captured_records(tmp_path: Path) -> None:
    """The loop from the seed: inputs and predictions captured on the device become the next training set."""
    trained = breast_cancer_model()
    model = OnnxModel("cancer", None, hashlib.sha256(trained.onnx).hexdigest(), trained.onnx, SessionConfig())
    capture = DataCapture(CaptureRing(tmp_path / "capture", budget_bytes=BUDGET), rate=1.0, device="d")
    for start in range(0, 120, 6):
        inputs = {"input": trained.x_holdout[start : start + 6]}
        capture.observe(model, inputs, model.run(inputs), 0, 0, 0, f"req-{start}")
    assert capture.drain() == 120
    # The ring's folder is the training data: one column per feature from "inputs", and "prediction", the
    # label from "outputs" (cloud/data.py read_capture).
    records = ring_records(tmp_path / "capture")
    assert len(records) >= 30  # the ring keeps the newest rows within its 64 KB budget
    registry = tmp_path / "registry"
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "capture"),
            "--target",
            "prediction",
            "--name",
            "cancer-retrained",
            "--registry",
            str(registry),
            "--out",
            str(tmp_path / "run"),
            "--algorithm",
            "logistic_regression",
            "--trials",
            "1",
            "--cv",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    entry = LocalRegistry(registry).get("cancer-retrained")
    assert entry.version == "1"


async def test_the_ring_defaults_into_the_store_and_an_old_ring_beside_it_is_only_reported(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = model_dir.parent / "capture"  # where the ring lived before it moved onto the store volume
    old.mkdir()
    (old / "capture-000000000007.jsonl").write_bytes(b'{"_model":"cancer","_version":"1"}\n')
    with caplog.at_level(logging.WARNING, logger="edge_module.observability"):
        async with running_module(model_dir, capture_rate=1.0) as (module, client):
            assert module.observability.capture.ring.directory == model_dir / "capture"
            assert (await client.get("/v2/health/ready")).status_code == 200
            for _ in range(600):  # bounded: 30 s; the forwarder looks once, in a worker thread, as it starts
                if "not forwarded" in caplog.text:
                    break
                await asyncio.sleep(0.05)
    assert f"1 capture segment(s) in {old}" in caplog.text and str(model_dir / "capture") in caplog.text
    assert (old / "capture-000000000007.jsonl").exists()  # left alone


def test_shadow_outputs_appear_only_when_a_shadow_ran() -> None:
    from edge_module.capture import _Sample, records

    trained = breast_cancer_model()
    model = OnnxModel("cancer", "2", hashlib.sha256(trained.onnx).hexdigest(), trained.onnx, SessionConfig())
    inputs = {"input": trained.x_holdout[:2]}
    active, shadow = model.run(inputs), model.run(inputs)
    shadow["label"] = 1 - shadow["label"]  # a shadow that disagrees on every row
    sample = _Sample("cancer", "2", trained.feature_names, inputs, active, 0.0, "c", shadow_results=shadow)
    rows = records(sample, "d")
    assert [r["shadowOutputs"]["label"] for r in rows] == [1 - r["outputs"]["label"] for r in rows]
    assert rows[0]["time"] == "1970-01-01T00:00:00.000Z"
    plain = records(_Sample("cancer", "2", trained.feature_names, inputs, active, 0.0, "c"), "d")
    assert all("shadowOutputs" not in r for r in plain)
