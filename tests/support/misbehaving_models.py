"""Valid ONNX models over iris's input that misbehave on live traffic, for the post-swap probation tests.

Both take ``input`` (FP32 ``[N, 4]``) and answer ``label`` and ``probabilities`` like ``iris_classifier``,
from a real logistic regression fitted on scikit-learn's iris data, so clients cannot tell them apart by
their signature. Each passes vetting and warm-up (the warm-up's zeros are fine inputs), then:

- ``failing_on_long_sepals``: a Reshape whose target shape grows by one column when any row's sepal length
  is 7 cm or more, so onnxruntime fails those requests at run time (FAIL, a server error, not a
  client one). 13 of iris's 150 rows, 9 %;
- ``slow_iris``: the same answers after ``layers`` square MatMuls of ``width`` (identity-preserving work:
  the output is multiplied by zero and added), so each row costs millions of multiply-adds.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_module.model_contract import Feature, ModelMetadata

LONG_SEPAL_CM = 7.0


@functools.cache
def _iris() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    x = data.data.astype(np.float32)
    fitted = LogisticRegression(max_iter=500).fit(x, data.target)
    names = tuple(str(n) for n in data.feature_names)
    return fitted.coef_.T.astype(np.float32), fitted.intercept_.astype(np.float32), x, names


def iris_rows() -> np.ndarray:
    """All 150 iris rows (FP32), the live traffic of the tests."""
    return _iris()[2]


def failing_rows() -> np.ndarray:
    """Which iris rows ``failing_on_long_sepals`` fails on."""
    return iris_rows()[:, 0] >= LONG_SEPAL_CM


def _model(version: str, body: list[onnx.NodeProto], initializers: list[onnx.TensorProto], head: str) -> bytes:
    weights, bias, _, names = _iris()
    nodes = [
        *body,
        helper.make_node("MatMul", [head, "W"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "iris_misbehaving",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
        ],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b"), *initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(
        name="iris",
        version=version,
        task="classification",
        features=tuple(Feature(n) for n in names),
        class_labels=(0, 1, 2),
    )
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


@functools.cache
def failing_on_long_sepals(version: str) -> bytes:
    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    body = [
        # extra = max over rows of floor(sepal length / 7): 1 when any row has a sepal of 7 cm or more.
        helper.make_node("Slice", ["input", "zero", "one", "one"], ["sepal"]),
        helper.make_node("Div", ["sepal", "seven"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["floored"]),
        helper.make_node("ReduceMax", ["floored"], ["extra_f"], keepdims=0),
        helper.make_node("Cast", ["extra_f"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Add", ["four", "extra"], ["columns"]),
        helper.make_node("Reshape", ["columns", "one"], ["columns_1d"]),
        helper.make_node("Shape", ["input"], ["shape"], end=1),
        helper.make_node("Concat", ["shape", "columns_1d"], ["target"], axis=0),
        # [N, 4] reshaped to [N, 4 + extra]: impossible when extra is 1.
        helper.make_node("Reshape", ["input", "target"], ["checked"]),
    ]
    initializers = [
        const("zero", np.array([0], dtype=np.int64)),
        const("one", np.array([1], dtype=np.int64)),
        const("four", np.array(4, dtype=np.int64)),
        const("seven", np.array(LONG_SEPAL_CM, dtype=np.float32)),
    ]
    return _model(version, body, initializers, "checked")


@functools.cache
def slow_iris(version: str, width: int = 1024, layers: int = 32) -> bytes:
    rng = np.random.default_rng(0)
    square = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    widen = rng.standard_normal((4, width)).astype(np.float32)
    body = [helper.make_node("MatMul", ["input", "widen"], ["h0"])]
    for layer in range(layers):
        body.append(helper.make_node("MatMul", [f"h{layer}", "square"], [f"m{layer}"]))
        body.append(helper.make_node("Tanh", [f"m{layer}"], [f"h{layer + 1}"]))
    body += [
        helper.make_node("ReduceSum", [f"h{layers}"], ["work"], keepdims=1),  # [N, 1]
        helper.make_node("Mul", ["work", "nothing"], ["zeroed"]),
        helper.make_node("Add", ["input", "zeroed"], ["same_input"]),  # the input, after all that work
    ]
    initializers = [
        numpy_helper.from_array(square, "square"),
        numpy_helper.from_array(widen, "widen"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "nothing"),
    ]
    return _model(version, body, initializers, "same_input")
