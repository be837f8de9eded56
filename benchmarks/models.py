"""Reference models, trained here on datasets shipped with scikit-learn and cached as ONNX files."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.export import to_onnx_single_tensor
from edge_module.model_contract import Feature, ModelMetadata


@dataclass(frozen=True)
class Reference:
    name: str
    path: Path
    features: int
    batch: int  # rows per request in the benchmark
    rows: np.ndarray  # FP32 [batch, features], a real sample


def _small() -> tuple[Any, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_breast_cancer(return_X_y=True)
    return RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0).fit(x, y), x, y


def _heavy() -> tuple[Any, np.ndarray, np.ndarray]:
    # Three 2048-wide layers: about 1 ms a call on one core, and far cheaper per row in a batch.
    from sklearn.datasets import load_breast_cancer
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    mlp = MLPClassifier(hidden_layer_sizes=(2048, 2048, 2048), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return make_pipeline(StandardScaler(), mlp).fit(x, y), x, y


def _wide() -> tuple[Any, np.ndarray, np.ndarray]:
    # A cheap model on 64 features, sent 32 rows at a time: the request codec dominates, not the model.
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return LogisticRegression(max_iter=2000).fit(x, y), x, y


TRAINERS: dict[str, tuple[Callable[[], tuple[Any, np.ndarray, np.ndarray]], int]] = {
    "small": (_small, 1),
    "heavy": (_heavy, 1),
    "wide": (_wide, 32),
}


def reference(name: str, cache: Path) -> Reference:
    """Train (once per cache directory) and return a reference model."""
    train, batch = TRAINERS[name]
    path = cache / f"{name}.onnx"
    sample = cache / f"{name}.npy"
    if not (path.exists() and sample.exists()):
        estimator, x, _ = train()
        x = x.astype(np.float32)
        metadata = ModelMetadata(
            name=name,
            version="1",
            task="classification",
            features=tuple(Feature(f"f{i}") for i in range(x.shape[1])),
            class_labels=tuple(int(c) for c in estimator.classes_),
        )
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_onnx_single_tensor(estimator, x.shape[1], metadata))
        np.save(sample, x[:batch])
    rows = np.load(sample).astype(np.float32)
    return Reference(name, path, rows.shape[1], batch, rows)
