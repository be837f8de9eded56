"""The parity gate: onnxruntime and scikit-learn must agree on the test split before a model is registered.

Labels (classes, clusters) must be exactly equal; probabilities, cluster scores and regression values
within 1e-4 (``|onnx - sklearn| <= 1e-4 + 1e-4 * |sklearn|``: regression targets in the hundreds carry
float32 rounding larger than an absolute 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.candidates import ESTIMATOR_STEP
from edge_module.model_contract import Feature

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityReport:
    passed: bool
    rows: int
    label_mismatches: int
    max_abs_diff: float
    tolerance: float
    outputs: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "label_mismatches": self.label_mismatches,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "outputs": list(self.outputs),
            "message": self.message,
        }


def onnx_inputs(frame: Any, features: tuple[Feature, ...]) -> dict[str, np.ndarray]:
    """The V2 tensors a device sends for these raw rows: one [N, 1] FP32 or string tensor per column."""
    feeds: dict[str, np.ndarray] = {}
    for feature in features:
        column = frame[feature.name].to_numpy()
        if feature.type == "string":
            feeds[feature.name] = column.astype(str).astype(object).reshape(-1, 1)
        else:
            feeds[feature.name] = column.astype(np.float32).reshape(-1, 1)
    return feeds


def check_parity(
    onnx_bytes: bytes, pipeline: Any, task: str, frame: Any, features: tuple[Feature, ...], tolerance: float = TOLERANCE
) -> ParityReport:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, onnx_inputs(frame, features))
    names = tuple(o.name for o in session.get_outputs())
    rows = len(frame)
    if task == "regression":
        expected_values = np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1)
        actual = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        return _report(0, actual, expected_values, tolerance, rows, names)
    if task == "classification":
        expected_labels = pipeline.predict(frame)
        expected_values = pipeline.predict_proba(frame)
    else:
        estimator = pipeline[ESTIMATOR_STEP]
        transformed = pipeline[:-1].transform(frame)
        expected_labels = estimator.predict(transformed)
        expected_values = estimator.transform(transformed)
    mismatches = int(np.sum(_label_strings(outputs[0]) != _label_strings(expected_labels)))
    return _report(mismatches, np.asarray(outputs[1], dtype=np.float64), expected_values, tolerance, rows, names)


def _label_strings(values: Any) -> np.ndarray:
    """Labels compared exactly, whatever their type: int64 or string tensors (bytes or str)."""
    flat = np.asarray(values).reshape(-1)
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()], dtype=object)


def _report(
    mismatches: int, actual: np.ndarray, expected: np.ndarray, tolerance: float, rows: int, names: tuple[str, ...]
) -> ParityReport:
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return ParityReport(
            False,
            rows,
            mismatches,
            float("inf"),
            tolerance,
            names,
            f"output shape {actual.shape} differs from scikit-learn's {expected.shape}",
        )
    diff = np.abs(actual - expected)
    max_diff = float(diff.max()) if diff.size else 0.0
    within = bool(np.all(diff <= tolerance + tolerance * np.abs(expected)))
    passed = mismatches == 0 and within
    if passed:
        message = f"parity passed on {rows} rows (max |diff| {max_diff:.3g})"
    else:
        message = (
            f"parity FAILED on {rows} rows: {mismatches} label mismatches, max |diff| {max_diff:.3g} "
            f"(tolerance {tolerance:g})"
        )
    return ParityReport(passed, rows, mismatches, max_diff, tolerance, names, message)
