"""ModelInferRequest to tensors and tensors to ModelInferResponse: raw contents and typed contents, both ways.

Knows nothing of the gRPC server. Inputs are checked against the model's signature here (names, datatypes,
element and byte counts); the data plane validates shapes and values as for HTTP. A response mirrors the
request: raw_output_contents for a request that sent raw_input_contents (what tritonclient and Triton use),
typed contents for a request that sent typed contents (as KServe's own clients may), except that outputs no
typed field can hold (FP16) make the whole response raw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_module.codec import MAX_DIMS, tensor_bytes, tensor_from_bytes
from edge_module.errors import InvalidInput, InvalidRequest
from edge_module.grpc import inference_pb2 as pb
from edge_module.runtime import OnnxModel
from edge_module.tensors import V2_TO_NUMPY, v2_datatype_of

# The typed-contents field that holds each datatype's elements (the specification's InferTensorContents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class DecodedRequest:
    __slots__ = ("inputs", "outputs", "raw")

    def __init__(self, inputs: dict[str, np.ndarray], outputs: list[str], raw: bool) -> None:
        self.inputs = inputs
        self.outputs = outputs  # requested output names in order; empty means all
        self.raw = raw  # whether the inputs came as raw_input_contents


def decode_request(request: pb.ModelInferRequest, model: OnnxModel) -> DecodedRequest:
    if not request.inputs:
        raise InvalidRequest("the request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs; "
            "send one entry per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        spec = model.input_spec(name)
        if tensor.datatype != spec.datatype:
            given = tensor.datatype or "(none)"
            raise InvalidInput(f"input '{name}' has datatype {given}, model '{model.name}' expects {spec.datatype}")
        shape = _shape(tensor.shape, name)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequest(f"input '{name}' has typed contents, but the request uses raw_input_contents")
            inputs[name] = tensor_from_bytes(raw[index], tensor.datatype, shape, name)
        else:
            inputs[name] = _from_contents(tensor.contents, tensor.datatype, shape, name)
    known = model.output_names
    outputs = []
    for requested in request.outputs:
        if requested.name not in known:
            raise InvalidRequest(f"unknown output {requested.name!r}; model '{model.name}' has: {', '.join(known)}")
        outputs.append(requested.name)
    return DecodedRequest(inputs, outputs, bool(raw))


def _shape(dims: Sequence[int], name: str) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > MAX_DIMS or (shape and min(shape) < 0):
        raise InvalidInput(f"input '{name}': shape must be at most {MAX_DIMS} non-negative integers, got {list(dims)}")
    return shape


def _from_contents(contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}' is {datatype}, which has no typed contents: send it in raw_input_contents")
    values: Sequence[Any] = getattr(contents, field)
    expected = math.prod(shape)
    if len(values) != expected:
        others = [other for other, _ in contents.ListFields() if other.name != field]
        hint = f" (the request filled {others[0].name}; {datatype} goes in {field})" if others else ""
        raise InvalidInput(
            f"input '{name}' has {len(values)} elements in {field}, shape {list(shape)} needs {expected}{hint}"
        )
    if datatype == "BYTES":
        try:
            array = np.array([value.decode("utf-8") for value in values], dtype=object)
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
    else:
        try:
            array = np.array(values, dtype=V2_TO_NUMPY[datatype])
        except OverflowError:
            raise InvalidInput(f"input '{name}': a value in {field} is out of range for {datatype}") from None
    return array.reshape(shape)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    results: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    raw: bool,
) -> bytes:
    """The serialized ModelInferResponse."""
    names = list(outputs) or list(results)
    arrays = [results[name] for name in names]
    datatypes = [v2_datatype_of(array) for array in arrays]
    if raw or any(datatype not in CONTENTS_FIELD for datatype in datatypes):
        return _RAW_RESPONSES.serialize(model_name, model_version, request_id, names, arrays)
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, array, datatype in zip(names, arrays, datatypes, strict=True):
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        _fill_contents(tensor.contents, array, datatype)
    data: bytes = response.SerializeToString()
    return data


class RawResponses:
    """ModelInferResponse with raw_output_contents, serialized byte for byte as protobuf does, faster.

    Building the message through protobuf's Python API costs about 5 µs a call. What repeats from call to
    call (model, version, and each output's name, datatype and shape) is encoded once per combination; a
    call adds its id and its tensors' bytes. Fields go in field-number order, empty strings are left out
    (proto3), and every raw_output_contents entry is written, as protobuf writes them.
    """

    KEPT = 256

    def __init__(self) -> None:
        self._heads: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}

    def serialize(
        self, model_name: str, model_version: str, request_id: str, names: Sequence[str], arrays: Sequence[np.ndarray]
    ) -> bytes:
        key = (model_name, model_version, *names, *(array.dtype for array in arrays), *(a.shape for a in arrays))
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = self._encode_head(model_name, model_version, names, arrays)
            if len(self._heads) > self.KEPT:
                self._heads.clear()
                self._heads[key] = head
        parts = [head[0]]
        if request_id:
            parts.append(_field_bytes(3, request_id.encode("utf-8")))
        parts.append(head[1])
        for array in arrays:
            data = tensor_bytes(array)
            parts.append(b"\x32" + _varint(len(data)))
            parts.append(data)
        return b"".join(parts)

    @staticmethod
    def _encode_head(
        model_name: str, model_version: str, names: Sequence[str], arrays: Sequence[np.ndarray]
    ) -> tuple[bytes, bytes]:
        model = _field_bytes(1, model_name.encode("utf-8")) if model_name else b""
        version = _field_bytes(2, model_version.encode("utf-8")) if model_version else b""
        tensors = []
        for name, array in zip(names, arrays, strict=True):
            tensor = _field_bytes(1, name.encode("utf-8")) if name else b""
            tensor += _field_bytes(2, v2_datatype_of(array).encode("ascii"))
            if array.shape:
                tensor += _field_bytes(3, b"".join(_varint(dim) for dim in array.shape))
            tensors.append(_field_bytes(5, tensor))
        return model + version, b"".join(tensors)


_RAW_RESPONSES = RawResponses()
_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _field_bytes(number: int, value: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fill_contents(contents: pb.InferTensorContents, array: np.ndarray, datatype: str) -> None:
    flat = array.reshape(-1)
    target = getattr(contents, CONTENTS_FIELD[datatype])
    if datatype == "BYTES":
        target.extend(item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat)
    else:
        target.extend(flat.tolist())
