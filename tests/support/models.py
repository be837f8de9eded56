"""Real scikit-learn models on datasets shipped with scikit-learn, converted with skl2onnx."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.export import to_onnx_single_tensor, with_metadata
from edge_module.model_contract import Feature, ModelMetadata

# A row of scikit-learn's wine data, the README's example for the bundled default model (label 0).
WINE_ROW = [13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050]


@dataclass(frozen=True)
class TrainedModel:
    estimator: Any
    onnx: bytes
    x_test: np.ndarray
    feature_names: tuple[str, ...]


@functools.cache
def iris_classifier(version: str = "1", n_estimators: int = 10) -> TrainedModel:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    x = data.data.astype(np.float32)
    estimator = RandomForestClassifier(n_estimators=n_estimators, max_depth=4, random_state=0).fit(
        x[::2], data.target[::2]
    )
    names = tuple(str(n) for n in data.feature_names)
    metadata = ModelMetadata(
        name="iris",
        version=version,
        task="classification",
        features=tuple(Feature(n) for n in names),
        class_labels=(0, 1, 2),
    )
    return TrainedModel(estimator, to_onnx_single_tensor(estimator, x.shape[1], metadata), x[1::2], names)


@functools.cache
def diabetes_regressor(version: str = "1") -> TrainedModel:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    x = data.data.astype(np.float32)
    estimator = Ridge(alpha=0.5).fit(x[::2], data.target[::2])
    names = tuple(str(n) for n in data.feature_names)
    metadata = ModelMetadata(
        name="diabetes", version=version, task="regression", features=tuple(Feature(n) for n in names)
    )
    return TrainedModel(estimator, to_onnx_single_tensor(estimator, x.shape[1], metadata), x[1::2], names)


@functools.cache
def mixed_types_pipeline() -> TrainedModel:
    """A pipeline over a numeric column with missing values and a string category column.

    Its ONNX graph takes one input per raw column: ``temperature`` FP32 [N,1] and ``site`` BYTES [N,1].
    """
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    n = 200
    temperature = rng.normal(20, 5, n).astype(np.float32)
    temperature[::17] = np.nan
    site = rng.choice(["north", "south", "east"], n)
    target = ((np.nan_to_num(temperature, nan=20) > 21) | (site == "east")).astype(np.int64)
    frame = pd.DataFrame({"temperature": temperature, "site": site})
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", SimpleImputer(strategy="median"), ["temperature"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["site"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, target)
    model = to_onnx(
        pipeline,
        initial_types=[("temperature", FloatTensorType([None, 1])), ("site", StringTensorType([None, 1]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    metadata = ModelMetadata(
        name="mixed",
        version="1",
        task="classification",
        features=(Feature("temperature"), Feature("site", "string")),
        class_labels=(0, 1),
        allow_missing=True,
    )
    x_test = frame.iloc[:20].to_numpy(dtype=object)
    return TrainedModel(pipeline, with_metadata(model, metadata), x_test, ("temperature", "site"))


def served_model_args(root: Path) -> list[str]:
    """Write iris, diabetes and the mixed-types pipeline under ``root``; the module's ``--model`` arguments."""
    args: list[str] = []
    for name, trained in (
        ("iris", iris_classifier()),
        ("diabetes", diabetes_regressor()),
        ("mixed", mixed_types_pipeline()),
    ):
        (root / f"{name}.onnx").write_bytes(trained.onnx)
        args += ["--model", f"{name}={root / f'{name}.onnx'}"]
    return args
