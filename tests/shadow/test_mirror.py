"""The mirror and its figures with real onnxruntime sessions of real scikit-learn models."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from edge_module.runtime import OnnxModel, SessionConfig
from edge_module.shadow.mirror import ShadowMirror
from edge_module.shadow.stats import ShadowStats
from tests.support.models import diabetes_regressor, iris_classifier


def _model(name: str, data: bytes) -> OnnxModel:
    return OnnxModel(name, None, hashlib.sha256(data).hexdigest(), data, SessionConfig())


def test_agreement_and_differences_match_sklearn_row_by_row() -> None:
    active, candidate = iris_classifier("1"), iris_classifier("2", n_estimators=1)
    v1, v2 = _model("iris", active.onnx), _model("iris", candidate.onnx)
    mirror = ShadowMirror()
    shadow = mirror.install("iris", v2)
    rows = active.x_test
    for row in rows:
        inputs = {"input": row[np.newaxis, :]}
        mirror.observe(v1, inputs, v1.run(inputs), 0, 1000, 2000, "c")
    assert mirror.wait_idle(30)
    report = shadow.stats.report()
    assert report["mirrored"] == report["compared"] == len(rows) and report["dropped"] == 0
    expected = float(np.mean(active.estimator.predict(rows) == candidate.estimator.predict(rows)))
    assert report["agreement"] == pytest.approx(expected, abs=1e-9)
    diffs = np.abs(active.estimator.predict_proba(rows) - candidate.estimator.predict_proba(rows))
    assert report["meanAbsDiff"] == pytest.approx(float(diffs.mean()), abs=1e-5)
    assert report["maxAbsDiff"] == pytest.approx(float(diffs.max()), abs=1e-5)
    assert report["activeP99Ms"] == pytest.approx(0.002)
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
    assert report["meanAbsDiff"] == pytest.approx(2.5, abs=1e-4) and report["p99AbsDiff"] == pytest.approx(
        2.5, abs=1e-4
    )


class _Blocked(OnnxModel):
    """A real shadow session held at a gate, so the queue fills while the hot path goes on."""

    gate = threading.Event()

    def run(self, inputs, output_names=None):  # type: ignore[no-untyped-def]
        self.gate.wait(30)
        return super().run(inputs, output_names)


def test_a_full_queue_drops_the_mirror_and_never_waits() -> None:
    trained = iris_classifier("1")
    v1 = _model("iris", trained.onnx)
    blocked = _Blocked("iris", None, "0" * 64, trained.onnx, SessionConfig())
    mirror = ShadowMirror(queue_size=4)
    shadow = mirror.install("iris", blocked)
    inputs = {"input": trained.x_test[:1]}
    results = v1.run(inputs)
    for _ in range(20):  # returns at once each time although the shadow is stuck
        mirror.observe(v1, inputs, results, 0, 1, 1, "c")
    report = shadow.stats.report()
    # One job may already be in the worker's hands, the queue holds four more.
    assert report["mirrored"] in (4, 5) and report["dropped"] == 20 - report["mirrored"]
    _Blocked.gate.set()
    assert mirror.wait_idle(30)
    assert shadow.stats.report()["compared"] == report["mirrored"]
    # A removed shadow is no longer mirrored.
    mirror.remove("iris")
    mirror.observe(v1, inputs, results, 0, 1, 1, "c")
    assert shadow.stats.report()["mirrored"] == report["mirrored"]
    mirror.close()
