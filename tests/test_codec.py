"""The V2 codec on every datatype, both encodings, and fuzzed input."""

from __future__ import annotations

import functools
import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_module.codec import InferRequest, decode_request, encode_response
from edge_module.errors import EdgeError
from edge_module.runtime import OnnxModel, SessionConfig

TYPES = {"f64": "FP64", "i32": "INT32", "i64": "INT64", "flag": "BOOL", "text": "BYTES", "f32": "FP32"}


@functools.cache
def identity_model() -> OnnxModel:
    """A real ONNX graph passing each typed input straight to an output."""
    import onnx
    from onnx import TensorProto, helper

    onnx_types = {
        "FP64": TensorProto.DOUBLE,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "BOOL": TensorProto.BOOL,
        "BYTES": TensorProto.STRING,
        "FP32": TensorProto.FLOAT,
    }
    inputs = [helper.make_tensor_value_info(n, onnx_types[t], ["batch", 2]) for n, t in TYPES.items()]
    outputs = [helper.make_tensor_value_info(f"{n}_out", onnx_types[t], ["batch", 2]) for n, t in TYPES.items()]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in TYPES]
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    loaded = OnnxModel("types", "1", "0" * 64, model.SerializeToString(), SessionConfig())
    loaded.warm_up()
    return loaded


VALUES: dict[str, Any] = {
    "f64": [[1.5, -2.25], [3.0, 1e300]],
    "i32": [[1, -2], [2**31 - 1, -(2**31)]],
    "i64": [[2**62, -1], [0, 7]],
    "flag": [[True, False], [False, True]],
    "text": [["héllo", ""], ["a b", "ünï"]],
    "f32": [[0.5, 1.0], [2.0, -3.5]],
}


def _json_request() -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": n, "datatype": t, "shape": [2, 2], "data": VALUES[n]} for n, t in TYPES.items()]}
    )


def _bytes_tensor(rows: list[list[str]]) -> bytes:
    return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for row in rows for s in row)


