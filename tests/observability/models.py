"""A real model with a real training-data profile: breast cancer (scikit-learn), half for training."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cloud.export import to_onnx_single_tensor
from cloud.profile import numeric_profile
from edge_module.model_contract import Feature, ModelMetadata


@dataclass(frozen=True)
class ProfiledModel:
    onnx: bytes
    x_train: np.ndarray
    x_holdout: np.ndarray
    feature_names: tuple[str, ...]
    profile: dict[str, object]


@functools.cache
def breast_cancer_model(version: str = "1") -> ProfiledModel:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_train, x_holdout, y_train, _ = train_test_split(
        x, data.target, test_size=0.5, random_state=0, stratify=data.target
    )
    names = tuple(str(n).replace(" ", "_") for n in data.feature_names)
    profile = {
        "rows": len(x_train),
        "features": {name: numeric_profile(x_train[:, i].astype(np.float64)) for i, name in enumerate(names)},
    }
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    metadata = ModelMetadata(
        name="cancer",
        version=version,
        task="classification",
        features=tuple(Feature(n) for n in names),
        class_labels=(0, 1),
        profile=profile,
    )
    onnx = to_onnx_single_tensor(estimator, x.shape[1], metadata)
    return ProfiledModel(onnx, x_train, x_holdout, names, profile)
