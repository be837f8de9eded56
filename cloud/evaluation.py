"""Holdout metrics per task, and which metric can select the best candidate (and in which direction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.candidates import ESTIMATOR_STEP


@dataclass(frozen=True)
class SelectionMetric:
    name: str
    higher_is_better: bool
    # scikit-learn scorer used in cross-validation; None for clustering (scored on the training fit).
    scorer: str | None


SELECTION_METRICS: dict[str, tuple[SelectionMetric, ...]] = {
    "classification": (
        SelectionMetric("f1_macro", True, "f1_macro"),
        SelectionMetric("accuracy", True, "accuracy"),
        SelectionMetric("precision_macro", True, "precision_macro"),
        SelectionMetric("recall_macro", True, "recall_macro"),
        SelectionMetric("roc_auc", True, "roc_auc_ovr"),
    ),
    "regression": (
        SelectionMetric("rmse", False, "neg_root_mean_squared_error"),
        SelectionMetric("mae", False, "neg_mean_absolute_error"),
        SelectionMetric("r2", True, "r2"),
    ),
    "clustering": (
        SelectionMetric("silhouette", True, None),
        SelectionMetric("davies_bouldin", False, None),
    ),
}


def selection_metric(task: str, name: str | None) -> SelectionMetric:
    from cloud.errors import DataError

    options = SELECTION_METRICS[task]
    if name is None:
        return options[0]
    for option in options:
        if option.name == name:
            return option
    raise DataError(f"cannot select a {task} model by {name!r}; choose from {[o.name for o in options]}")


def evaluate(task: str, pipeline: Any, x: Any, y: Any) -> dict[str, Any]:
    if task == "classification":
        return classification_metrics(pipeline, x, y)
    if task == "regression":
        return regression_metrics(pipeline, x, y)
    return clustering_metrics(pipeline, x)


def classification_metrics(pipeline: Any, x: Any, y: Any) -> dict[str, Any]:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    classes = list(pipeline.classes_)
    predicted = pipeline.predict(x)
    probabilities = pipeline.predict_proba(x)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=classes, zero_division=0)
    roc_auc: float | None
    try:
        if len(classes) == 2:
            roc_auc = float(roc_auc_score(y, probabilities[:, 1]))
        else:
            roc_auc = float(roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=classes))
    except ValueError:  # a class absent from the test split
        roc_auc = None
    return {
        "accuracy": _round(accuracy_score(y, predicted)),
        "precision_macro": _round(np.mean(precision)),
        "recall_macro": _round(np.mean(recall)),
        "f1_macro": _round(np.mean(f1)),
        "roc_auc": None if roc_auc is None else _round(roc_auc),
        "per_class": {
            str(label): {
                "precision": _round(p),
                "recall": _round(r),
                "f1": _round(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y, predicted, labels=classes).tolist(),
        "test_rows": len(y),
    }


def regression_metrics(pipeline: Any, x: Any, y: Any) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted = pipeline.predict(x)
    return {
        "rmse": _round(np.sqrt(mean_squared_error(y, predicted))),
        "mae": _round(mean_absolute_error(y, predicted)),
        "r2": _round(r2_score(y, predicted)),
        "test_rows": len(y),
    }


def clustering_metrics(pipeline: Any, x: Any) -> dict[str, Any]:
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    transformed = pipeline[:-1].transform(x)
    labels = pipeline[ESTIMATOR_STEP].predict(transformed)
    clusters = len(set(labels.tolist()))
    usable = 2 <= clusters <= len(labels) - 1
    return {
        "silhouette": _round(silhouette_score(transformed, labels)) if usable else None,
        "davies_bouldin": _round(davies_bouldin_score(transformed, labels)) if usable else None,
        "clusters": int(pipeline[ESTIMATOR_STEP].n_clusters),
        "test_rows": len(labels),
    }


def _round(value: Any) -> float:
    return round(float(value), 6)
