"""Train and export the bundled default model: a random forest on scikit-learn's wine dataset.

``python -m cloud bundle-default`` rewrites ``edge_module/default_model/``; the result is
deterministic for a given scikit-learn and skl2onnx version.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from cloud.export import onnx_predict, to_onnx_single_tensor
from edge_module.model_contract import Feature, ModelMetadata

DEFAULT_NAME = "wine"
DEFAULT_VERSION = "1"
COMMAND = "python -m cloud bundle-default"
SEED = 0


def library_versions() -> dict[str, str]:
    names = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy")
    versions = {name: importlib_metadata.version(name) for name in names}
    versions["python"] = platform.python_version()
    return versions


def build_default_model(out_dir: Path) -> dict[str, Any]:
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    data = load_wine()
    features = np.asarray(data.data, dtype=np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, data.target, test_size=0.25, random_state=SEED, stratify=data.target
    )
    model = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=SEED, n_jobs=1)
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, predicted)), 6),
        "f1_macro": round(float(f1_score(y_test, predicted, average="macro")), 6),
        "test_rows": len(y_test),
    }
    metadata = ModelMetadata(
        name=DEFAULT_NAME,
        version=DEFAULT_VERSION,
        task="classification",
        features=tuple(Feature(name=str(name)) for name in data.feature_names),
        class_labels=tuple(int(label) for label in model.classes_),
        metrics=metrics,
        libraries=library_versions(),
    )
    onnx_bytes = to_onnx_single_tensor(model, features.shape[1], metadata)

    labels, probabilities = onnx_predict(onnx_bytes, x_test)
    if not np.array_equal(labels, predicted) or not np.allclose(probabilities, model.predict_proba(x_test), atol=1e-5):
        raise RuntimeError("parity check failed: ONNX and scikit-learn disagree on the test split")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    manifest = {
        "name": DEFAULT_NAME,
        "version": DEFAULT_VERSION,
        "file": "model.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "size": len(onnx_bytes),
        "task": "classification",
        "dataset": "sklearn:wine",
        "estimator": "RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0)",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, features.shape[1]]}],
        "feature_names": list(data.feature_names),
        "class_labels": [int(label) for label in model.classes_],
        "target_names": list(data.target_names),
        "metrics": metrics,
        "libraries": library_versions(),
        "command": COMMAND,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
