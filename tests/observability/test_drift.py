"""Drift against the training profile: quiet on held-out data from the same distribution, firing on shifted data."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cloud.export import with_metadata
from cloud.profile import numeric_profile, string_profile
from edge_module.drift import DriftMonitor
from edge_module.model_contract import ModelMetadata
from edge_module.runtime import OnnxModel, SessionConfig
from tests.observability.conftest import cancer_request, install_cancer_model
from tests.observability.models import breast_cancer_model
from tests.support.inprocess import running_module
from tests.support.models import mixed_types_pipeline


async def drift_after(model_dir: Path, rows: np.ndarray) -> dict[str, Any]:
    async with running_module(model_dir, drift_window=1000, drift_min_rows=100) as (module, client):
        await install_cancer_model(client)
        for start in range(0, len(rows), 7):  # requests of up to 7 rows, like a device batching readings
            response = await client.post("/v2/models/cancer/infer", json=cancer_request(rows[start : start + 7]))
            assert response.status_code == 200, response.text
        summaries = module.observability.drift_summaries()
        metrics = (await client.get("/metrics")).text
    summary = summaries["cancer"]
    assert summary["rows"] == len(rows) and summary["version"] == "1"
    assert f'edge_model_drift_detected{{model="cancer",version="1"}} {int(summary["drifted"])}' in metrics
    return summary


async def test_quiet_on_held_out_unshifted_data(model_dir: Path) -> None:
    holdout = breast_cancer_model().x_holdout
    summary = await drift_after(model_dir, holdout)
    assert summary["enough_data"]
    assert not summary["drifted"], summary["psi_max"]
    assert summary["psi_max"] < summary["threshold"]
    assert summary["out_of_range_max"] < 0.05
    assert len(summary["features"]) == 30


async def test_fires_on_one_shifted_feature(model_dir: Path) -> None:
    model = breast_cancer_model()
    shifted = model.x_holdout.copy()
    area = model.feature_names.index("mean_area")
    shifted[:, area] *= np.float32(1.5)  # a sensor reading half again too high
    summary = await drift_after(model_dir, shifted)
    assert summary["drifted"]
    assert summary["feature"] == "mean_area"
    assert summary["features"]["mean_area"]["psi"] > summary["threshold"]
    # Every other feature still matches its profile.
    others = [s["psi"] for name, s in summary["features"].items() if name != "mean_area"]
    assert max(others) < summary["threshold"]


async def test_not_raised_before_the_window_has_enough_rows(model_dir: Path) -> None:
    shifted = breast_cancer_model().x_holdout[:50] * np.float32(3.0)
    async with running_module(model_dir, drift_min_rows=100) as (module, client):
        await install_cancer_model(client)
        assert (await client.post("/v2/models/cancer/infer", json=cancer_request(shifted))).status_code == 200
        summary = module.observability.drift_summaries()["cancer"]
    assert summary["psi_max"] > summary["threshold"] and summary["out_of_range_max"] > 0.5
    assert not summary["enough_data"] and not summary["drifted"]


def mixed_model_with_profile() -> OnnxModel:
    """The numeric + string pipeline (one input per raw column), with a profile of its training columns."""
    rng = np.random.default_rng(1)
    temperature = rng.normal(20, 5, 500)
    site = rng.choice(["north", "south", "east"], 500, p=[0.5, 0.3, 0.2])
    profile = {
        "rows": 500,
        "features": {"temperature": numeric_profile(temperature), "site": string_profile(list(site))},
    }
    proto = onnx.load_from_string(mixed_types_pipeline().onnx)
    metadata = ModelMetadata.from_props({entry.key: entry.value for entry in proto.metadata_props})
    data = with_metadata(proto, replace(metadata, profile=profile))
    return OnnxModel("mixed", None, hashlib.sha256(data).hexdigest(), data, SessionConfig())


def feed(monitor: DriftMonitor, model: OnnxModel, temperature: np.ndarray, site: np.ndarray) -> dict[str, Any]:
    for start in range(0, len(site), 10):
        inputs = {
            "temperature": temperature[start : start + 10].astype(np.float32).reshape(-1, 1),
            "site": site[start : start + 10].astype(object).reshape(-1, 1),
        }
        results = model.run(inputs)
        monitor.observe(model, inputs, results, 0, 0, 0)
    return monitor.summaries()["mixed"]


def test_categorical_feature_drift_and_unseen_categories() -> None:
    model = mixed_model_with_profile()
    rng = np.random.default_rng(2)
    temperature = rng.normal(20, 5, 400)
    same = feed(DriftMonitor(), model, temperature, rng.choice(["north", "south", "east"], 400, p=[0.5, 0.3, 0.2]))
    assert not same["drifted"] and same["features"]["site"]["out_of_range"] == 0
    moved = feed(DriftMonitor(), model, temperature, rng.choice(["north", "west", "east"], 400, p=[0.2, 0.4, 0.4]))
    assert moved["drifted"] and moved["feature"] == "site"
    assert 0.3 < moved["features"]["site"]["out_of_range"] < 0.5  # "west" was never seen in training
    assert moved["features"]["temperature"]["psi"] < 0.2
