"""Score a registered ONNX model on a data source with onnxruntime alone (no scikit-learn pipeline needed):
how a model that is already serving does on fresh, labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cloud.data import MISSING_STRING, read_table
from cloud.errors import DataError
from cloud.parity import onnx_inputs
from edge_module.model_contract import ModelMetadata


def read_metadata(path: Path) -> ModelMetadata:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def score_model(path: Path, source: str, target: str | None = None) -> dict[str, Any]:
    metadata = read_metadata(path)
    if not metadata.features or metadata.task is None:
        raise DataError(f"{path} has no feature/task metadata; was it exported by 'python -m cloud train'?")
    frame = read_table(source)
    if target is None and source.startswith("sklearn:") and metadata.task != "clustering":
        target = "target"
    missing = [f.name for f in metadata.features if f.name not in frame.columns]
    if missing:
        raise DataError(f"{source} lacks the model's feature columns {missing}")
    if target is not None and target not in frame.columns:
        raise DataError(f"target column {target!r} not in {source}")
    if target is not None:
        frame = frame[frame[target].notna()].reset_index(drop=True)
    features = feature_frame(frame, metadata)
    outputs = run_onnx(path, features, metadata)
    result: dict[str, Any] = {"model": metadata.name, "version": metadata.version, "rows": len(features)}
    if target is None:
        labels, counts = np.unique(np.asarray(outputs[0]).reshape(-1), return_counts=True)
        result["predicted"] = {str(k): int(v) for k, v in zip(labels, counts, strict=True)}
        return result
    return {**result, **_metrics(metadata, frame[target], outputs)}


def feature_frame(frame: Any, metadata: ModelMetadata) -> Any:
    """The model's feature columns as the device sends them: FP32 numbers (NaN missing), strings ("" missing)."""
    import pandas as pd

    columns = {}
    for feature in metadata.features:
        column = frame[feature.name]
        if feature.type == "numeric":
            columns[feature.name] = pd.to_numeric(column, errors="coerce").astype(np.float32)
        else:
            columns[feature.name] = column.map(lambda v: MISSING_STRING if pd.isna(v) else str(v))
    return pd.DataFrame(columns)


def run_onnx(model: Path | bytes, features: Any, metadata: ModelMetadata) -> list[Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"]
    )
    return list(session.run(None, onnx_inputs(features, metadata.features)))


def score_frame(model: Path | bytes, metadata: ModelMetadata, frame: Any, target: str) -> dict[str, Any]:
    """Metrics of an ONNX model (a file or its bytes) on a labelled table, with onnxruntime alone."""
    features = feature_frame(frame, metadata)
    return {"rows": len(features), **_metrics(metadata, frame[target], run_onnx(model, features, metadata))}


def _metrics(metadata: ModelMetadata, truth: Any, outputs: list[Any]) -> dict[str, Any]:
    from sklearn import metrics

    if metadata.task == "regression":
        predicted = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        y = truth.to_numpy(dtype=np.float64)
        return {
            "rmse": round(float(np.sqrt(metrics.mean_squared_error(y, predicted))), 6),
            "mae": round(float(metrics.mean_absolute_error(y, predicted)), 6),
            "r2": round(float(metrics.r2_score(y, predicted)), 6),
        }
    if metadata.task != "classification":
        raise DataError("a clustering model is scored without a target")
    classes = [str(c) for c in metadata.class_labels]
    y = np.array([str(v) for v in truth], dtype=object)
    predicted = np.array([str(v) for v in np.asarray(outputs[0]).reshape(-1)], dtype=object)
    return {
        "accuracy": round(float(metrics.accuracy_score(y, predicted)), 6),
        "f1_macro": round(float(metrics.f1_score(y, predicted, labels=classes, average="macro", zero_division=0)), 6),
        "confusion_matrix": metrics.confusion_matrix(y, predicted, labels=classes).tolist(),
        "class_labels": classes,
    }
