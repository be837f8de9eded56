"""End to end through ``python -m cloud train``: data -> candidates -> report -> ONNX -> parity -> registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from edge_module.model_contract import ModelMetadata

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--trials", "2", "--cv", "2", "--no-progress"]


def train(tmp_path: Path, *args: str) -> int:
    return main(["train", *args, "--registry", str(tmp_path / "registry"), *TINY])


def metadata_of(path: Path) -> ModelMetadata:
    model = onnx.load(str(path))
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def assert_profile(profile: dict[str, object], metadata: ModelMetadata, rows: int) -> None:
    assert profile["rows"] == rows
    features = profile["features"]
    assert isinstance(features, dict)
    assert set(features) == set(metadata.feature_names)
    for feature in metadata.features:
        entry = features[feature.name]
        assert entry["type"] == feature.type
        assert 0.0 <= entry["missing"] < 1.0
        if feature.type == "numeric":
            edges, proportions = entry["edges"], entry["proportions"]
            assert 2 <= len(edges) <= 11
            assert edges == sorted(edges) and len(set(edges)) == len(edges)
            assert len(proportions) == len(edges) - 1
            assert sum(proportions) == pytest.approx(1.0, abs=1e-5)
        else:
            assert sum(entry["categories"].values()) == pytest.approx(1.0, abs=1e-5)


def assert_report(out: Path, plots: set[str]) -> None:
    for name in ("report.md", "report.html", "comparison.json", "data.json", "parity.json", "model.onnx"):
        assert (out / name).is_file(), name
    for plot in {"comparison.png", *plots}:
        assert (out / plot).read_bytes().startswith(PNG), plot
        assert f"]({plot})" in (out / "report.md").read_text()
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    assert "<table>" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("dataset", "options", "task", "plots"),
    [
        (
            "sklearn:wine",
            ["--algorithm", "logistic_regression", "--algorithm", "random_forest", "--select-by", "accuracy"],
            "classification",
            {"confusion_matrix.png", "roc.png"},
        ),
        ("sklearn:diabetes", ["--algorithm", "ridge", "--algorithm", "random_forest"], "regression", {"residuals.png"}),
        ("sklearn:iris", ["--task", "clustering"], "clustering", {"clusters.png"}),
    ],
)
def test_sklearn_datasets_end_to_end(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dataset: str,
    options: list[str],
    task: str,
    plots: set[str],
) -> None:
    name = dataset.split(":")[1]
    out = tmp_path / "run"
    assert train(tmp_path, "--data", dataset, *options, "--out", str(out), "--promote") == 0
    printed = capsys.readouterr().out
    assert "| candidate | selected |" in printed
    assert "parity passed" in printed

    entry = LocalRegistry(tmp_path / "registry").get(name, alias="production")
    assert entry.version == "1"
    assert entry.local_path().read_bytes() == (out / "model.onnx").read_bytes()
    assert entry.tags["task"] == task
    assert entry.metadata["parity"]["passed"] is True
    comparison = json.loads((out / "comparison.json").read_text())
    assert sum(row["selected"] for row in comparison) == 1
    assert len(comparison) == 2
    assert_report(out, plots)

    metadata = metadata_of(entry.local_path())
    assert (metadata.name, metadata.version, metadata.task) == (name, "1", task)
    assert "target" not in metadata.feature_names  # the label never leaks in as a feature
    assert metadata.allow_missing is True
    assert metadata.libraries["scikit-learn"]
    assert_profile(
        metadata.profile,
        metadata,
        rows=json.loads((out / "data.json").read_text())["rows"] - int(comparison[0]["test_rows"]),
    )
    session = ort.InferenceSession(str(entry.local_path()), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(metadata.feature_names)
    assert all(i.shape == [None, 1] and i.type == "tensor(float)" for i in session.get_inputs())
    outputs = [o.name for o in session.get_outputs()]
    if task == "classification":
        assert outputs == ["label", "probabilities"]
        assert metadata.class_labels == (0, 1, 2)
        assert "accuracy" in metadata.metrics
    elif task == "regression":
        assert outputs == ["variable"]
        assert "rmse" in metadata.metrics
    else:
        assert outputs == ["label", "scores"]
        assert "silhouette" in metadata.metrics


def test_csv_with_strings_and_missing_values(
    tmp_path: Path, sensor_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--data", str(sensor_csv), "--target", "status", "--name", "sensors", "--out", str(out)]
    assert train(tmp_path, *args, "--algorithm", "logistic_regression", "--algorithm", "gradient_boosting") == 0
    data = json.loads((out / "data.json").read_text())
    assert data["dropped"] == {"device_id": "id-like (every value distinct)", "firmware": "constant"}
    assert data["column_types"] == {"temperature": "numeric", "vibration": "numeric", "site": "string"}
    assert data["missing_percent"]["temperature"] > 5
    assert set(data["class_balance"]) == {"fail", "ok"}
    assert_report(out, {"confusion_matrix.png", "roc.png"})

    entry = LocalRegistry(tmp_path / "registry").get("sensors")
    metadata = metadata_of(entry.local_path())
    assert [(f.name, f.type) for f in metadata.features] == [
        ("temperature", "numeric"),
        ("vibration", "numeric"),
        ("site", "string"),
    ]
    assert metadata.class_labels == ("fail", "ok")
    site = metadata.profile["features"]["site"]
    assert set(site["categories"]) == {"north", "south", "east"}
    assert site["missing"] > 0
    session = ort.InferenceSession(str(entry.local_path()), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("temperature", "tensor(float)"),
        ("vibration", "tensor(float)"),
        ("site", "tensor(string)"),
    ]
    # A row with a missing number and a missing (empty) category is legal input.
    label, probabilities = session.run(
        None,
        {
            "temperature": np.array([[np.nan]], np.float32),
            "vibration": np.array([[0.03]], np.float32),
            "site": np.array([[""]], object),
        },
    )
    assert label[0] in ("fail", "ok")
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)

    # A second run is a new immutable version, with its number inside the ONNX metadata too.
    capsys.readouterr()
    assert train(tmp_path, *args, "--algorithm", "logistic_regression") == 0
    second = LocalRegistry(tmp_path / "registry").get("sensors")
    assert second.version == "2"
    assert metadata_of(second.local_path()).version == "2"
    assert LocalRegistry(tmp_path / "registry").get("sensors", "1").sha256 == entry.sha256


def test_parity_failure_registers_nothing_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # float32 ONNX and float64 scikit-learn differ by ~1e-5 on diabetes; a zero tolerance must fail the gate.
    out = tmp_path / "run"
    code = train(
        tmp_path, "--data", "sklearn:diabetes", "--algorithm", "ridge", "--parity-tolerance", "0", "--out", str(out)
    )
    assert code == 3
    assert "parity FAILED" in capsys.readouterr().err
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is False and parity["max_abs_diff"] > 0
    assert "FAILED" in (out / "report.md").read_text()
    assert LocalRegistry(tmp_path / "registry").list() == []


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", ["--target", "y"], "empty"),
        ("a,b\n1,2\n3,4\n", ["--target", "nope"], "target column 'nope' not in the data"),
        ("a,b,y\n1,2,x\n3,4,x\n5,1,x\n", ["--target", "y"], "single class"),
        ("a,y\n1,u\n1,v\n1,v\n", ["--target", "y"], "no usable feature columns"),
    ],
)
def test_bad_data_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, args: list[str], message: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content)
    assert train(tmp_path, "--data", str(path), *args) == 1
    assert message in capsys.readouterr().err


def test_unknown_selection_metric_and_algorithm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path, "--data", "sklearn:iris", "--select-by", "rmse") == 1
    assert "cannot select a classification model by 'rmse'" in capsys.readouterr().err
    assert train(tmp_path, "--data", "sklearn:iris", "--algorithm", "xgboost") == 1
    assert "unknown classification algorithm" in capsys.readouterr().err


def test_evaluate_scores_a_registered_model_with_onnxruntime(
    tmp_path: Path, sensor_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cloud.conftest import write_sensor_csv

    args = ["--data", str(sensor_csv), "--target", "status", "--name", "sensors", "--out", str(tmp_path / "run")]
    assert train(tmp_path, *args, "--algorithm", "logistic_regression") == 0
    trained = json.loads((tmp_path / "run" / "comparison.json").read_text())[0]
    capsys.readouterr()

    fresh = write_sensor_csv(tmp_path / "fresh.csv", rows=300, seed=1)
    registry = ["--registry", str(tmp_path / "registry")]
    assert main(["evaluate", "sensors", "--data", str(fresh), "--target", "status", *registry]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["model"], result["version"], result["rows"]) == ("sensors", "1", 300)
    assert result["class_labels"] == ["fail", "ok"]
    assert sum(map(sum, result["confusion_matrix"])) == 300
    assert abs(result["accuracy"] - trained["accuracy"]) < 0.15  # same process, fresh sample

    assert main(["evaluate", "sensors", "--data", "sklearn:iris", *registry]) == 1
    assert "lacks the model's feature columns" in capsys.readouterr().err


def test_evaluate_a_regressor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path, "--data", "sklearn:diabetes", "--algorithm", "ridge", "--out", str(tmp_path / "run")) == 0
    capsys.readouterr()
    registry = ["--registry", str(tmp_path / "registry")]
    assert main(["evaluate", "diabetes", "--version", "1", "--data", "sklearn:diabetes", *registry]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 442 and 30 < result["rmse"] < 80 and 0 < result["r2"] < 1


def test_retraining_on_the_same_data_registers_nothing_and_new_data_gets_the_next_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cloud.conftest import write_sensor_csv

    data_a = write_sensor_csv(tmp_path / "a.csv", seed=0)
    data_b = write_sensor_csv(tmp_path / "b.csv", seed=1)
    common = ["--target", "status", "--name", "sensors", "--algorithm", "logistic_regression", "--algorithm", "mlp"]

    def run(data: Path, out: str) -> str:
        capsys.readouterr()
        assert train(tmp_path, "--data", str(data), *common, "--out", str(tmp_path / out), "--promote") == 0
        return capsys.readouterr().out

    registry = LocalRegistry(tmp_path / "registry")
    assert "registered sensors version 1 " in run(data_a, "run-1")
    # Same data, code and settings: byte-identical ONNX (seeded search, no clocks or run ids in the file).
    assert "unchanged: sensors version 1\n" in run(data_a, "run-2")
    assert (tmp_path / "run-2" / "model.onnx").read_bytes() == registry.get("sensors", "1").local_path().read_bytes()
    assert [e.version for e in registry.list("sensors")] == ["1"]
    assert registry.get("sensors", alias="production").version == "1"

    assert "registered sensors version 2 " in run(data_b, "run-3")
    assert metadata_of(registry.get("sensors").local_path()).version == "2"
    # Data A again after B differs from the latest version: a new version, never a reused number.
    assert "registered sensors version 3 " in run(data_a, "run-4")
    assert [e.version for e in registry.list("sensors")] == ["1", "2", "3"]
    assert registry.get("sensors", alias="production").version == "3"
    lineage = registry.get("sensors", "3").metadata["lineage"]
    assert lineage["dataset"] == str(data_a) and lineage["training"]["seed"] == 0


def test_the_opset_domains_are_written_in_one_order_whatever_order_the_converter_gives() -> None:
    """skl2onnx lists opset domains in an order that varies between processes; the bytes must not."""
    from cloud.export import with_metadata
    from tests.support.models import iris_classifier

    model = onnx.load_from_string(iris_classifier().onnx)
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert len({entry.domain for entry in model.opset_import}) >= 2
    reversed_order = onnx.ModelProto()
    reversed_order.CopyFrom(model)
    entries = [(entry.domain, entry.version) for entry in model.opset_import][::-1]
    del reversed_order.opset_import[:]
    for domain, version in entries:
        added = reversed_order.opset_import.add()
        added.domain, added.version = domain, version
    assert reversed_order.SerializeToString() != model.SerializeToString()
    assert with_metadata(reversed_order, metadata) == with_metadata(model, metadata)
