"""Our raw ModelInferResponse serializer writes exactly the bytes protobuf writes for the same message."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_module.codec import tensor_bytes
from edge_module.grpc import inference_pb2 as pb
from edge_module.grpc.codec import RawResponses, encode_response
from edge_module.tensors import v2_datatype_of

NUMERIC = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64]
text = st.text(max_size=40)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
numeric_arrays = st.sampled_from(NUMERIC).flatmap(lambda dtype: hnp.arrays(dtype, shapes))
bytes_arrays = st.lists(st.binary(max_size=20), max_size=6).map(lambda items: np.array(items, dtype=object))


def protobuf_bytes(model: str, version: str, request_id: str, outputs: list[tuple[str, np.ndarray]]) -> bytes:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name, array in outputs:
        response.outputs.add(name=name, datatype=v2_datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(tensor_bytes(array))
    data: bytes = response.SerializeToString()
    return data


@settings(max_examples=200, deadline=None)
@given(
    model=text,
    version=text,
    request_id=text,
    outputs=st.lists(st.tuples(text, st.one_of(numeric_arrays, bytes_arrays)), max_size=4, unique_by=lambda o: o[0]),
)
def test_the_same_bytes_as_protobuf(
    model: str, version: str, request_id: str, outputs: list[tuple[str, np.ndarray]]
) -> None:
    raw = RawResponses()
    names, arrays = [name for name, _ in outputs], [array for _, array in outputs]
    expected = protobuf_bytes(model, version, request_id, outputs)
    assert raw.serialize(model, version, request_id, names, arrays) == expected
    assert raw.serialize(model, version, request_id, names, arrays) == expected  # from the remembered head


def test_a_changed_shape_or_datatype_is_not_served_from_a_stale_head() -> None:
    raw = RawResponses()
    first = [np.zeros(3, np.int64)]
    assert raw.serialize("m", "1", "a", ["y"], first) == protobuf_bytes("m", "1", "a", [("y", first[0])])
    for other in (np.zeros(4, np.int64), np.zeros(3, np.int32), np.zeros((3, 1), np.int64)):
        assert raw.serialize("m", "1", "b", ["y"], [other]) == protobuf_bytes("m", "1", "b", [("y", other)])
    assert raw.serialize("m", "2", "", ["y"], first) == protobuf_bytes("m", "2", "", [("y", first[0])])
    # Dimensions and lengths of 128 and more take multi-byte varints.
    wide: list[np.ndarray] = [np.zeros((0, 300), np.float32), np.ones((200,), np.float64)]
    assert raw.serialize("m" * 130, "1", "i" * 200, ["a", "b"], wide) == protobuf_bytes(
        "m" * 130, "1", "i" * 200, [("a", wide[0]), ("b", wide[1])]
    )


def test_typed_requests_get_typed_outputs_unless_a_datatype_has_no_typed_field() -> None:
    results = {"label": np.array([1, 2], np.int64), "text": np.array(["a", "b"], dtype=object)}
    typed = pb.ModelInferResponse.FromString(encode_response("m", "1", "id", results, [], raw=False))
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.int64_contents) == [1, 2]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"a", b"b"]
    half = {"h": np.array([0.5], np.float16)}
    forced = pb.ModelInferResponse.FromString(encode_response("m", "1", "id", half, [], raw=False))
    assert forced.raw_output_contents == [np.array([0.5], np.float16).tobytes()]