def _binary_request() -> tuple[bytes, int]:
    buffers = []
    inputs = []
    dtypes = {"FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32}
    for name, datatype in TYPES.items():
        raw = _bytes_tensor(VALUES[name]) if datatype == "BYTES" else np.array(VALUES[name], dtypes[datatype]).tobytes()
        buffers.append(raw)
        inputs.append(
            {"name": name, "datatype": datatype, "shape": [2, 2], "parameters": {"binary_data_size": len(raw)}}
        )
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return header + b"".join(buffers), len(header)


def _run(body: bytes, header_length: int | None) -> tuple[InferRequest, dict[str, Any], bytes, int | None]:
    model = identity_model()
    request = decode_request(body, header_length, model)
    model.validate(request.inputs)
    results = model.run(request.inputs)
    encoded, length = encode_response("types", "1", results, request)
    header = orjson.loads(encoded[:length] if length is not None else encoded)
    return request, header, encoded, length


def test_every_datatype_round_trips_as_json() -> None:
    _, response, _, length = _run(_json_request(), None)
    assert length is None
    outputs = {o["name"]: o for o in response["outputs"]}
    for name, datatype in TYPES.items():
        out = outputs[f"{name}_out"]
        assert out["datatype"] == datatype and out["shape"] == [2, 2]
        flat = [v for row in VALUES[name] for v in row]
        if datatype == "FP32":
            np.testing.assert_allclose(out["data"], flat)
        else:
            assert out["data"] == flat, name


def test_every_datatype_round_trips_as_binary() -> None:
    body, header_length = _binary_request()
    request, response, encoded, length = _run(body, header_length)
    assert request.inputs["text"].tolist() == VALUES["text"]
    assert length is not None
    offset = length
    for out in response["outputs"]:
        size = out["parameters"]["binary_data_size"]
        chunk = encoded[offset : offset + size]
        offset += size
        name = out["name"].removesuffix("_out")
        if out["datatype"] == "BYTES":
            assert chunk == _bytes_tensor(VALUES[name])
        else:
            dtype = {"FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "FP32": np.float32}
            decoded: np.ndarray = np.frombuffer(chunk, dtype[out["datatype"]]).reshape(2, 2)
            np.testing.assert_array_equal(decoded, np.array(VALUES[name], dtype[out["datatype"]]))
    assert offset == len(encoded)


def _numeric_binary_request(
    f32: list[list[float]], i64: list[list[int]], id_: str | None = None, text: bool = False
) -> tuple[bytes, int]:
    """Two numeric inputs as binary data (and, with ``text``, a BYTES input as JSON)."""
    raw = {"i64": np.array(i64, np.int64).tobytes(), "f32": np.array(f32, np.float32).tobytes()}
    inputs: list[dict[str, Any]] = [
        {"name": name, "datatype": TYPES[name], "shape": [2, 2], "parameters": {"binary_data_size": len(data)}}
        for name, data in raw.items()
    ]
    if text:
        inputs.append({"name": "text", "datatype": "BYTES", "shape": [2, 2], "data": VALUES["text"]})
    header = orjson.dumps({"inputs": inputs, **({"id": id_} if id_ else {})})
    return header + raw["i64"] + raw["f32"], len(header)


@pytest.mark.parametrize("text", [False, True])
def test_a_repeated_binary_header_decodes_each_request_s_own_tensors(text: bool) -> None:
    model = identity_model()
    first = decode_request(*_numeric_binary_request([[1, 2], [3, 4]], [[1, 2], [3, 4]], text=text), model)
    second = decode_request(*_numeric_binary_request([[5, 6], [7, 8]], [[9, 9], [9, 9]], "req-2", text), model)
    third = decode_request(*_numeric_binary_request([[0.5, 0], [0, -1]], [[7, 7], [7, 7]], text=text), model)
    assert first.inputs["f32"].tolist() == [[1, 2], [3, 4]] and first.id is None
    assert second.inputs["i64"].tolist() == [[9, 9], [9, 9]] and second.id == "req-2"
    assert third.inputs["f32"].tolist() == [[0.5, 0], [0, -1]] and third.inputs["i64"].tolist() == [[7, 7], [7, 7]]
    assert third.id is None and list(third.inputs) == ["i64", "f32", "text"][: 3 if text else 2]
    if text:
        assert third.inputs["text"].tolist() == VALUES["text"]


def test_a_repeated_binary_header_with_the_wrong_amount_of_data_is_refused() -> None:
    model = identity_model()
    body, length = _binary_request()
    decode_request(body, length, model)
    decode_request(body, length, model)
    with pytest.raises(EdgeError, match="no input claims"):
        decode_request(body + b"\0", length, model)
    with pytest.raises(EdgeError, match="remain"):
        decode_request(body[:-1], length, model)
    assert decode_request(body, length, model).inputs["f32"].tolist() == VALUES["f32"]


@pytest.mark.parametrize(
    ("name", "datatype", "data", "message"),
    [
        ("flag", "BOOL", [[1, 0], [0, 1]], "true or false"),
        ("text", "BYTES", [[1, 2], [3, 4]], "must be a string"),
        ("i32", "INT32", [[2**40, 0], [0, 0]], "regular array"),
    ],
)
def test_type_errors_name_the_input(name: str, datatype: str, data: Any, message: str) -> None:
    payload = orjson.loads(_json_request())
    for item in payload["inputs"]:
        if item["name"] == name:
            item["data"] = data
    with pytest.raises(EdgeError, match=message) as caught:
        decode_request(orjson.dumps(payload), None, identity_model())
    assert name in caught.value.message


def test_bytes_elements_must_be_utf8_and_complete() -> None:
    model = identity_model()
    payload = orjson.loads(_json_request())
    payload["inputs"] = [i for i in payload["inputs"] if i["name"] != "text"]
    for raw, message in ((struct.pack("<I", 2) + b"\xff\xfe" * 4, "UTF-8"), (b"\x05\x00", "truncated")):
        entry = {"name": "text", "datatype": "BYTES", "shape": [2, 2], "parameters": {"binary_data_size": len(raw)}}
        header = orjson.dumps({"inputs": [*payload["inputs"], entry]})
        with pytest.raises(EdgeError, match=message):
            decode_request(header + raw, len(header), model)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(payload=json_values)
def test_arbitrary_json_never_escapes_as_anything_but_a_client_error(payload: Any) -> None:
    body = json.dumps(payload).encode()  # stdlib: it also writes integers beyond 64 bits
    try:
        request = decode_request(body, None, identity_model())
        identity_model().validate(request.inputs)
    except EdgeError as exc:
        assert 400 <= exc.status_code < 500


input_entries = st.fixed_dictionaries(
    {
        "name": st.sampled_from([*TYPES, "bogus"]),
        "datatype": st.sampled_from([*TYPES.values(), "FP16", "NOPE"]),
        "shape": st.lists(st.integers(min_value=-2, max_value=4), max_size=3),
    },
    optional={
        "data": json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(min_value=-1, max_value=64)}),
    },
)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(input_entries, max_size=7), tail=st.binary(max_size=64), declare=st.booleans())
def test_adversarial_requests_are_rejected_cleanly(entries: list[dict[str, Any]], tail: bytes, declare: bool) -> None:
    header = json.dumps({"inputs": entries}).encode()
    model = identity_model()
    try:
        request = decode_request(header + tail, len(header) if declare else None, model)
        model.validate(request.inputs)
        model.run(request.inputs)
    except EdgeError as exc:
        assert 400 <= exc.status_code < 500
