"""Train every candidate with a seeded, budgeted random search and cross-validation; evaluate on a holdout."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.candidates import ESTIMATOR_STEP, Candidate, build_pipeline, candidates_for
from cloud.data import Dataset
from cloud.errors import DataError
from cloud.evaluation import SelectionMetric, evaluate, selection_metric

MIN_FOLD_ROWS = 2


@dataclass(frozen=True)
class Budget:
    trials: int = 8  # parameter settings tried per candidate
    seconds: float | None = None  # wall-clock budget for the whole search (at least one trial each)
    cv: int = 3

    def __post_init__(self) -> None:
        if self.trials < 1 or self.cv < 2 or (self.seconds is not None and self.seconds <= 0):
            raise DataError("budget: trials >= 1, cv >= 2 and seconds > 0")


@dataclass(frozen=True)
class CandidateResult:
    name: str
    pipeline: Any
    params: dict[str, Any]
    cv_score: float  # mean cross-validated score of the selection metric (higher is better)
    metrics: dict[str, Any]  # holdout metrics
    trials: int
    seconds: float


@dataclass(frozen=True)
class TrainingRun:
    dataset: Dataset
    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    select_by: SelectionMetric
    results: list[CandidateResult] = field(default_factory=list)
    seed: int = 0

    @property
    def best(self) -> CandidateResult:
        return max(self.results, key=lambda r: r.cv_score)

    def _search_label(self) -> str:
        return search_label(self.dataset.task)

    def comparison(self) -> list[dict[str, Any]]:
        """One row per candidate, best first: the comparison table (console and JSON)."""
        best = self.best.name
        rows = []
        for result in sorted(self.results, key=lambda r: r.cv_score, reverse=True):
            scalars = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) or v is None}
            rows.append(
                {
                    "candidate": result.name,
                    "selected": result.name == best,
                    f"{self._search_label()}_{self.select_by.name}": _display_cv(result.cv_score, self.select_by),
                    **scalars,
                    "trials": result.trials,
                    "seconds": round(result.seconds, 3),
                    "params": {k: _jsonable(v) for k, v in result.params.items()},
                }
            )
        return rows


def search_label(task: str) -> str:
    """Prefix of the search score: supervised candidates are ranked by cross-validation, clusterings by
    their fit on the training split. ``cv_f1_macro`` is also what a sweep job's trials log and rank by."""
    return "train" if task == "clustering" else "cv"


def split(dataset: Dataset, test_size: float, seed: int) -> tuple[Any, Any, Any, Any]:
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise DataError("test size must be between 0 and 1")
    x = dataset.features
    if dataset.task == "clustering":
        x_train, x_test = train_test_split(x, test_size=test_size, random_state=seed)
        return x_train, x_test, None, None
    y = dataset.target
    stratify = None
    if dataset.task == "classification":
        counts = y.value_counts()
        if counts.min() < 2:
            raise DataError(f"class {counts.idxmin()!r} has a single row; every class needs at least 2")
        stratify = y
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_size, random_state=seed, stratify=stratify
        )
    except ValueError as error:  # e.g. a test split smaller than the number of classes
        raise DataError(f"cannot split {len(x)} rows into train and test: {error}") from error
    if len(x_train) < 2 * MIN_FOLD_ROWS:
        raise DataError(f"only {len(x_train)} training rows; cross-validation needs at least {2 * MIN_FOLD_ROWS}")
    return x_train, x_test, y_train, y_test


def train_candidates(
    dataset: Dataset,
    *,
    algorithms: tuple[str, ...] = (),
    budget: Budget | None = None,
    select_by: str | None = None,
    test_size: float = 0.25,
    seed: int = 0,
    progress: bool = False,
) -> TrainingRun:
    budget = budget or Budget()
    metric = selection_metric(dataset.task, select_by)
    candidates = candidates_for(dataset.task, algorithms)
    x_train, x_test, y_train, y_test = split(dataset, test_size, seed)
    if metric.name == "roc_auc" and y_train.nunique() == 2:
        metric = SelectionMetric(metric.name, True, "roc_auc")
    deadline = None if budget.seconds is None else time.monotonic() + budget.seconds
    results = []
    with _progress_bar(len(candidates) * budget.trials, progress) as bar:
        for index, candidate in enumerate(candidates):
            share = None
            if deadline is not None:
                share = time.monotonic() + max(0.0, deadline - time.monotonic()) / (len(candidates) - index)
            started = time.monotonic()
            pipeline, params, score, trials = _search(
                candidate, dataset, x_train, y_train, metric, budget, seed, share, bar
            )
            results.append(
                CandidateResult(
                    name=candidate.name,
                    pipeline=pipeline,
                    params=params,
                    cv_score=score,
                    metrics=evaluate(dataset.task, pipeline, x_test, y_test),
                    trials=trials,
                    seconds=time.monotonic() - started,
                )
            )
    return TrainingRun(dataset, x_train, x_test, y_train, y_test, metric, results, seed)


def _search(
    candidate: Candidate,
    dataset: Dataset,
    x: Any,
    y: Any,
    metric: SelectionMetric,
    budget: Budget,
    seed: int,
    deadline: float | None,
    bar: Any,
) -> tuple[Any, dict[str, Any], float, int]:
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    template = build_pipeline(candidate, dataset.schema, seed)
    # A small space is searched exhaustively (sampling more than it holds is pointless).
    trials = min(budget.trials, len(ParameterGrid(candidate.space)))
    settings = list(ParameterSampler(candidate.space, n_iter=trials, random_state=seed))
    best_score, best_params, tried = -np.inf, settings[0], 0
    for params in settings:
        if deadline is not None and tried > 0 and time.monotonic() > deadline:
            break
        pipeline = clone(template).set_params(**{f"{ESTIMATOR_STEP}__{k}": v for k, v in params.items()})
        score = _score(pipeline, dataset.task, x, y, metric, budget.cv, seed)
        tried += 1
        bar.update(1)
        if score > best_score:
            best_score, best_params = score, params
    bar.update(budget.trials - tried)
    final = clone(template).set_params(**{f"{ESTIMATOR_STEP}__{k}": v for k, v in best_params.items()})
    _fit(final, x, y)
    return final, best_params, float(best_score), tried


def _score(pipeline: Any, task: str, x: Any, y: Any, metric: SelectionMetric, cv: int, seed: int) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    if task == "clustering":
        _fit(pipeline, x, None)
        metrics = evaluate(task, pipeline, x, None)
        value = metrics[metric.name]
        if value is None:
            return -np.inf
        return float(value) if metric.higher_is_better else -float(value)
    if task == "classification":
        folds = min(cv, int(y.value_counts().min()))
        splitter: Any = StratifiedKFold(max(folds, 2), shuffle=True, random_state=seed)
    else:
        splitter = KFold(max(2, min(cv, len(x) // MIN_FOLD_ROWS)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Short searches stop MLPs early on purpose; the holdout metrics show the result.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipeline, x, y, scoring=metric.scorer, cv=splitter, error_score="raise")
    return float(np.mean(scores))


def _fit(pipeline: Any, x: Any, y: Any) -> None:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(x, y)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="search", unit="trial")


def _display_cv(score: float, metric: SelectionMetric) -> float | None:
    if not np.isfinite(score):
        return None
    value = score if metric.higher_is_better else -score
    return round(float(value), 6)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
