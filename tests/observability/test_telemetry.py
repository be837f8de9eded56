"""Telemetry summaries through a send function, their size bound, capture forwarding, and twin settings."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from edge_module.telemetry import MAX_MESSAGE_BYTES, TARGET_BYTES, encode_bounded
from tests.observability.conftest import cancer_request, install_cancer_model
from tests.observability.models import breast_cancer_model
from tests.support.inprocess import running_module


class Outbox:
    """A send function like the twin service's: records what it was given, or fails while offline."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.properties: list[dict[str, str]] = []
        self.message_ids: list[str | None] = []
        self.online = True

    async def __call__(
        self, output: str, body: bytes, properties: Mapping[str, str] | None = None, message_id: str | None = None
    ) -> None:
        if not self.online:
            raise ConnectionError("edgeHub unreachable")
        self.sent.append((output, body))
        self.properties.append(dict(properties or {}))
        self.message_ids.append(message_id)


async def test_summary_counts_latency_drift_and_limits(model_dir: Path) -> None:
    x = breast_cancer_model().x_holdout * 2.0
    outbox = Outbox()
    async with running_module(model_dir, drift_min_rows=50) as (module, client):
        observability = module.observability
        observability.close()  # the test drives the periodic work itself
        observability.sender = outbox
        await install_cancer_model(client)
        for start in range(0, 120, 4):
            assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[start : start + 4]))).is_success
        assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[:1, :2]))).status_code == 400
        await observability.send_telemetry()
        assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[:2]))).is_success
        await observability.send_telemetry()
        outbox.online = False
        assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[:2]))).is_success
        await observability.send_telemetry()
        outbox.online = True
        assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[:3]))).is_success
        await observability.send_telemetry()
        metrics = (await client.get("/metrics")).text

    assert [output for output, _ in outbox.sent] == ["metrics", "metrics", "metrics"]
    first, second, after_outage = (orjson.loads(body) for _, body in outbox.sent)
    cancer = first["models"]["cancer"]
    assert cancer["activeVersion"] == "1"
    assert cancer["versions"]["1"]["requests"] == 30 and cancer["versions"]["1"]["failures"] == 1
    assert cancer["versions"]["1"]["inferences"] == 120
    latency = cancer["versions"]["1"]["latencyMs"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert cancer["drift"]["drifted"] and cancer["drift"]["psiMax"] > 1 and len(cancer["drift"]["top"]) == 5
    assert first["models"]["wine"]["activeVersion"] == "1" and first["process"]["rssBytes"] > 0
    # The second summary covers only what happened since the first.
    assert second["models"]["cancer"]["versions"]["1"]["requests"] == 1
    assert second["models"]["cancer"]["versions"]["1"]["failures"] == 0
    # The summary after an undelivered one covers both periods: no request goes uncounted.
    assert after_outage["models"]["cancer"]["versions"]["1"]["requests"] == 2
    assert after_outage["models"]["cancer"]["versions"]["1"]["inferences"] == 5
    assert 'edge_telemetry_messages_total{outcome="ok"} 3' in metrics
    assert 'edge_telemetry_messages_total{outcome="failed"} 1' in metrics


async def test_a_large_summary_is_cut_to_fit_an_iot_hub_message(model_dir: Path) -> None:
    async with running_module(model_dir) as (module, client):
        await install_cancer_model(client)
        for start in range(0, 200, 10):
            rows = breast_cancer_model().x_holdout[start : start + 10]
            assert (await client.post("/v2/models/cancer/infer", json=cancer_request(rows))).is_success
        summary = module.observability.telemetry.build(module.observability.drift_summaries())
    # A fleet gateway serving thousands of models: the same entries under many names.
    summary["models"] = {f"model-{i}": orjson.loads(orjson.dumps(summary["models"]["cancer"])) for i in range(4000)}
    assert len(orjson.dumps(summary)) > MAX_MESSAGE_BYTES
    payload = encode_bounded(summary)
    assert len(payload) <= TARGET_BYTES < MAX_MESSAGE_BYTES
    decoded: dict[str, Any] = orjson.loads(payload)
    assert decoded["truncatedModels"] + len(decoded["models"]) == 4000
    assert all("top" not in entry["drift"] for entry in decoded["models"].values())


async def test_capture_segments_are_forwarded_then_removed(model_dir: Path, tmp_path: Path) -> None:
    outbox = Outbox()
    x = breast_cancer_model().x_holdout
    async with running_module(
        model_dir, capture_rate=1.0, capture_dir=tmp_path / "capture", capture_budget_bytes=64 * 1024
    ) as (module, client):
        observability = module.observability
        observability.close()  # the test drives the periodic work itself
        await install_cancer_model(client)
        for start in range(0, 280, 4):
            assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[start : start + 4]))).is_success
        outbox.online = False
        observability.sender = outbox
        await observability.tick()  # offline: kept on disk
        kept = len(list((tmp_path / "capture").glob("*.jsonl")))
        assert kept > 1 and observability.capture_sent == {"ok": 0, "failed": 1}
        outbox.online = True
        await observability.tick()
        metrics = (await client.get("/metrics")).text
    assert {output for output, _ in outbox.sent} == {"capture"}
    assert len(outbox.sent) == kept - 1  # every closed segment; the one being written stays (not old yet)
    assert f'edge_capture_messages_total{{outcome="ok"}} {kept - 1}' in metrics
    assert 'edge_capture_messages_total{outcome="failed"} 1' in metrics
    rows = [orjson.loads(line) for _, body in outbox.sent for line in body.splitlines()]
    assert len(rows) > len(outbox.sent)  # several records a segment
    assert all(row["model"] == "cancer" and "mean_area" in row["inputs"] and "label" in row["outputs"] for row in rows)
    assert all(len(body) <= 192 * 1024 for _, body in outbox.sent)
    # The segment's SHA-256 is its message id and property "segment": the same if it is ever sent again.
    digests = [hashlib.sha256(body).hexdigest() for _, body in outbox.sent]
    assert outbox.message_ids == digests
    assert outbox.properties == [{"type": "capture", "segment": digest} for digest in digests]
    assert len(list((tmp_path / "capture").glob("*.jsonl"))) == 1


