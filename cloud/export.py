"""Convert a fitted scikit-learn model to ONNX and write the metadata the edge module reads."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx

from edge_module.model_contract import Feature, ModelMetadata


def to_onnx_single_tensor(estimator: Any, n_features: int, metadata: ModelMetadata) -> bytes:
    """Export an estimator that takes one FP32 matrix [batch, n_features]. Outputs are plain tensors."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options: dict[int, dict[str, Any]] = {}
    if hasattr(estimator, "predict_proba"):
        options = {id(estimator): {"zipmap": False}}
    model = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return with_metadata(model, metadata)


def with_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> bytes:
    # skl2onnx lists the opset domains in no fixed order (it varies between processes), and the same model must
    # give the same bytes every time: registration is idempotent by sha256.
    opsets = sorted((entry.domain, entry.version) for entry in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        entry = model.opset_import.add()
        entry.domain = domain
        entry.version = version
    del model.metadata_props[:]
    for key, value in sorted(metadata.to_props().items()):
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value
    model.producer_name = "edge-inference-cloud"
    model.doc_string = f"{metadata.name} {metadata.version} ({metadata.task})"
    return bytes(model.SerializeToString())


def onnx_predict(model_bytes: bytes, features: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: features.astype(np.float32)}))


def pipeline_to_onnx(pipeline: Any, features: tuple[Feature, ...], task: str, metadata: ModelMetadata) -> bytes:
    """Export a preprocessing Pipeline whose graph takes one [None, 1] input per raw column.

    Numeric columns are FP32 and string columns are string tensors, each named exactly as the column (skl2onnx
    sanitizes names such as ``sepal length (cm)``; the inputs are renamed back so devices send raw names).
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    safe_names = {f.name: _safe_name(f.name, i) for i, f in enumerate(features)}
    initial_types = [
        (safe_names[f.name], StringTensorType([None, 1]) if f.type == "string" else FloatTensorType([None, 1]))
        for f in features
    ]
    renamed = _rename_columns(pipeline, safe_names)
    options: dict[int, dict[str, Any]] = {}
    if task == "classification":
        options = {id(renamed): {"zipmap": False}}
    model = to_onnx(renamed, initial_types=initial_types, options=options, target_opset=TARGET_OPSET)
    _rename_inputs(model, {safe: raw for raw, safe in safe_names.items()})
    onnx.checker.check_model(model)
    return with_metadata(model, metadata)


TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _safe_name(name: str, index: int) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if cleaned == name else f"col{index}_{cleaned}"


def _rename_columns(pipeline: Any, safe_names: dict[str, str]) -> Any:
    """A copy of the pipeline whose ColumnTransformer selects columns by their sanitized names."""
    import copy

    if all(safe == raw for raw, safe in safe_names.items()):
        return pipeline
    renamed = copy.deepcopy(pipeline)
    columns = renamed.steps[0][1]
    columns.transformers_ = [
        (name, transformer, [safe_names[c] for c in cols] if isinstance(cols, list) else cols)
        for name, transformer, cols in columns.transformers_
    ]
    if hasattr(columns, "feature_names_in_"):
        columns.feature_names_in_ = np.array([safe_names[c] for c in columns.feature_names_in_], dtype=object)
    return renamed


def _rename_inputs(model: onnx.ModelProto, names: dict[str, str]) -> None:
    graph = model.graph
    for graph_input in graph.input:
        if graph_input.name in names:
            graph_input.name = names[graph_input.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                node.input[i] = names[name]
