"""The data loop's test material: a real model trained by the sidecar, and capture records in the module's format.

``trained_cancer`` trains breast cancer (scikit-learn's data) through ``cloud.workflow`` with a small search, so the
registry entry and its ONNX file (features, profile, prediction baseline, metrics) are what ``cloud train`` makes.
``records_for`` builds capture records exactly as edge_module/capture.py writes them, with the model's real
outputs from onnxruntime, for tests of the cloud side that do not need a running module.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cloud import workflow
from cloud.registry import LocalRegistry, RegistryEntry
from tests.support.iothub import OutputMessage

# Two features moved by a sensor fault in the drift scenarios (half again, and double).
SHIFTED = ("mean texture", "worst smoothness")
FACTORS = (1.5, 2.0)


@dataclass(frozen=True)
class Trained:
    onnx: bytes
    features: tuple[str, ...]
    x_test: Any  # DataFrame: rows the model was not trained on
    y_test: Any
    frame: Any  # the whole dataset (features + target)


@functools.cache
def _exported() -> tuple[workflow.ExportedModel, Trained]:
    dataset = workflow.load_data("sklearn:breast_cancer")
    run = workflow.train(dataset, algorithms=("random_forest",), trials=2, cv=2)
    model = workflow.export(run, "cancer", "1")
    assert model.parity.passed
    frame = dataset.features.assign(target=dataset.target)
    return model, Trained(model.onnx, tuple(f.name for f in dataset.schema), run.x_test, run.y_test, frame)


def trained_cancer() -> Trained:
    return _exported()[1]


def register_cancer(registry: LocalRegistry) -> RegistryEntry:
    """Version 1 of ``cancer`` in a new ``registry``, promoted to production."""
    entry = workflow.register(_exported()[0], registry).entry
    return registry.promote("cancer", entry.version)


def shifted(rows: Any) -> Any:
    moved = rows.copy()
    for name, factor in zip(SHIFTED, FACTORS, strict=True):
        moved[name] = (moved[name] * factor).astype(np.float32)
    return moved


def predict(onnx: bytes, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    feeds = {name: rows[name].to_numpy(dtype=np.float32).reshape(-1, 1) for name in rows.columns}
    label, probabilities = session.run(None, feeds)
    return np.asarray(label), np.asarray(probabilities)


def records_for(
    rows: Any,
    *,
    model: str = "cancer",
    version: str = "1",
    device: str = "line-1",
    start: datetime | None = None,
    prefix: str = "req",
    per_request: int = 1,
    onnx: bytes | None = None,
) -> list[dict[str, Any]]:
    """Capture records of ``rows`` sent ``per_request`` rows a request, one second apart from ``start``."""
    start = start or datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)
    label, probabilities = predict(onnx or trained_cancer().onnx, rows)
    records = []
    for index, (_, values) in enumerate(rows.iterrows()):
        request, row = divmod(index, per_request)
        stamp = start + timedelta(seconds=request)
        records.append(
            {
                "correlationId": f"{prefix}-{request}",
                "row": row,
                "deviceId": device,
                "model": model,
                "version": version,
                "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
                "inputs": {name: float(values[name]) for name in rows.columns},
                "outputs": {"label": int(label[index]), "probabilities": probabilities[index].tolist()},
            }
        )
    return records


def segments(records: list[dict[str, Any]], per_segment: int = 50) -> list[OutputMessage]:
    """The capture messages the module would send for these records (contentType/encoding, type, segment)."""
    import hashlib

    messages = []
    for start in range(0, len(records), per_segment):
        body = b"".join(json.dumps(r).encode() + b"\n" for r in records[start : start + per_segment])
        digest = hashlib.sha256(body).hexdigest()
        properties = {
            "$.mid": digest,
            "$.ct": "application/json",
            "$.ce": "utf-8",
            "type": "capture",
            "segment": digest,
        }
        messages.append(OutputMessage("capture", body, properties))
    return messages


def write_labels(path: Path, records: list[dict[str, Any]], labels: Any, by_row: bool = True) -> Path:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "correlationId": [r["correlationId"] for r in records],
            **({"row": [r["row"] for r in records]} if by_row else {}),
            "label": list(labels),
        }
    )
    frame.to_csv(path, index=False)
    return path
