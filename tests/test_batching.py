from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_module.batching import BatchPolicy, batchable
from edge_module.dataplane import DataPlane
from edge_module.errors import InvalidInput
from edge_module.repository import ModelRepository
from edge_module.runtime import OnnxModel, SessionConfig
from edge_module.stats import InferenceStats
from tests.support.inprocess import running_module
from tests.support.models import diabetes_regressor, iris_classifier, mixed_types_pipeline

# A zero inline threshold sends every run to the worker pool, so requests queue up behind it.
IN_THREADS = SessionConfig(intra_op_threads=1, inline_threshold_ms=0.0)


def load(name: str, onnx: bytes, config: SessionConfig = IN_THREADS) -> OnnxModel:
    model = OnnxModel(name, "1", hashlib.sha256(onnx).hexdigest(), onnx, config)
    model.warm_up()
    return model


@pytest.fixture
def plane() -> Iterator[DataPlane]:
    repository = ModelRepository()
    for name, trained in (("iris", iris_classifier()), ("diabetes", diabetes_regressor())):
        model = load(name, trained.onnx)
        repository.publish(name, model, {model.version: model})
    mixed = load("mixed", mixed_types_pipeline().onnx)
    repository.publish("mixed", mixed, {"1": mixed})
    dataplane = DataPlane(repository, InferenceStats(), batching=BatchPolicy(max_size=64))
    yield dataplane
    dataplane.close()


def counts(plane: DataPlane, name: str) -> tuple[int, int]:
    entry = plane.stats.report(name)["model_stats"][0]
    return entry["inference_count"], entry["execution_count"]


def v2_body(rows: np.ndarray) -> bytes:
    inputs = [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]
    return orjson.dumps({"inputs": inputs})


async def test_merged_results_equal_unbatched_runs_in_order(plane: DataPlane) -> None:
    x = iris_classifier().x_test[:24]
    model = plane.repository.get("iris")
    outputs = await asyncio.gather(*(plane.infer_arrays("iris", None, {"input": x[i : i + 1]}) for i in range(24)))
    for i, (_, result) in enumerate(outputs):
        alone = model.run({"input": x[i : i + 1]})
        assert result.keys() == alone.keys()
        for name in alone:
            np.testing.assert_array_equal(result[name], alone[name])
    inferences, executions = counts(plane, "iris")
    assert inferences == 24
    assert executions == 2  # the first request ran alone; the 23 that queued behind it ran as one


async def test_requests_of_several_rows_split_back_to_their_owner(plane: DataPlane) -> None:
    trained = diabetes_regressor()
    model = plane.repository.get("diabetes")
    sizes = [1, 3, 2, 5, 1, 4]
    starts = np.cumsum([0, *sizes])
    chunks = [trained.x_test[starts[i] : starts[i + 1]] for i in range(len(sizes))]
    outputs = await asyncio.gather(*(plane.infer_arrays("diabetes", None, {"input": chunk}) for chunk in chunks))
    for chunk, (_, result) in zip(chunks, outputs, strict=True):
        (name,) = result
        assert result[name].shape[0] == len(chunk)
        np.testing.assert_allclose(result[name], model.run({"input": chunk})[name], rtol=1e-6)
        np.testing.assert_allclose(result[name].ravel(), trained.estimator.predict(chunk), rtol=1e-4)
    assert counts(plane, "diabetes") == (sum(sizes), 2)


async def test_models_with_several_inputs_and_strings_merge(plane: DataPlane) -> None:
    frame = mixed_types_pipeline().x_test
    model = plane.repository.get("mixed")
    requests = [
        {"temperature": frame[i : i + 1, 0:1].astype(np.float32), "site": frame[i : i + 1, 1:2].astype(object)}
        for i in range(10)
    ]
    outputs = await asyncio.gather(*(plane.infer_arrays("mixed", None, request) for request in requests))
    for request, (_, result) in zip(requests, outputs, strict=True):
        alone = model.run(request)
        for name in alone:
            np.testing.assert_array_equal(result[name], alone[name])
    inferences, executions = counts(plane, "mixed")
    assert inferences == 10 and executions < inferences


async def test_a_bad_request_fails_alone_and_its_batch_mates_succeed(plane: DataPlane) -> None:
    x = iris_classifier().x_test[:8].copy()
    bodies = [v2_body(x[i : i + 1]) for i in range(8)]
    bodies[3] = v2_body(np.full((1, 4), np.nan, dtype=np.float32)).replace(b"NaN", b"null")
    bodies[5] = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    outcomes = await asyncio.gather(*(plane.infer("iris", None, body, None) for body in bodies), return_exceptions=True)
    model = plane.repository.get("iris")
    for i, outcome in enumerate(outcomes):
        if i in (3, 5):
            assert isinstance(outcome, InvalidInput), outcome
            continue
        assert isinstance(outcome, tuple), outcome
        response = orjson.loads(outcome[0])
        assert response["model_version"] == "1"
        label = next(o for o in response["outputs"] if o["name"] == "label")
        assert label["data"] == model.run({"input": x[i : i + 1]})["label"].tolist()
    entry = plane.stats.report("iris")["model_stats"][0]
    assert entry["inference_stats"]["fail"]["count"] == 2
    assert entry["inference_stats"]["success"]["count"] == 6
    assert entry["execution_count"] < entry["inference_count"] == 6


