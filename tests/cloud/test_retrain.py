"""``cloud retrain``: a challenger from the original data plus labelled production rows, promoted only when it beats
the champion on the newest rows; lineage in the registry; nothing promoted by accident."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from tests.support.data_loop import records_for, register_cancer, segments, shifted, trained_cancer, write_labels
from tests.support.iothub_routing import avro_blob, routed

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)
SEARCH = ["--algorithm", "random_forest", "--trials", "2", "--cv", "2"]


def new_concept(rows: Any) -> list[int]:
    """After the change, the outcome follows the tumour's size the other way round: a label no model of the
    old data predicts."""
    radius = rows["mean radius"].to_numpy()
    return [int(v) for v in radius > np.median(radius)]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    registry = LocalRegistry(tmp_path / "registry")
    champion = register_cancer(registry)
    production = shifted(trained_cancer().frame.drop(columns="target"))
    records = records_for(production, start=T0, per_request=4)
    folder = tmp_path / "capture"
    folder.mkdir()
    messages = [routed(m, "line-1", "edge-inference") for m in segments(records)]
    (folder / "00.avro").write_bytes(avro_blob(messages))
    return {"registry": registry, "champion": champion, "records": records, "production": production,
            "capture": folder}  # fmt: skip


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def command(setup: dict[str, Any], labels: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["retrain", "cancer", "--data", "sklearn:breast_cancer", "--capture", str(setup["capture"]),
            "--labels", str(labels), "--registry", str(setup["registry"].root), "--out", str(tmp_path / "retrain"),
            "--json", *SEARCH, *extra]  # fmt: skip


def test_labels_of_a_changed_concept_make_a_better_challenger_that_is_promoted_with_its_lineage(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = write_labels(tmp_path / "labels.csv", setup["records"], new_concept(setup["production"]))
    monitor_report = tmp_path / "summary.json"
    monitor_report.write_text(json.dumps({"status": "retrain recommended", "driftedFeatures": ["mean texture"]}))
    code, summary, err = run(command(setup, labels, tmp_path, "--monitor-report", str(monitor_report)), capsys)
    assert code == 0, err
    champion, challenger = summary["champion"]["scores"], summary["challenger"]["scores"]
    assert challenger["f1_macro"] >= champion["f1_macro"] + 0.01 and challenger["rows"] == champion["rows"] == 114
    registry: LocalRegistry = setup["registry"]
    entry = registry.get("cancer", alias="production")
    assert entry.version == "2" and summary["decision"] == "promoted: production -> version 2"
    lineage = entry.metadata["lineage"]
    assert lineage["parent"] == {"name": "cancer", "version": "1", "sha256": setup["champion"].sha256}
    roles = {d["role"]: d for d in lineage["data"]}
    assert roles["labels"]["sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert len(roles["capture"]["sha256"]) == 64 and roles["original"]["source"] == "sklearn:breast_cancer"
    assert lineage["monitorReport"]["status"] == "retrain recommended"
    assert lineage["productionRows"] == {"training": 455, "holdout": 114}
    report = (tmp_path / "retrain" / "report.md").read_text()
    assert "| f1_macro |" in report and "champion (version 1)" in report and "challenger (version 2)" in report
    assert (tmp_path / "retrain" / "challenger" / "report.md").is_file()


def test_labels_of_the_old_concept_are_not_better_and_nothing_is_promoted(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The world still behaves as the champion says: its own outputs are the ground truth.
    labels = write_labels(tmp_path / "labels.csv", setup["records"], [r["outputs"]["label"] for r in setup["records"]])
    code, summary, err = run(command(setup, labels, tmp_path), capsys)
    assert code == 11, err
    assert summary["champion"]["scores"]["f1_macro"] == 1.0
    registry: LocalRegistry = setup["registry"]
    assert [e.version for e in registry.list("cancer")] == ["1"]
    assert registry.get("cancer", alias="production").version == "1"

    code, summary, err = run(command(setup, labels, tmp_path, "--register-anyway"), capsys)
    assert code == 11 and "registered as version 2, not promoted" in summary["decision"]
    assert [e.version for e in registry.list("cancer")] == ["1", "2"]
    assert registry.get("cancer", alias="production").version == "1"


def test_a_parity_failure_exits_3_and_registers_nothing(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = write_labels(tmp_path / "labels.csv", setup["records"], new_concept(setup["production"]))
    code, _, err = run(command(setup, labels, tmp_path, "--parity-tolerance=-1"), capsys)
    assert code == 3 and "parity FAILED" in err and "not registered" in err
    assert [e.version for e in setup["registry"].list("cancer")] == ["1"]


def test_bad_labels_are_clear_errors(setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("correlationId,row,label\nnobody,0,1\n")
    code, _, err = run(command(setup, unknown, tmp_path), capsys)
    assert code == 1 and "no captured row of cancer has a label" in err and "1 labels with unknown ids" in err
    headless = tmp_path / "headless.csv"
    headless.write_text("id_of_something,label\nx,1\n")
    code, _, err = run(command(setup, headless, tmp_path), capsys)
    assert code == 1 and "no correlation id column" in err


def test_holdout_since_selects_the_recent_rows_and_an_empty_holdout_is_an_error(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = write_labels(tmp_path / "labels.csv", setup["records"], new_concept(setup["production"]))
    code, _, err = run(command(setup, labels, tmp_path, "--holdout-since", "2026-12-05T00:00:00Z"), capsys)
    assert code == 1 and "no labelled production rows in the holdout window" in err
    # Requests are one second apart from T0, four rows each: 100 s in, requests 100..142 (rows 400..568) remain.
    code, summary, err = run(command(setup, labels, tmp_path, "--holdout-since", "2026-12-04T10:01:40Z"), capsys)
    assert code == 0, err
    assert summary["lineage"]["productionRows"] == {"training": 400, "holdout": 169}
    assert summary["lineage"]["holdout"]["rule"] == "since 2026-12-04T10:01:40+00:00"


def test_a_regressor_is_compared_by_rmse_lower_is_better(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    from cloud import workflow
    from tests.support.iothub_routing import json_blob

    dataset = workflow.load_data("sklearn:diabetes")
    run_ = workflow.train(dataset, algorithms=("ridge",), trials=1, cv=2)
    registry = LocalRegistry(tmp_path / "registry")
    registry.promote("sugar", workflow.register(workflow.export(run_, "sugar", "1"), registry).entry.version)
    x = dataset.features
    session = ort.InferenceSession(registry.get("sugar").local_path().read_bytes(), providers=["CPUExecutionProvider"])
    (values,) = session.run(None, {n: x[n].to_numpy(dtype=np.float32).reshape(-1, 1) for n in x.columns})
    records = [
        {"correlationId": f"r{i}", "row": 0, "deviceId": "pump-1", "model": "sugar", "version": "1",
         "time": f"2026-12-04T10:{i // 60:02d}:{i % 60:02d}.000Z",
         "inputs": {n: float(x.iloc[i][n]) for n in x.columns}, "outputs": {"variable": float(values[i][0])}}
        for i in range(len(x))
    ]  # fmt: skip
    folder = tmp_path / "capture"
    folder.mkdir()
    messages = [routed(m, "pump-1", "edge-inference") for m in segments(records)]
    (folder / "00.json").write_bytes(json_blob(messages))
    # The outcome moved: a new treatment takes 80 off the progression of patients with a high s5.
    high = (x["s5"] > x["s5"].median()).to_numpy()
    changed = write_labels(tmp_path / "changed.csv", records, list(dataset.target - 80.0 * high))
    args = ["retrain", "sugar", "--data", "sklearn:diabetes", "--capture", str(folder), "--registry",
            str(registry.root), "--out", str(tmp_path / "out"), "--json", "--algorithm", "random_forest",
            "--trials", "1", "--cv", "2", "--min-improvement", "5"]  # fmt: skip
    code, summary, err = run([*args, "--labels", str(changed)], capsys)
    assert code == 0, err
    assert summary["metric"] == "rmse" and summary["higherIsBetter"] is False
    champion, challenger = summary["champion"]["scores"]["rmse"], summary["challenger"]["scores"]["rmse"]
    assert challenger <= champion - 5 and summary["improvement"] == pytest.approx(champion - challenger, abs=1e-5)
    assert registry.get("sugar", alias="production").version == "2"
