"""The mirror and its worker process, with real onnxruntime sessions of real scikit-learn models."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from edge_module.capture import CaptureRing, DataCapture
from edge_module.runtime import OnnxModel, SessionConfig
from edge_module.shadow.mirror import ShadowFailed, ShadowMirror
from edge_module.shadow.stats import ShadowStats
from tests.support.models import TrainedModel, diabetes_regressor, iris_classifier


def _model(name: str, data: bytes) -> OnnxModel:
    return OnnxModel(name, None, hashlib.sha256(data).hexdigest(), data, SessionConfig())


def _file(tmp_path: Path, trained: TrainedModel, version: str) -> tuple[str, str]:
    path = tmp_path / f"{version}.onnx"
    path.write_bytes(trained.onnx)
    return hashlib.sha256(trained.onnx).hexdigest(), str(path)


def _wait(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _figures(mirror: ShadowMirror, name: str = "iris") -> dict[str, Any]:
    report = mirror.report(name)
    assert report is not None
    return report


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_agreement_and_differences_match_sklearn_row_by_row(tmp_path: Path) -> None:
    active, candidate = iris_classifier("1"), iris_classifier("2", n_estimators=1)
    v1 = _model("iris", active.onnx)
    mirror = ShadowMirror()
    sha256, path = _file(tmp_path, candidate, "2")
    inputs_spec = asyncio.run(mirror.install("iris", "2", sha256, path))
    assert inputs_spec == [spec.as_dict() for spec in v1.inputs]
    assert mirror.priority == "SCHED_IDLE"  # Linux: the worker only takes CPU time nothing else wants
    rows = active.x_test
    for row in rows:
        inputs = {"input": row[np.newaxis, :]}
        mirror.observe(v1, inputs, v1.run(inputs), 0, 1000, 2_000_000, "c")
    report = _wait(lambda: _figures(mirror).get("compared") == len(rows) and _figures(mirror))
    assert report["mirrored"] == len(rows) and report["dropped"] == 0 and report["errors"] == 0
    expected = float(np.mean(active.estimator.predict(rows) == candidate.estimator.predict(rows)))
    assert 0.5 < expected < 1.0
    assert report["agreement"] == pytest.approx(expected, abs=1e-9)
    diffs = np.abs(active.estimator.predict_proba(rows) - candidate.estimator.predict_proba(rows))
    assert report["meanAbsDiff"] == pytest.approx(float(diffs.mean()), abs=1e-5)
    assert report["maxAbsDiff"] == pytest.approx(float(diffs.max()), abs=1e-5)
    assert report["activeP99Ms"] == pytest.approx(2.0)
    assert report["shadowP99Ms"] > 0
    mirror.close()


def test_a_regressor_has_differences_and_no_agreement() -> None:
    trained = diabetes_regressor()
    model = _model("diabetes", trained.onnx)
    stats = ShadowStats()
    inputs = {"input": trained.x_test[:4]}
    outputs = model.run(inputs)
    shifted = {name: array + 2.5 for name, array in outputs.items()}
    stats.record(outputs, shifted, 1.0, 2.0)
    report = stats.report()
    assert report["agreement"] is None
    assert report["meanAbsDiff"] == pytest.approx(2.5, abs=1e-4)
    assert report["p99AbsDiff"] == pytest.approx(2.5, abs=1e-4)


def test_a_full_pipe_drops_the_mirror_and_never_waits(tmp_path: Path) -> None:
    active = iris_classifier("1")
    v1 = _model("iris", active.onnx)
    mirror = ShadowMirror(pipe_bytes=4096)
    asyncio.run(mirror.install("iris", "2", *_file(tmp_path, iris_classifier("2", n_estimators=1), "2")))
    pid = mirror.pid
    assert pid is not None
    inputs = {"input": active.x_test[:1]}
    results = v1.run(inputs)
    os.kill(pid, signal.SIGSTOP)  # the worker reads nothing: the pipe fills
    try:
        started = time.monotonic()
        for _ in range(500):
            mirror.observe(v1, inputs, results, 0, 1, 1, "c")
        assert time.monotonic() - started < 10  # never waited for the stopped worker
        report = _figures(mirror)
        assert report["mirrored"] + report["dropped"] == 500
        assert 0 < report["mirrored"] < 500 and report["dropped"] > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    mirrored = report["mirrored"]
    _wait(lambda: _figures(mirror).get("compared") == mirrored)  # what was mirrored is compared after all
    # A removed shadow is no longer mirrored; the worker process ends with the last shadow.
    asyncio.run(mirror.remove("iris"))
    mirror.observe(v1, inputs, results, 0, 1, 1, "c")
    assert mirror.report("iris") is None and mirror.pid is None
    _wait(lambda: not _alive(pid))


def test_a_crashing_worker_fails_its_shadows_and_the_hot_path_goes_on(tmp_path: Path) -> None:
    active = iris_classifier("1")
    v1 = _model("iris", active.onnx)
    mirror = ShadowMirror()
    asyncio.run(mirror.install("iris", "2", *_file(tmp_path, iris_classifier("2", n_estimators=1), "2")))
    pid = mirror.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # what a segfaulting candidate does to its process
    ended = _wait(lambda: mirror.ended.get("iris"))
    assert ended.failure == "the shadow worker process ended (killed by SIGKILL)"
    inputs = {"input": active.x_test[:1]}
    mirror.observe(v1, inputs, v1.run(inputs), 0, 1, 1, "c")  # no shadow: nothing to do, nothing raised
    assert mirror.shadows == {}
    # A new install starts a new worker.
    asyncio.run(mirror.install("iris", "3", *_file(tmp_path, iris_classifier("3", n_estimators=2), "3")))
    assert mirror.pid not in (None, pid)
    mirror.close()


def test_a_file_that_is_not_a_model_is_refused_by_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not an onnx file")
    mirror = ShadowMirror()
    with pytest.raises(ShadowFailed, match="not a loadable ONNX file"):
        asyncio.run(mirror.install("iris", "2", "0" * 64, str(path)))
    assert mirror.shadows == {}
    mirror.close()


def test_a_captured_request_carries_the_shadows_outputs(tmp_path: Path) -> None:
    active, candidate = iris_classifier("1"), iris_classifier("2", n_estimators=1)
    v1 = _model("iris", active.onnx)
    mirror = ShadowMirror()
    capture = DataCapture(CaptureRing(tmp_path / "capture", 1 << 20), rate=1.0, device="dev-1", seed=1)
    capture.shadow_hook = mirror.take_capture
    mirror.complete_capture = capture.complete
    asyncio.run(mirror.install("iris", "2", *_file(tmp_path, candidate, "2")))
    rows = active.x_test[:6]
    for i, row in enumerate(rows):
        inputs = {"input": row[np.newaxis, :]}
        results = v1.run(inputs)
        for observer in (capture.observe, mirror.observe):  # the order the module registers them in
            observer(v1, inputs, results, 0, 1, 1, f"c{i}")
    written: list[dict[str, Any]] = []

    def drained() -> bool:
        capture.drain()
        for path in sorted((tmp_path / "capture").glob("*.jsonl")):
            written.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
        if len(written) == len(rows):
            return True
        written.clear()
        return False

    _wait(drained)
    assert _figures(mirror)["mirrored"] == len(rows)  # each request was mirrored once
    by_id = {record["correlationId"]: record for record in written}
    for i, row in enumerate(rows):
        record = by_id[f"c{i}"]
        assert record["outputs"]["label"] == int(active.estimator.predict(row[np.newaxis, :])[0])
        assert record["shadowOutputs"]["label"] == int(candidate.estimator.predict(row[np.newaxis, :])[0])
        probabilities = candidate.estimator.predict_proba(row[np.newaxis, :])[0]
        assert record["shadowOutputs"]["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-5)
    mirror.close()


def test_the_sample_rate_mirrors_that_share_of_requests(tmp_path: Path) -> None:
    active = iris_classifier("1")
    v1 = _model("iris", active.onnx)
    mirror = ShadowMirror(sample_rate=0.3, seed=7)
    asyncio.run(mirror.install("iris", "2", *_file(tmp_path, iris_classifier("2", n_estimators=1), "2")))
    inputs = {"input": active.x_test[:1]}
    results = v1.run(inputs)
    for _ in range(2000):
        mirror.observe(v1, inputs, results, 0, 1, 1, "c")
    report = _figures(mirror)
    # Binomial(2000, 0.3): mean 600, standard deviation 20.5; the seed makes the draw fixed.
    assert 520 < report["mirrored"] < 680 and report["dropped"] == 0
    _wait(lambda: _figures(mirror).get("compared") == report["mirrored"])
    mirror.close()
