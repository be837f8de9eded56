"""The candidate algorithms per task: each is one scikit-learn Pipeline (preprocessing + estimator).

Every estimator here converts with skl2onnx. HistGradientBoosting is left out on purpose: skl2onnx 1.20
fails to convert it under scikit-learn 1.9 (a bool in an ints attribute of TreeEnsemble*).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_module.model_contract import Feature

ESTIMATOR_STEP = "model"


@dataclass(frozen=True)
class Candidate:
    name: str
    task: str
    build: Callable[[int], Any]  # seed -> unfitted estimator
    # Search space over the estimator's parameters (without the step prefix); lists are sampled uniformly.
    space: dict[str, list[Any]]
    # Trees do not need scaling, and must not get it: sklearn scales in float64, ONNX in float32, and a value
    # that lands on the other side of a split threshold changes the prediction (the parity gate caught this).
    scale: bool = True


def _logistic(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed)


def _forest_classifier(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1)


def _boosting_classifier(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=50, random_state=seed)


def _mlp_classifier(seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(max_iter=500, early_stopping=False, random_state=seed)


def _ridge(seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(random_state=seed)


def _forest_regressor(seed: int) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=50, random_state=seed, n_jobs=1)


def _boosting_regressor(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=50, random_state=seed)


def _mlp_regressor(seed: int) -> Any:
    from sklearn.neural_network import MLPRegressor

    return MLPRegressor(max_iter=1000, random_state=seed)


def _kmeans(seed: int) -> Any:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=3, n_init=4, random_state=seed)


def _minibatch_kmeans(seed: int) -> Any:
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=3, n_init=3, batch_size=256, random_state=seed)


CLUSTER_COUNTS = [2, 3, 4, 5, 6, 8]

CANDIDATES: tuple[Candidate, ...] = (
    Candidate("logistic_regression", "classification", _logistic, {"C": [0.01, 0.1, 1.0, 10.0, 100.0]}),
    Candidate(
        "random_forest",
        "classification",
        _forest_classifier,
        {"n_estimators": [25, 50, 100], "max_depth": [None, 4, 8, 16], "min_samples_leaf": [1, 2, 5]},
        scale=False,
    ),
    Candidate(
        "gradient_boosting",
        "classification",
        _boosting_classifier,
        {"n_estimators": [25, 50, 100], "learning_rate": [0.03, 0.1, 0.3], "max_depth": [2, 3, 4]},
        scale=False,
    ),
    Candidate(
        "mlp",
        "classification",
        _mlp_classifier,
        {"hidden_layer_sizes": [(32,), (64,), (32, 16)], "alpha": [1e-4, 1e-3, 1e-2]},
    ),
    Candidate("ridge", "regression", _ridge, {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0]}),
    Candidate(
        "random_forest",
        "regression",
        _forest_regressor,
        {"n_estimators": [25, 50, 100], "max_depth": [None, 4, 8, 16], "min_samples_leaf": [1, 2, 5]},
        scale=False,
    ),
    Candidate(
        "gradient_boosting",
        "regression",
        _boosting_regressor,
        {"n_estimators": [25, 50, 100], "learning_rate": [0.03, 0.1, 0.3], "max_depth": [2, 3, 4]},
        scale=False,
    ),
    Candidate(
        "mlp",
        "regression",
        _mlp_regressor,
        {"hidden_layer_sizes": [(32,), (64,), (32, 16)], "alpha": [1e-4, 1e-3, 1e-2]},
    ),
    Candidate("kmeans", "clustering", _kmeans, {"n_clusters": CLUSTER_COUNTS}),
    Candidate("minibatch_kmeans", "clustering", _minibatch_kmeans, {"n_clusters": CLUSTER_COUNTS}),
)


def candidates_for(task: str, names: tuple[str, ...] = ()) -> list[Candidate]:
    available = [c for c in CANDIDATES if c.task == task]
    if not names:
        return available
    known = {c.name for c in available}
    unknown = [n for n in names if n not in known]
    if unknown:
        from cloud.errors import DataError

        raise DataError(f"unknown {task} algorithm(s) {unknown}; choose from {sorted(known)}")
    return [c for c in available if c.name in names]


def build_pipeline(candidate: Candidate, schema: tuple[Feature, ...], seed: int) -> Any:
    """Preprocessing the ONNX graph carries: median imputation + scaling for numbers, one-hot for strings."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f.name for f in schema if f.type == "numeric"]
    strings = [f.name for f in schema if f.type == "string"]
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        if candidate.scale:
            steps.append(("scale", StandardScaler()))
        numeric_steps = Pipeline(steps)
        parts.append(("numeric", numeric_steps, numeric))
    if strings:
        parts.append(("strings", OneHotEncoder(handle_unknown="ignore", sparse_output=False), strings))
    return Pipeline([("prepare", ColumnTransformer(parts)), (ESTIMATOR_STEP, candidate.build(seed))])
