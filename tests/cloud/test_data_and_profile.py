from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloud import workflow
from cloud.data import infer_task, load_dataset, prepare
from cloud.errors import DataError
from cloud.profile import numeric_profile, string_profile
from cloud.registry import LocalRegistry
from cloud.training import Budget


def test_cleaning_types_missing_values_and_dropped_columns(sensor_csv: Path) -> None:
    dataset = load_dataset(str(sensor_csv), target="status")
    frame = dataset.features
    assert dataset.task == "classification"
    assert list(frame.columns) == ["temperature", "vibration", "site"]
    assert frame["temperature"].dtype == np.float32 and frame["temperature"].isna().sum() > 0
    assert frame["site"].map(type).eq(str).all() and (frame["site"] == "").sum() > 0
    assert dataset.report.dropped == {"device_id": "id-like (every value distinct)", "firmware": "constant"}
    assert dataset.target.map(type).eq(str).all()


def test_parquet_source_and_requested_drops(tmp_path: Path, sensor_csv: Path) -> None:
    path = tmp_path / "sensors.parquet"
    pd.read_csv(sensor_csv).to_parquet(path)
    dataset = load_dataset(str(path), target="status", drop=("vibration",))
    assert [f.name for f in dataset.schema] == ["temperature", "site"]
    assert dataset.report.dropped["vibration"] == "requested"


def test_task_inference() -> None:
    assert infer_task(pd.Series(["a", "b"] * 10)) == "classification"
    assert infer_task(pd.Series([0, 1, 2] * 20)) == "classification"
    assert infer_task(pd.Series(np.linspace(0, 1, 60))) == "regression"
    clustering = load_dataset("sklearn:iris", task="clustering")
    assert clustering.target is None
    assert "target" not in clustering.features.columns and len(clustering.schema) == 4


@pytest.mark.parametrize(
    ("frame", "target", "message"),
    [
        (pd.DataFrame(), "y", "no rows"),
        (pd.DataFrame({"x": [1.0, 2.0], "y": [np.nan, np.nan]}), "y", "has no values"),
        (pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": ["a", "b", "c"]}), None, None),
    ],
)
def test_prepare_errors(frame: pd.DataFrame, target: str | None, message: str | None) -> None:
    if message is None:
        assert prepare(frame, target=target).task == "clustering"
        return
    with pytest.raises(DataError, match=message):
        prepare(frame, target=target)


def test_unknown_sklearn_dataset_and_missing_file() -> None:
    with pytest.raises(DataError, match="unknown scikit-learn dataset"):
        load_dataset("sklearn:nope")
    with pytest.raises(DataError, match="no such data file"):
        load_dataset("/nonexistent/data.csv", target="y")


def test_numeric_profile_has_quantile_edges_and_proportions() -> None:
    values = np.arange(1000, dtype=np.float64)
    values[::10] = np.nan
    profile = numeric_profile(values)
    assert len(profile["edges"]) == 11
    assert profile["edges"][0] == 1.0 and profile["edges"][-1] == 999.0
    assert profile["proportions"] == pytest.approx([0.1] * 10, abs=0.002)
    assert profile["missing"] == pytest.approx(0.1)


def test_numeric_profile_merges_repeated_edges() -> None:
    values = np.array([5.0] * 95 + [6.0, 7.0, 8.0, 9.0, 10.0])
    profile = numeric_profile(values)
    assert profile["edges"] == [5.0, 10.0]  # the 0%..90% quantiles are all 5
    assert profile["proportions"] == [1.0]  # one bin [5, 10], closed on the right


def test_string_profile() -> None:
    profile = string_profile(["a", "a", "b", ""])
    assert profile == {"type": "string", "categories": {"a": 0.666667, "b": 0.333333}, "missing": 0.25}


def test_same_seed_same_model_bytes() -> None:
    dataset = load_dataset("sklearn:wine")
    exported = [
        workflow.export(workflow.train(dataset, algorithms=("random_forest",), trials=2, cv=2, seed=7), "wine", "1")
        for _ in range(2)
    ]
    assert exported[0].onnx == exported[1].onnx
    assert exported[0].params == exported[1].params


def test_time_budget_stops_the_search_after_one_trial_each() -> None:
    dataset = load_dataset("sklearn:wine")
    run = workflow.train(dataset, algorithms=("logistic_regression", "random_forest"), trials=50, seconds=1e-6)
    assert [r.trials for r in run.results] == [1, 1]
    with pytest.raises(DataError):
        Budget(trials=0)


def test_parity_counts_label_mismatches() -> None:
    from sklearn.base import clone

    from cloud.errors import ParityError
    from cloud.parity import check_parity

    dataset = load_dataset("sklearn:wine")
    run = workflow.train(dataset, algorithms=("logistic_regression",), trials=1, cv=2)
    model = workflow.export(run, "wine", "1")
    assert model.parity.passed and model.parity.label_mismatches == 0
    # The same pipeline trained on relabelled classes: every label differs, probabilities are permuted.
    relabelled = clone(run.best.pipeline).fit(run.x_train, (run.y_train + 1) % 3)
    report = check_parity(model.onnx, relabelled, "classification", run.x_test, dataset.schema)
    assert not report.passed
    assert report.label_mismatches == len(run.x_test)
    failed = workflow.ExportedModel("wine", model.onnx, model.metadata, report, model.algorithm, model.params)
    with pytest.raises(ParityError):
        workflow.register(failed, LocalRegistry(Path("/nonexistent/never-written")))


def test_data_command_prints_the_report(sensor_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cloud.__main__ import main

    assert main(["data", "--data", str(sensor_csv), "--target", "status"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 240 and report["task"] == "classification"
    assert report["column_types"] == {"temperature": "numeric", "vibration": "numeric", "site": "string"}
    assert main(["data", "--data", str(sensor_csv), "--target", "nope"]) == 1
    assert "target column 'nope' not in the data" in capsys.readouterr().err


def test_too_few_rows_to_split_is_a_clear_error() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": ["a", "a", "b", "b", "c", "c"]})
    with pytest.raises(DataError, match="cannot split 6 rows"):
        workflow.train(prepare(frame, target="y"), algorithms=("logistic_regression",), trials=1)
