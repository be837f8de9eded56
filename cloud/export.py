"""Convert a fitted scikit-learn model to ONNX and write the metadata the edge module reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from edge_module.model_contract import ModelMetadata


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
