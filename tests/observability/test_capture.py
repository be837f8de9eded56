"""Data capture: the ring keeps to its byte budget under sustained load, and the cloud trains on its records."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cloud.__main__ import main
from cloud.data import load_dataset
from cloud.registry import LocalRegistry
from edge_module.capture import CaptureRing, DataCapture
from edge_module.runtime import OnnxModel, SessionConfig
from tests.observability.conftest import cancer_request, install_cancer_model
from tests.observability.models import breast_cancer_model
from tests.support.inprocess import running_module

BUDGET = 64 * 1024


def ring_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("capture-*.jsonl"))


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
        for round_ in range(12):  # 12 x 40 requests x 4 rows, about 1 KB a row: several times the budget
            for i in range(40):
                start = (round_ * 40 + i) * 4 % (len(x) - 4)
                response = await client.post("/v2/models/cancer/infer", json=cancer_request(x[start : start + 4]))
                assert response.status_code == 200
            await observability.tick()  # the periodic task's work: drain the queue to disk in a thread
            high_water = max(high_water, ring_bytes(capture_dir))
            assert observability.capture.ring.total_bytes == ring_bytes(capture_dir)
        ring = observability.capture.ring
        written = ring.written
        metrics = (await client.get("/metrics")).text
    assert written == 12 * 40 * 4
    assert BUDGET // 2 < high_water <= BUDGET
    assert ring_bytes(capture_dir) <= BUDGET
    assert len(list(capture_dir.glob("capture-*.jsonl"))) > 1  # it rotated: old segments were deleted
    assert f"edge_capture_records_total {written}" in metrics

    # The records load through the cloud's data loader: raw features by name and the prediction.
    dataset = load_dataset(str(capture_dir), target="prediction")
    names = breast_cancer_model().feature_names
    assert dataset.task == "classification"
    assert [f.name for f in dataset.schema] == list(names)
    assert all(f.type == "numeric" for f in dataset.schema)
    assert 0 < len(dataset.features) < written
    first = dataset.features.iloc[0].to_numpy(dtype=np.float32)
    assert any(np.allclose(first, row) for row in x)
    assert set(dataset.target.unique()) <= {0, 1}


def test_python_m_cloud_trains_on_captured_records(tmp_path: Path) -> None:
    """The loop from the seed: predictions captured on the device become the next training set."""
    trained = breast_cancer_model()
    model = OnnxModel("cancer", None, hashlib.sha256(trained.onnx).hexdigest(), trained.onnx, SessionConfig())
    capture = DataCapture(CaptureRing(tmp_path / "capture", budget_bytes=BUDGET), rate=1.0)
    for start in range(0, 120, 6):
        inputs = {"input": trained.x_holdout[start : start + 6]}
        capture.observe(model, inputs, model.run(inputs), 0, 0, 0)
    assert capture.drain() == 120
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