async def test_twin_settings_apply_and_bad_ones_are_refused_whole(model_dir: Path) -> None:
    async with running_module(model_dir, log_level="INFO") as (module, client):
        observability = module.observability
        observability.close()  # the test drives the periodic work itself
        observability.apply(
            {"telemetryIntervalSeconds": 15, "driftThreshold": 0.5, "captureRate": 0.25, "logLevel": "warning"}
        )
        assert observability.config_error is None
        assert observability.drift.threshold == 0.5 and observability.capture.rate == 0.25
        assert logging.getLogger().level == logging.WARNING
        observability.apply({"captureRate": 2, "driftThreshold": 0.1})
        assert observability.config_error is not None and "captureRate" in observability.config_error
        assert observability.drift.threshold == 0.5 and observability.capture.rate == 0.25
        observability.apply({"sampling": 1})
        assert "unknown" in (observability.config_error or "")
        status = (await client.get("/status.json")).json()
        observability.apply({"logLevel": "INFO"})
    assert status["config"]["telemetryIntervalSeconds"] == 15 and status["config"]["captureRate"] == 0.25
    assert "sampling" in status["config"]["error"]
    assert observability.reported()["logLevel"] == "INFO"


async def test_drift_changes_are_reported_once_until_they_clear(model_dir: Path) -> None:
    x = breast_cancer_model().x_holdout
    async with running_module(model_dir, drift_min_rows=50, drift_window=250) as (module, client):
        observability = module.observability
        observability.close()  # the test drives the periodic work itself
        await install_cancer_model(client)
        assert observability.drift_changes() == {}
        for start in range(0, 100, 10):
            shifted = x[start : start + 10] * 3.0
            assert (await client.post("/v2/models/cancer/infer", json=cancer_request(shifted))).is_success
        raised = observability.drift_changes()
        assert raised["cancer"]["drifted"] and raised["cancer"]["psiMax"] > raised["cancer"]["threshold"]
        observability.drift_reported(raised)
        assert observability.drift_changes() == {}
        for start in range(0, 280, 10):  # the window slides back to unshifted data
            assert (await client.post("/v2/models/cancer/infer", json=cancer_request(x[start : start + 10]))).is_success
        cleared = observability.drift_changes()
    assert cleared["cancer"]["drifted"] is False
