"""The exported pipeline, served by the real edge module, answers like the scikit-learn pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from cloud import workflow
from cloud.data import Dataset, load_dataset
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow


def v2_inputs(frame: object, dataset: Dataset) -> list[triton.InferInput]:
    inputs = []
    for feature in dataset.schema:
        column = frame[feature.name].to_numpy()  # type: ignore[index]
        if feature.type == "string":
            tensor = triton.InferInput(feature.name, [len(column), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[str(v).encode()] for v in column], dtype=np.object_))
        else:
            tensor = triton.InferInput(feature.name, [len(column), 1], "FP32")
            tensor.set_data_from_numpy(column.astype(np.float32).reshape(-1, 1))
        inputs.append(tensor)
    return inputs


def test_classifier_with_strings_and_missing_values_served_by_the_edge_module(
    tmp_path: Path, model_dir: Path, sensor_csv: Path
) -> None:
    dataset = load_dataset(str(sensor_csv), target="status")
    run = workflow.train(dataset, algorithms=("logistic_regression", "random_forest"), trials=1, cv=2)
    model = workflow.export(run, "sensors", "1")
    assert model.parity.passed
    path = tmp_path / "sensors.onnx"
    path.write_bytes(model.onnx)

    rows = run.x_test
    assert rows["temperature"].isna().any() and (rows["site"] == "").any()  # missing values are in the request
    expected_labels = run.best.pipeline.predict(rows)
    expected_probabilities = run.best.pipeline.predict_proba(rows)

    with ModuleProcess(model_dir, args=["--model", f"sensors={path}"]) as module:
        client = triton.InferenceServerClient(module.url.removeprefix("http://"))
        try:
            outputs = [triton.InferRequestedOutput("label"), triton.InferRequestedOutput("probabilities")]
            result = client.infer("sensors", v2_inputs(rows, dataset), outputs=outputs)
        finally:
            client.close()

    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label").reshape(-1)]
    assert labels == [str(v) for v in expected_labels]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected_probabilities, atol=1e-5, rtol=0)
    assert result.get_response()["model_name"] == "sensors"


def test_regressor_served_by_the_edge_module(tmp_path: Path, model_dir: Path) -> None:
    dataset = load_dataset("sklearn:diabetes")
    run = workflow.train(dataset, algorithms=("ridge",), trials=1, cv=2)
    model = workflow.export(run, "diabetes", "1")
    path = tmp_path / "diabetes.onnx"
    path.write_bytes(model.onnx)
    rows = run.x_test.iloc[:32]

    with ModuleProcess(model_dir, args=["--model", f"diabetes={path}"]) as module:
        client = triton.InferenceServerClient(module.url.removeprefix("http://"))
        try:
            result = client.infer("diabetes", v2_inputs(rows, dataset))
        finally:
            client.close()

    expected = run.best.pipeline.predict(rows)
    np.testing.assert_allclose(result.as_numpy("variable").reshape(-1), expected, rtol=1e-4, atol=1e-4)


def test_edgehub_named_feature_messages_map_onto_the_exported_pipeline(sensor_csv: Path) -> None:
    """The edge module's message mapping (object of named features -> one [N, 1] tensor per column) feeds the
    exported graph, and the edge runtime's answer equals scikit-learn's for the same raw rows."""
    import hashlib

    from edge_module.messages import features_to_inputs
    from edge_module.runtime import OnnxModel, SessionConfig

    dataset = load_dataset(str(sensor_csv), target="status")
    run = workflow.train(dataset, algorithms=("logistic_regression",), trials=1, cv=2)
    model = workflow.export(run, "sensors", "1")
    served = OnnxModel("sensors", "1", hashlib.sha256(model.onnx).hexdigest(), model.onnx, SessionConfig())

    rows = run.x_test
    assert rows["temperature"].isna().any() and (rows["site"] == "").any()
    messages = [
        {
            "temperature": None if np.isnan(row.temperature) else float(row.temperature),
            "vibration": float(row.vibration),
            "site": row.site,  # "" is the training convention for a missing category
        }
        for row in rows.itertuples()
    ]
    inputs = features_to_inputs(served, messages)
    served.validate(inputs)
    outputs = served.run(inputs)

    assert [str(v) for v in outputs["label"].reshape(-1)] == [str(v) for v in run.best.pipeline.predict(rows)]
    np.testing.assert_allclose(outputs["probabilities"], run.best.pipeline.predict_proba(rows), atol=1e-5, rtol=0)
