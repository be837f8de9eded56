"""edgeHub input messages mapped to inference in-process, with the SDK's real ``Message`` objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from azure.iot.device import Message

from edge_module.messages import ERRORS, PREDICTIONS, MessageRouter
from tests.support.inprocess import running_module
from tests.support.models import iris_classifier, mixed_types_pipeline


def _input(body: Any, input_name: str = "input1", **properties: str) -> Message:
    message = Message(body if isinstance(body, bytes) else orjson.dumps(body), message_id="mid-1")
    message.input_name = input_name
    message.custom_properties = dict(properties)
    return message


async def test_named_features_map_to_one_matrix_or_one_input_per_column(model_dir: Path, tmp_path: Path) -> None:
    iris, mixed = iris_classifier(), mixed_types_pipeline()
    (tmp_path / "iris.onnx").write_bytes(iris.onnx)
    (tmp_path / "mixed.onnx").write_bytes(mixed.onnx)
    models = {"iris": tmp_path / "iris.onnx", "mixed": tmp_path / "mixed.onnx"}
    async with running_module(model_dir, models, serve_default_model=False) as (module, _):
        router = MessageRouter(module.dataplane, default_model="iris")

        rows = [dict(zip(iris.feature_names, map(float, x), strict=True)) for x in iris.x_test[:5]]
        output, reply = await router.route(_input(rows, plant="north"))
        assert output == PREDICTIONS
        body = orjson.loads(reply.data)
        labels = next(o["data"] for o in body["outputs"] if o["name"] == "label")
        assert labels == iris.estimator.predict(iris.x_test[:5]).tolist()
        assert reply.correlation_id == "mid-1" and reply.custom_properties == {"plant": "north"}
        assert reply.content_type == "application/json"

        # A pipeline over raw columns: a numeric with a missing value (null) and a string category.
        output, reply = await router.route(_input([{"temperature": None, "site": "east"}], model="mixed"))
        assert output == PREDICTIONS, reply.data
        body = orjson.loads(reply.data)
        assert body["model_name"] == "mixed"
        assert next(o["data"] for o in body["outputs"] if o["name"] == "label") == [1]

        # A missing category (null) is the empty string, as the cloud pipeline encoded it in training.
        output, reply = await router.route(_input([{"temperature": 30.0, "site": None}], model="mixed"))
        assert output == PREDICTIONS, reply.data
        import pandas as pd

        expected = mixed.estimator.predict(pd.DataFrame({"temperature": [30.0], "site": [""]}))
        assert next(o["data"] for o in orjson.loads(reply.data)["outputs"] if o["name"] == "label") == expected.tolist()


async def test_bad_messages_become_errors_with_reasons(model_dir: Path, tmp_path: Path) -> None:
    iris = iris_classifier()
    (tmp_path / "iris.onnx").write_bytes(iris.onnx)
    async with running_module(model_dir, {"iris": tmp_path / "iris.onnx"}, serve_default_model=False) as (module, _):
        router = MessageRouter(module.dataplane, default_model=None)
        features = dict(zip(iris.feature_names, map(float, iris.x_test[0]), strict=True))
        cases = [
            (_input(b""), "must be JSON"),
            (_input(b"\xff\xfe"), "not JSON"),
            (_input(42), "expected an object of named features"),
            (_input([{}] * 1100), "at most 1024 rows"),
            (_input({**features, "sepal length (cm)": True}), "must be a number"),
            (_input({**features, "sepal length (cm)": None}), "NaN"),
            (_input(features, input_name="input2"), "unknown input 'input2'"),
            (_input(features, model="nope"), "unknown model 'nope'"),
            (_input({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}), "shape"),
        ]
        for message, reason in cases:
            output, reply = await router.route(message)
            body = orjson.loads(reply.data)
            assert output == ERRORS and reason in body["error"], (reason, body)
            assert reply.correlation_id == "mid-1"
        output, _ = await router.route(_input(features))
        assert output == PREDICTIONS  # the only model served is the default


async def test_the_correlation_id_is_the_request_id_else_the_message_id_else_a_new_one(
    model_dir: Path, tmp_path: Path
) -> None:
    iris = iris_classifier()
    (tmp_path / "iris.onnx").write_bytes(iris.onnx)
    capture_dir = tmp_path / "capture"
    async with running_module(
        model_dir, {"iris": tmp_path / "iris.onnx"}, capture_rate=1.0, capture_dir=capture_dir
    ) as (module, _):
        router = MessageRouter(module.dataplane, default_model="iris")
        features = [dict(zip(iris.feature_names, map(float, x), strict=True)) for x in iris.x_test[:2]]
        v2 = {"id": "v2-id", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5, 3, 1, 0]}]}

        def correlation(reply: Message) -> str:
            body_id: str = orjson.loads(reply.data)["id"]
            assert reply.correlation_id == body_id
            return body_id

        assert correlation((await router.route(_input(v2)))[1]) == "v2-id"  # the request's own id wins
        assert correlation((await router.route(_input(features)))[1]) == "mid-1"
        no_id = Message(orjson.dumps(features[:1]))
        no_id.input_name = "input1"
        no_id.correlation_id = "upstream-cid"  # set by whoever sent it: kept
        assert correlation((await router.route(no_id))[1]) == "upstream-cid"
        no_id.correlation_id = None
        generated = correlation((await router.route(no_id))[1])
        assert len(generated) == 32 and generated != correlation((await router.route(no_id))[1])
        await module.observability.tick()
    rows = [orjson.loads(line) for path in capture_dir.glob("*.jsonl") for line in path.read_bytes().splitlines()]
    keys = sorted((row["correlationId"], row["row"]) for row in rows)
    assert ("v2-id", 0) in keys and ("mid-1", 0) in keys and ("mid-1", 1) in keys and ("upstream-cid", 0) in keys
    assert (generated, 0) in keys and len(keys) == 6
