"""The training-data profile the edge compares live inputs against (drift detection).

Shape (``edge.profile`` in the ONNX metadata)::

    {"rows": N, "features": {
        "<numeric>": {"type": "numeric", "edges": [k+1 ascending], "proportions": [k], "missing": f},
        "<string>": {"type": "string", "categories": {"<value>": p, ...}, "missing": f}}}

Numeric bins are k=10 quantile bins over the training data (first edge the minimum, last the maximum;
duplicate edges from repeated values are merged, so k can be smaller).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cloud.data import MISSING_STRING
from edge_module.model_contract import Feature

BINS = 10


def training_profile(frame: Any, features: tuple[Feature, ...], bins: int = BINS) -> dict[str, Any]:
    rows = len(frame)
    profile: dict[str, Any] = {}
    for feature in features:
        column = frame[feature.name]
        if feature.type == "numeric":
            profile[feature.name] = numeric_profile(np.asarray(column, dtype=np.float64), bins)
        else:
            profile[feature.name] = string_profile([str(v) for v in column])
    return {"rows": rows, "features": profile}


def numeric_profile(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    missing = 1.0 - len(present) / len(values) if len(values) else 0.0
    if len(present) == 0:
        return {"type": "numeric", "edges": [], "proportions": [], "missing": round(missing, 6)}
    edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, bins + 1)))
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    # np.histogram's last bin is closed, so the maximum is counted.
    counts, _ = np.histogram(present, bins=edges)
    proportions = counts / counts.sum()
    return {
        "type": "numeric",
        "edges": [float(e) for e in edges],
        "proportions": [round(float(p), 6) for p in proportions],
        "missing": round(missing, 6),
    }


def string_profile(values: list[str]) -> dict[str, Any]:
    present = [v for v in values if v != MISSING_STRING]
    missing = 1.0 - len(present) / len(values) if values else 0.0
    unique, counts = np.unique(np.array(present, dtype=object).astype(str), return_counts=True)
    total = max(len(present), 1)
    return {
        "type": "string",
        "categories": {str(u): round(int(c) / total, 6) for u, c in zip(unique, counts, strict=True)},
        "missing": round(missing, 6),
    }


def prediction_profile(task: str, predictions: Any) -> dict[str, Any] | None:
    """The model's output distribution on the holdout (``profile["predictions"]``): the baseline the cloud
    monitor compares live predictions with. Class labels as categories, regression values as numeric bins."""
    values = np.asarray(predictions).reshape(-1)
    if task == "classification":
        return string_profile([str(v.item() if hasattr(v, "item") else v) for v in values])
    if task == "regression":
        return numeric_profile(values.astype(np.float64))
    return None
