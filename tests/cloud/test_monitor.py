"""``cloud monitor`` on captured records in the module's format, stored as IoT Hub routing stores them (Avro and
JSON) and as the module's own segment files: drift per device x version x window, bad input, labels."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.__main__ import main
from cloud.registry import LocalRegistry
from edge_module.drift import DriftMonitor
from edge_module.runtime import OnnxModel, SessionConfig
from tests.support.data_loop import (
    SHIFTED,
    records_for,
    register_cancer,
    segments,
    shifted,
    trained_cancer,
    write_labels,
)
from tests.support.iothub_routing import avro_blob, json_blob, routed

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(hours=1)


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    registry = LocalRegistry(tmp_path / "registry")
    register_cancer(registry)
    return registry


def write_routed(folder: Path, records: list[dict[str, Any]], encoding: str, name: str) -> Path:
    messages = [routed(m, records[0]["deviceId"], "edge-inference") for m in segments(records)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{encoding}"
    path.write_bytes(avro_blob(messages) if encoding == "avro" else json_blob(messages))
    return path


def run_monitor(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["monitor", "cancer", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def scenario(folder: Path) -> None:
    """One device, an hour of in-distribution rows (Avro), an hour with two features shifted (JSON), and the
    same device's segment file copied off the ring (duplicates of the Avro rows: dropped)."""
    x = trained_cancer().x_test
    calm = records_for(x, start=T0, prefix="calm", per_request=3)
    moved = records_for(shifted(x), start=T1, prefix="moved")
    write_routed(folder / "iothub/00/2026/12/04/10", calm, "avro", "00")
    write_routed(folder / "iothub/00/2026/12/04/11", moved, "json", "00")
    (folder / "ring").mkdir()
    (folder / "ring" / "capture-000000000001.jsonl").write_bytes(segments(calm)[0].body)


