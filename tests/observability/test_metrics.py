"""Prometheus /metrics after a scripted workload: names, labels and values, parsed by the reference parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge_module.module import default_model_manifest
from tests.observability.conftest import cancer_request, install_cancer_model
from tests.observability.models import breast_cancer_model
from tests.support.inprocess import running_module


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


async def test_metrics_after_a_scripted_workload(model_dir: Path) -> None:
    x = breast_cancer_model().x_holdout
    async with running_module(model_dir) as (_, client):
        sha256 = await install_cancer_model(client)
        for start in range(0, 10, 2):  # 5 requests of 2 rows
            response = await client.post("/v2/models/cancer/infer", json=cancer_request(x[start : start + 2]))
            assert response.status_code == 200, response.text
        bad = await client.post("/v2/models/cancer/infer", json=cancer_request(x[:1, :5]))
        assert bad.status_code == 400
        for _ in range(3):
            wine = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": [[13.2] * 13]}]}
            assert (await client.post("/v2/models/wine/infer", json=wine)).status_code == 200

        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        parsed = samples(response.text)

    cancer = {"model": "cancer", "version": "1"}
    assert value(parsed, "edge_inference_requests_total", outcome="success", **cancer) == 5
    assert value(parsed, "edge_inference_requests_total", outcome="failure", **cancer) == 1
    assert value(parsed, "edge_inference_count_total", **cancer) == 10
    assert value(parsed, "edge_inference_executions_total", **cancer) == 5
    assert value(parsed, "edge_inference_requests_total", outcome="success", model="wine", version="1") == 3

    for family in ("request", "queue", "compute"):
        name = f"edge_inference_{family}_duration_seconds"
        assert value(parsed, f"{name}_count", **cancer) == 5
        assert value(parsed, f"{name}_bucket", le="+Inf", **cancer) == 5
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (metric, labels), v in parsed.items()
            if metric == f"{name}_bucket" and dict(labels)["model"] == "cancer"
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    request_sum = value(parsed, "edge_inference_request_duration_seconds_sum", **cancer)
    compute_sum = value(parsed, "edge_inference_compute_duration_seconds_sum", **cancer)
    assert 0 < compute_sum <= request_sum < 5

    assert value(parsed, "edge_model_info", model="cancer", version="1", sha256=sha256, source="store") == 1
    wine_sha = default_model_manifest()["sha256"]
    assert value(parsed, "edge_model_info", model="wine", version="1", sha256=wine_sha, source="default") == 1
    assert value(parsed, "edge_model_swap_duration_seconds_count", model="cancer") == 1
    assert value(parsed, "edge_model_load_duration_seconds_count", model="cancer") >= 1
    assert value(parsed, "edge_model_load_duration_seconds_sum", model="cancer") > 0

    assert value(parsed, "process_cpu_seconds_total") > 0
    assert value(parsed, "process_resident_memory_bytes") > 20 * 1024 * 1024
    # Drift gauges cover every profiled feature of the active version.
    drift_rows = value(parsed, "edge_model_drift_window_rows", **cancer)
    assert drift_rows == 10
    psi = [
        v
        for (metric, labels), v in parsed.items()
        if metric == "edge_model_drift_psi" and ("model", "cancer") in labels
    ]
    assert len(psi) == 30 and all(v >= 0 for v in psi)


async def test_metrics_off_records_no_histograms(model_dir: Path) -> None:
    async with running_module(model_dir, metrics_enabled=False) as (_, client):
        wine = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": [[13.2] * 13]}]}
        assert (await client.post("/v2/models/wine/infer", json=wine)).status_code == 200
        parsed = samples((await client.get("/metrics")).text)
    assert value(parsed, "edge_inference_requests_total", outcome="success", model="wine", version="1") == 1
    assert not any(metric == "edge_inference_request_duration_seconds_count" for metric, _ in parsed)