async def test_a_lone_request_runs_at_once_without_waiting_for_the_window() -> None:
    repository = ModelRepository()
    model = load("iris", iris_classifier().onnx)
    repository.publish("iris", model, {"1": model})
    plane = DataPlane(repository, InferenceStats(), batching=BatchPolicy(max_size=32, max_delay_ms=60_000))
    try:
        x = iris_classifier().x_test
        for i in range(3):
            await asyncio.wait_for(plane.infer_arrays("iris", None, {"input": x[i : i + 1]}), timeout=30)
    finally:
        plane.close()
    entry = plane.stats.report("iris")["model_stats"][0]
    assert entry["inference_stats"]["queue"]["ns"] == 0
    assert (entry["inference_count"], entry["execution_count"]) == (3, 3)


async def test_the_delay_lets_a_partial_batch_wait_for_batch_mates() -> None:
    repository = ModelRepository()
    model = load("iris", iris_classifier().onnx)
    repository.publish("iris", model, {"1": model})
    plane = DataPlane(repository, InferenceStats(), batching=BatchPolicy(max_size=8, max_delay_ms=60_000))
    x = iris_classifier().x_test
    try:
        first = [asyncio.ensure_future(plane.infer_arrays("iris", None, {"input": x[i : i + 1]})) for i in range(5)]
        await asyncio.wait_for(first[0], timeout=30)
        # The four queued requests wait for batch-mates: four more fill the batch of eight.
        late = [asyncio.ensure_future(plane.infer_arrays("iris", None, {"input": x[i : i + 1]})) for i in range(5, 9)]
        await asyncio.wait_for(asyncio.gather(*first, *late), timeout=30)
    finally:
        plane.close()
    assert counts(plane, "iris") == (9, 2)


async def test_batching_off_runs_every_request_alone(plane: DataPlane) -> None:
    plane.batcher.set_policy("iris", BatchPolicy(max_size=1))
    assert plane.batcher.policies() == {"iris": BatchPolicy(max_size=1)}
    x = iris_classifier().x_test
    await asyncio.gather(*(plane.infer_arrays("iris", None, {"input": x[i : i + 1]}) for i in range(6)))
    assert counts(plane, "iris") == (6, 6)
    assert "dynamic_batching" not in plane.model_config("iris", None)
    plane.batcher.set_policy("iris", None)
    assert plane.batcher.policy_for("iris") == BatchPolicy(max_size=64)
    assert plane.model_config("iris", None)["dynamic_batching"]["max_batch_size"] == 64


async def test_models_without_a_dynamic_batch_dimension_are_not_batched() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    trained = iris_classifier()
    fixed = to_onnx(
        trained.estimator,
        initial_types=[("input", FloatTensorType([1, 4]))],
        options={id(trained.estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model = load("fixed", fixed.SerializeToString())
    assert not batchable(model)
    assert batchable(load("iris", trained.onnx))
    repository = ModelRepository()
    repository.publish("fixed", model, {"1": model})
    plane = DataPlane(repository, InferenceStats(), batching=BatchPolicy(max_size=16))
    try:
        rows = [{"input": trained.x_test[i : i + 1]} for i in range(4)]
        await asyncio.gather(*(plane.infer_arrays("fixed", None, row) for row in rows))
    finally:
        plane.close()
    assert counts(plane, "fixed") == (4, 4)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_size"):
        BatchPolicy(max_size=0)
    with pytest.raises(ValueError, match="max_delay_ms"):
        BatchPolicy(max_size=4, max_delay_ms=-1)
    assert not BatchPolicy().enabled and BatchPolicy(max_size=2).enabled


async def test_settings_turn_batching_on_over_http(model_dir: Path) -> None:
    x = iris_classifier().x_test[:16]
    path = model_dir.parent / "iris.onnx"
    path.write_bytes(iris_classifier().onnx)
    settings = {"batch_max_size": 16, "batch_max_delay_ms": 2, "inline_threshold_ms": 0}
    async with running_module(model_dir, {"iris": path}, **settings) as (module, client):
        assert module.dataplane.batcher.policy_for("iris") == BatchPolicy(max_size=16, max_delay_ms=2)
        config = (await client.get("/v2/models/iris/config")).json()
        assert config["dynamic_batching"] == {"max_batch_size": 16, "max_queue_delay_microseconds": 2000}
        responses = await asyncio.gather(
            *(
                client.post("/v2/models/iris/infer", content=v2_body(x[i : i + 1]), headers={"content-type": "a/json"})
                for i in range(16)
            )
        )
        assert [r.status_code for r in responses] == [200] * 16
        model = module.repository.get("iris")
        for i, response in enumerate(responses):
            label = next(o for o in response.json()["outputs"] if o["name"] == "label")
            assert label["data"] == model.run({"input": x[i : i + 1]})["label"].tolist()
        stats = (await client.get("/v2/models/iris/stats")).json()["model_stats"][0]
    assert stats["inference_count"] == 16
    assert stats["execution_count"] < 16
