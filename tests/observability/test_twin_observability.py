"""Observability through the real IoT SDK against mosquitto playing IoT Hub and edgeHub.

Twin-set telemetry interval, capture rate and log level; summaries on output ``metrics``; captured
records on output ``capture``; drift raised in reported ``models.<name>.drift``.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.observability.conftest import cancer_request
from tests.observability.models import breast_cancer_model
from tests.support.inprocess import ADMIN_TOKEN
from tests.twin.conftest import EdgeFactory, broker, releases, start_edge, workload  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def cancer_summary(message: Any) -> dict[str, Any]:
    body: dict[str, Any] = message.json()
    summary: dict[str, Any] = body.get("models", {}).get("cancer", {})
    return summary


def test_telemetry_capture_and_drift_reach_the_hub(start_edge: EdgeFactory, tmp_path: Path) -> None:  # noqa: F811
    desired = {"observability": {"telemetryIntervalSeconds": 1, "captureRate": 1.0}}
    env = {
        "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EDGE_SERVE_DEFAULT_MODEL": "true",
        "EDGE_DRIFT_MIN_ROWS": "50",
        "EDGE_CAPTURE_DIR": str(tmp_path / "capture"),
        "EDGE_CAPTURE_BUDGET_BYTES": str(64 * 1024),
    }
    edge = start_edge(desired=desired, env=env)
    model = breast_cancer_model()
    shifted = model.x_holdout.copy()
    shifted[:, model.feature_names.index("mean_area")] *= np.float32(1.5)
    with httpx.Client(base_url=edge.module.url, timeout=30) as client:
        body = {"parameters": {"file:1/model.onnx": base64.b64encode(model.onnx).decode()}}
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert client.post("/v2/repository/models/cancer/load", json=body, headers=headers).status_code == 200
        for start in range(0, 140, 7):
            response = client.post("/v2/models/cancer/infer", json=cancer_request(shifted[start : start + 7]))
            assert response.status_code == 200

        summary = edge.hub.wait_output(
            "metrics", lambda m: cancer_summary(m).get("drift", {}).get("drifted") is True, timeout=60
        )
        cancer = cancer_summary(summary)
        assert cancer["activeVersion"] == "1" and cancer["drift"]["feature"] == "mean_area"
        assert summary.properties.get("$.ct") == "application/json"
        total = sum(
            cancer_summary(m).get("versions", {}).get("1", {}).get("requests", 0) for m in edge.hub.outputs("metrics")
        )
        assert total == 20  # deltas add up: each request counted in exactly one summary
        assert all(len(m.body) < 256 * 1024 for m in edge.hub.outputs("metrics"))

        drift = edge.hub.wait_reported(lambda r: r.get("models", {}).get("cancer", {}).get("drift", {}).get("drifted"))
        block = drift["models"]["cancer"]
        # Loaded over HTTP, not by a release: the twin holds only the drift block for it.
        assert block["drift"]["version"] == "1" and block["drift"]["psiMax"] > block["drift"]["threshold"]

        captured = edge.hub.wait_output("capture", timeout=60)
        rows = [line for line in captured.body.splitlines() if line]
        assert rows and b'"model":"cancer"' in rows[0] and b'"outputs":{"label"' in rows[0]
        assert captured.properties["$.ct"] == "application/json" and captured.properties["type"] == "capture"

        edge.hub.patch_desired({"observability": {"logLevel": "DEBUG", "captureRate": 0}})
        for _ in range(300):  # bounded: 30 s
            if client.get("/status.json").json()["config"]["logLevel"] == "DEBUG":
                break
            time.sleep(0.1)
        config = client.get("/status.json").json()["config"]
    assert config["logLevel"] == "DEBUG" and config["captureRate"] == 0 and config["telemetryIntervalSeconds"] == 1
    # No input payloads in the logs: a distinctive input value never appears.
    assert repr(float(shifted[0, 0])) not in edge.module.logs()