def test_exit_10_names_exactly_the_shifted_features_and_the_calm_hour_alone_is_healthy(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario(tmp_path / "capture")
    common = ["--capture", str(tmp_path / "capture"), "--registry", str(registry.root), "--out", str(tmp_path / "r")]
    code, summary, err = run_monitor(common, capsys)
    assert code == 10, err
    assert summary["driftedFeatures"] == sorted(SHIFTED) and summary["driftedDevices"] == ["line-1"]
    (signal,) = summary["signals"]
    assert signal == {"kind": "drift", "deviceId": "line-1", "version": "1", "window": "2026-12-04T11:00:00Z",
                      "features": sorted(SHIFTED)}  # fmt: skip
    calm, moved = summary["groups"]
    assert (calm["window"], calm["rows"], calm["drifted"]) == ("2026-12-04T10:00:00Z", 143, [])
    assert moved["rows"] == 143 and calm["psiMax"] < 0.2
    assert summary["capture"]["read"]["skipped"]["duplicateRecords"] == 50  # the ring copy of a routed segment
    assert "drift: features mean texture, worst smoothness on devices line-1" in err
    for name in ("report.md", "report.html", "summary.json", "psi-v1.png", "groups.png"):
        assert (tmp_path / "r" / name).is_file()
    assert "worst smoothness" in (tmp_path / "r" / "report.md").read_text()

    code, summary, err = run_monitor([*common, "--until", "2026-12-04T11:00:00Z"], capsys)
    assert code == 0, err
    assert summary["status"] == "healthy" and summary["signals"] == [] and summary["capture"]["records"] == 143


def test_edge_and_cloud_psi_are_the_same_numbers_on_the_same_rows(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = trained_cancer()
    rows = shifted(trained.x_test)
    model = OnnxModel("cancer", "1", "0" * 64, trained.onnx, SessionConfig())
    edge = DriftMonitor(window=1000, min_rows=1)
    for start in range(0, len(rows), 7):
        part = rows.iloc[start : start + 7]
        inputs = {name: part[name].to_numpy(dtype=np.float32).reshape(-1, 1) for name in trained.features}
        edge.observe(model, inputs, model.run(inputs), 0, 0, 0)
    edge_psi = {name: scores["psi"] for name, scores in edge.summaries()["cancer"]["features"].items()}

    write_routed(tmp_path / "capture", records_for(rows, start=T0), "avro", "rows")
    code, summary, err = run_monitor(["--capture", str(tmp_path / "capture"), "--registry", str(registry.root),
                                      "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 10, err
    cloud_psi = {name: scores["psi"] for name, scores in summary["versions"]["1"]["drift"].items()}
    assert len(edge_psi) == 30 and cloud_psi == edge_psi
    assert max(edge_psi, key=lambda f: edge_psi[f]) in SHIFTED


def test_corrupt_avro_blocks_and_json_lines_are_skipped_and_counted(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    x = trained_cancer().x_test
    records = records_for(x, start=T0)
    folder = tmp_path / "capture"
    avro = write_routed(folder, records[:100], "avro", "a")  # two messages (50 records each), one block each
    data = bytearray(avro.read_bytes())
    marker = data[-16:]  # the sync marker ends the file
    second_block = data.index(marker, data.index(marker) + 16) + 16  # the first block ends in the second marker
    data[second_block : second_block + 2] = b"\xff\xff"  # the block's record count and size: garbage
    avro.write_bytes(bytes(data))
    path = write_routed(folder, records[100:], "json", "j")
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0][:40], b"{not json", *lines[1:]]) + b"\n")
    (folder / "garbage.avro").write_bytes(b"Obj\x01" + b"\x00" * 7)

    code, summary, err = run_monitor(["--capture", str(folder), "--registry", str(registry.root),
                                      "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 0, err
    skipped = summary["capture"]["read"]["skipped"]
    assert skipped["corruptFiles"] == 1 and skipped["corruptAvroBlocks"] >= 1 and skipped["corruptLines"] == 2
    assert summary["capture"]["records"] == 50  # the intact Avro message; the JSON file's only message was cut
    assert "corrupt Avro block skipped" in (tmp_path / "r" / "report.md").read_text()


def test_capture_of_another_model_is_counted_and_alone_is_an_error(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    x = trained_cancer().x_test
    folder = tmp_path / "capture"
    write_routed(folder, records_for(x, model="wine", start=T0), "avro", "wine")
    args = ["--capture", str(folder), "--registry", str(registry.root), "--out", str(tmp_path / "r")]
    code, _, err = run_monitor(args, capsys)
    assert code == 1 and "no capture records of model 'cancer'" in err and "wine (143)" in err
    write_routed(folder, records_for(x, start=T0), "json", "cancer")
    code, summary, err = run_monitor(args, capsys)
    assert code == 0, err
    assert summary["capture"]["otherModels"] == {"wine": 143} and summary["capture"]["records"] == 143


def test_an_empty_window_is_an_error_with_a_clear_message(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    write_routed(tmp_path / "capture", records_for(trained_cancer().x_test, start=T0), "avro", "a")
    args = ["--capture", str(tmp_path / "capture"), "--registry", str(registry.root), "--since", "2026-12-05T00:00Z"]
    code, summary, err = run_monitor(args, capsys)
    assert code == 1 and summary == {}
    assert "no capture records of cancer between 2026-12-05T00:00:00Z and now (143 records" in err


def test_a_capture_schema_that_does_not_match_the_features_names_them(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    records = records_for(trained_cancer().x_test, start=T0)
    for record in records:
        record["inputs"]["mean_radius"] = record["inputs"].pop("mean radius")
    write_routed(tmp_path / "capture", records, "avro", "a")
    code, _, err = run_monitor(["--capture", str(tmp_path / "capture"), "--registry", str(registry.root)], capsys)
    assert code == 1
    assert "missing features ['mean radius']" in err and "unexpected inputs ['mean_radius']" in err


def test_labels_join_count_unknown_ids_and_a_metric_drop_recommends_retraining(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = trained_cancer()
    records = records_for(trained.x_test, start=T0, per_request=2)
    write_routed(tmp_path / "capture", records, "avro", "a")
    truth = list(trained.y_test)
    labels = write_labels(tmp_path / "labels.csv", records, truth)
    with labels.open("a") as handle:
        handle.write("never-seen,0,1\nnever-seen,1,0\n")
    args = ["--capture", str(tmp_path / "capture"), "--registry", str(registry.root), "--out", str(tmp_path / "r")]
    code, summary, err = run_monitor([*args, "--labels", str(labels)], capsys)
    assert code == 0, err
    assert summary["labels"]["matched"] == 143 and summary["labels"]["unknownIds"] == 2
    live = summary["versions"]["1"]["live"]
    assert live["accuracy"] == summary["versions"]["1"]["registered"]["accuracy"]  # the same rows it was scored on

    flipped = write_labels(tmp_path / "flipped.csv", records, [1 - int(v) for v in truth])
    code, summary, err = run_monitor([*args, "--labels", str(flipped)], capsys)
    assert code == 10
    metrics = {s["metric"] for s in summary["metricSignals"]}
    assert metrics == {"accuracy", "f1_macro"} and summary["driftedFeatures"] == []
    assert "metric: version 1 accuracy" in err

    # Without a row column, labels join on the correlation id alone: only single-row requests are unambiguous.
    by_id = write_labels(tmp_path / "by-id.csv", records, truth, by_row=False)
    code, summary, err = run_monitor([*args, "--labels", str(by_id)], capsys)
    assert code == 0 and summary["labels"]["matched"] == 1 and summary["labels"]["ambiguous"] == 71


def test_train_data_from_a_capture_folder_reads_the_record_format_and_the_old_lines(tmp_path: Path) -> None:
    from cloud.data import read_table

    records = records_for(trained_cancer().x_test, start=T0)
    folder = tmp_path / "capture"
    write_routed(folder, records[:100], "avro", "routed")
    (folder / "capture-000000000001.jsonl").write_bytes(segments(records[100:])[0].body)
    (folder / "old.jsonl").write_text('{"_model": "cancer", "_version": "1", "_time": "2026-01-01T00:00:00Z", '
                                      '"mean radius": 14.0, "prediction": 1}\n')  # fmt: skip
    frame = read_table(str(folder))
    assert len(frame) == 144 and "prediction" in frame.columns and "correlationId" not in frame.columns
    # Files in name order: the segment file, the old lines, the routed blob.
    labels = [r["outputs"]["label"] for r in records]
    assert frame["prediction"].tolist() == [*labels[100:], 1, *labels[:100]]
    assert frame.loc[43, "mean radius"] == 14.0


def test_drift_is_named_per_device_and_version(
    tmp_path: Path, registry: LocalRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    x = trained_cancer().x_test
    folder = tmp_path / "capture"
    write_routed(folder, records_for(x, start=T0, device="line-1", prefix="a"), "avro", "a")
    write_routed(folder, records_for(shifted(x), start=T0, device="line-2", prefix="b"), "json", "b")
    code, summary, err = run_monitor(["--capture", str(folder), "--registry", str(registry.root),
                                      "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 10, err
    assert summary["driftedDevices"] == ["line-2"] and summary["driftedFeatures"] == sorted(SHIFTED)
    by_device = {g["deviceId"]: g for g in summary["groups"]}
    assert by_device["line-1"]["drifted"] == [] and by_device["line-2"]["drifted"] == sorted(SHIFTED)
    assert summary["versions"]["1"]["rows"] == 286


def test_a_regressor_is_monitored_by_rmse_and_mae_and_its_predicted_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud import workflow

    dataset = workflow.load_data("sklearn:diabetes")
    run = workflow.train(dataset, algorithms=("ridge",), trials=1, cv=2)
    registry = LocalRegistry(tmp_path / "registry")
    entry = workflow.register(workflow.export(run, "cancer", "1"), registry).entry  # the name the helpers use
    x, y = run.x_test, list(run.y_test)
    import onnxruntime as ort

    session = ort.InferenceSession(registry.get("cancer").local_path().read_bytes(), providers=["CPUExecutionProvider"])
    (values,) = session.run(None, {n: x[n].to_numpy(dtype=np.float32).reshape(-1, 1) for n in x.columns})
    records = [
        {"correlationId": f"r{i}", "row": 0, "deviceId": "pump-1", "model": "cancer", "version": "1",
         "time": "2026-12-04T10:00:00.000Z", "inputs": {n: float(x.iloc[i][n]) for n in x.columns},
         "outputs": {"variable": float(values[i][0])}}
        for i in range(len(x))
    ]  # fmt: skip
    write_routed(tmp_path / "capture", records, "avro", "a")
    # 111 rows: too few to judge drift (noise alone puts a feature's PSI near 0.2); metrics are the point here.
    args = ["--capture", str(tmp_path / "capture"), "--registry", str(registry.root), "--min-rows", "1000",
            "--min-labels", "20", "--out", str(tmp_path / "r")]  # fmt: skip
    labels = write_labels(tmp_path / "labels.csv", records, y)
    code, summary, err = run_monitor([*args, "--labels", str(labels)], capsys)
    assert code == 0, err
    block = summary["versions"]["1"]
    assert block["live"]["rmse"] == pytest.approx(entry.metrics["rmse"], rel=1e-4)
    assert block["predictions"]["output"] == "variable" and block["predictions"]["psi"] is not None
    worse = write_labels(tmp_path / "worse.csv", records, [v + 60.0 for v in y])
    code, summary, err = run_monitor([*args, "--labels", str(worse)], capsys)
    assert code == 10 and {s["metric"] for s in summary["metricSignals"]} == {"rmse", "mae"}
