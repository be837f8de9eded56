"""Open Inference Protocol V2 codec: JSON bodies and the binary tensor data extension, both ways.

Knows nothing of HTTP. Decoding checks every input against the model signature and raises
``InvalidInput``/``InvalidRequest`` with a message naming the input and what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from edge_module.errors import InvalidInput, InvalidRequest
from edge_module.runtime import OnnxModel
from edge_module.tensors import V2_TO_NUMPY, v2_datatype_of

HEADER_LENGTH = "inference-header-content-length"
_LENGTH_PREFIX = struct.Struct("<I")
MAX_DIMS = 8
PLANS_KEPT = 64  # distinct binary request headers remembered per model version


class InferRequest:
    """A decoded request. ``outputs``: requested outputs in order, each with whether it goes back as binary;
    empty means all outputs, as ``binary_output`` says."""

    __slots__ = ("binary_output", "id", "inputs", "outputs", "parameters")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        id: str | None = None,
        outputs: list[tuple[str, bool]] | None = None,
        binary_output: bool = False,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.id = id
        self.outputs = outputs if outputs is not None else []
        self.binary_output = binary_output
        self.parameters = parameters if parameters is not None else {}


def _load_json(raw: bytes | memoryview) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from None


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    for dim in raw:
        if type(dim) is not int or dim < 0:
            raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {raw}")
    return tuple(raw)


def _element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _flatten_strings(data: Any, name: str, out: list[str]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten_strings(item, name, out)
        elif isinstance(item, str):
            out.append(item)
        else:
            raise InvalidInput(f"input '{name}' is BYTES: every element must be a string, got {type(item).__name__}")


def _from_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    expected = _element_count(shape)
    if datatype == "BYTES":
        flat: list[str] = []
        _flatten_strings(data, name, flat)
        array = np.array(flat, dtype=object)
    else:
        if datatype == "BOOL" and not _all_bools(data):
            raise InvalidInput(f"input '{name}' is BOOL: every element must be true or false")
        try:
            array = np.asarray(data, dtype=V2_TO_NUMPY[datatype])
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(
                f"input '{name}': 'data' is not a regular array of {datatype} values matching shape {list(shape)}"
            ) from None
    if array.size != expected:
        raise InvalidInput(f"input '{name}' has {array.size} elements, shape {list(shape)} needs {expected}")
    return array.reshape(shape)


def _all_bools(data: list[Any]) -> bool:
    return all(_all_bools(item) if isinstance(item, list) else isinstance(item, bool) for item in data)


def _from_binary(body: bytes, start: int, size: int, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The ``size`` bytes at ``start`` of the body as a tensor: a view of the body, not a copy."""
    expected = _element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(memoryview(body)[start : start + size], expected, name).reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if size != expected * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}' has {size} bytes of binary data, "
            f"{datatype} shape {list(shape)} needs {expected * dtype.itemsize}"
        )
    return np.frombuffer(body, dtype, expected, start).reshape(shape)


def _decode_bytes_elements(buffer: memoryview, expected: int, name: str) -> np.ndarray:
    items: list[str] = []
    offset = 0
    end = len(buffer)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input '{name}': truncated BYTES element length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(buffer, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"input '{name}': BYTES element of {length} bytes overruns the buffer")
        try:
            items.append(bytes(buffer[offset : offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{name}': BYTES elements must be UTF-8 text") from None
        offset += length
        if len(items) > expected:
            break
    if len(items) != expected:
        raise InvalidInput(f"input '{name}' has {len(items)} BYTES elements, its shape needs {expected}")
    return np.array(items, dtype=object)


class _BinaryPlan:
    """A binary request's JSON header, decoded and checked against the model once.

    Clients send the same header for every request of the same shapes (the tensors follow it), so a
    repeated header costs a dictionary lookup; the tensors are still read, and validated, per request.
    """

    __slots__ = ("binary_output", "inputs", "outputs", "parameters", "size")

    def __init__(self, request: InferRequest, size: int) -> None:
        self.inputs = tuple(
            (name, array.dtype, array.size, array.shape, offset)
            for (name, array), offset in zip(request.inputs.items(), _offsets(request.inputs), strict=True)
        )
        self.size = size
        # Shared by the requests decoded from this plan: nothing changes a request's outputs or parameters.
        self.outputs = request.outputs
        self.binary_output = request.binary_output
        self.parameters = request.parameters

    def request(self, body: bytes, start: int) -> InferRequest:
        inputs = {
            name: np.frombuffer(body, dtype, count, start + offset).reshape(shape)
            for name, dtype, count, shape, offset in self.inputs
        }
        return InferRequest(inputs, None, self.outputs, self.binary_output, self.parameters)


def _offsets(inputs: dict[str, np.ndarray]) -> list[int]:
    offsets, offset = [], 0
    for array in inputs.values():
        offsets.append(offset)
        offset += array.nbytes
    return offsets


def decode_request(body: bytes, header_length: int | None, model: OnnxModel) -> InferRequest:
    """Decode a V2 infer request for ``model``; ``header_length`` comes from Inference-Header-Content-Length."""
    if header_length is None:
        return _decode(body, None, None, model)[0]
    if header_length == 0:
        return _raw_binary_request(body, model)
    if header_length < 0 or header_length > len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {header_length} but the body has only {len(body)} bytes"
        )
    head = body[:header_length]
    plans = model.decode_plans
    plan: _BinaryPlan | None = plans.get(head)
    if plan is not None and header_length + plan.size == len(body):
        return plan.request(body, header_length)
    request, all_binary = _decode(body, header_length, head, model)
    if all_binary and request.id is None and all(array.dtype.kind != "O" for array in request.inputs.values()):
        if len(plans) >= PLANS_KEPT:  # a client varying its shapes or parameters: start over
            plans.clear()
        plans[head] = _BinaryPlan(request, len(body) - header_length)
    return request


def _raw_binary_request(body: bytes, model: OnnxModel) -> InferRequest:
    """Triton's raw binary request: no JSON header, the body is the one input's tensor; outputs go back binary.

    The shape follows from the byte count, so the model needs exactly one input, of a fixed-size datatype, with
    at most one dimension of variable size.
    """
    what = "a raw binary request (Inference-Header-Content-Length: 0)"
    if len(model.inputs) != 1:
        raise InvalidRequest(f"{what} needs a model with one input; model '{model.name}' has {len(model.inputs)}")
    spec = model.inputs[0]
    variable = [i for i, dim in enumerate(spec.shape) if dim == -1]
    if spec.datatype == "BYTES" or len(variable) > 1:
        raise InvalidRequest(
            f"{what} needs an input whose shape follows from its byte count; input '{spec.name}' of model "
            f"'{model.name}' is {spec.datatype} {list(spec.shape)}: send a JSON header"
        )
    itemsize = V2_TO_NUMPY[spec.datatype].itemsize
    unit = math.prod(dim for dim in spec.shape if dim != -1) * itemsize  # bytes per step of the variable dim
    if variable:
        if not body or len(body) % unit:
            raise InvalidInput(
                f"{what}: input '{spec.name}' is {spec.datatype} {list(spec.shape)}, so the body must be a non-zero "
                f"multiple of {unit} bytes; it has {len(body)}"
            )
        shape = tuple(len(body) // unit if dim == -1 else dim for dim in spec.shape)
    else:
        if len(body) != unit:
            raise InvalidInput(
                f"{what}: input '{spec.name}' is {spec.datatype} {list(spec.shape)}, so the body must be {unit} bytes; "
                f"it has {len(body)}"
            )
        shape = spec.shape
    array = np.frombuffer(body, V2_TO_NUMPY[spec.datatype]).reshape(shape)
    return InferRequest({spec.name: array}, binary_output=True)


def _decode(body: bytes, header_length: int | None, head: bytes | None, model: OnnxModel) -> tuple[InferRequest, bool]:
    """The request, and whether every input came as binary data."""
    if header_length is not None and head is not None:
        header = _load_json(head)
        offset = header_length  # binary data follows the JSON header
    else:
        header = _load_json(body)
        offset = len(body)  # no binary data
    end = len(body)
    if type(header) is not dict:
        header = _as_dict(header, "the request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("the request needs a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    all_binary = True
    for raw in raw_inputs:
        if type(raw) is not dict:
            raw = _as_dict(raw, "each input")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("each input needs a string 'name'")
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        spec = model.input_spec(name)
        datatype = raw.get("datatype")
        if datatype != spec.datatype:
            raise InvalidInput(f"input '{name}' has datatype {datatype}, model '{model.name}' expects {spec.datatype}")
        shape = _shape(raw.get("shape"), name)
        params = raw.get("parameters")
        size = None if params is None else _as_dict(params, f"parameters of input '{name}'").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if header_length is None:
                raise InvalidRequest(
                    f"input '{name}' declares binary data but the request has no Inference-Header-Content-Length"
                )
            if offset + size > end:
                raise InvalidInput(f"input '{name}' declares {size} bytes of binary data; only {end - offset} remain")
            inputs[name] = _from_binary(body, offset, size, datatype, shape, name)
            offset += size
        elif "data" in raw:
            inputs[name] = _from_json_data(raw["data"], datatype, shape, name)
            all_binary = False
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    if offset != end:
        raise InvalidRequest(f"the body has {end - offset} bytes of binary data that no input claims")

    params = header.get("parameters")
    params = {} if params is None else _as_dict(params, "request parameters")
    binary_default = params.get("binary_data_output") is True
    raw_outputs = header.get("outputs")
    outputs = [] if raw_outputs is None else _requested_outputs(raw_outputs, binary_default, model)
    request_id = header.get("id")
    request = InferRequest(inputs, request_id if isinstance(request_id, str) else None, outputs, binary_default, params)
    return request, all_binary


def _requested_outputs(raw_outputs: Any, binary_default: bool, model: OnnxModel) -> list[tuple[str, bool]]:
    if not isinstance(raw_outputs, list):
        raise InvalidRequest("'outputs' must be a list")
    known = set(model.output_names)
    outputs: list[tuple[str, bool]] = []
    for raw in raw_outputs:
        raw = _as_dict(raw, "each requested output")
        name = raw.get("name")
        if name not in known:
            raise InvalidRequest(f"unknown output {name!r}; model '{model.name}' has: {', '.join(known)}")
        out_params = _as_dict(raw.get("parameters"), f"parameters of output '{name}'")
        outputs.append((name, bool(out_params.get("binary_data", binary_default))))
    return outputs


def _json_data(array: np.ndarray) -> Any:
    kind = array.dtype.kind
    if kind == "O":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    if kind == "U":
        return array.reshape(-1).tolist()
    # orjson serialises contiguous numpy arrays natively; V2 data is flat.
    return array if array.ndim == 1 else array.reshape(-1)


def _binary_data(array: np.ndarray) -> bytes:
    if array.dtype.kind in ("O", "U", "S"):
        parts: list[bytes] = []
        for item in array.reshape(-1):
            encoded = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH_PREFIX.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    return array.tobytes()  # C order whatever the array's layout


def encode_response(
    model_name: str,
    model_version: str,
    results: Mapping[str, np.ndarray],
    request: InferRequest,
) -> tuple[bytes, int | None]:
    """Encode outputs. Returns the body and, when binary data follows, the JSON header's length."""
    wanted = request.outputs or [(name, request.binary_output) for name in results]
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name, as_binary in wanted:
        array = results[name]
        if as_binary:
            data = _binary_data(array)
            buffers.append(data)
            outputs.append(
                {
                    "name": name,
                    "datatype": v2_datatype_of(array),
                    "shape": array.shape,
                    "parameters": {"binary_data_size": len(data)},
                }
            )
        else:
            outputs.append(
                {"name": name, "datatype": v2_datatype_of(array), "shape": array.shape, "data": _json_data(array)}
            )
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    buffers.insert(0, header)
    return b"".join(buffers), len(header)


def tensor_from_bytes(data: bytes, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """One tensor from its raw bytes, laid out as the binary extension says (gRPC raw contents, raw requests)."""
    return _from_binary(data, 0, len(data), datatype, shape, name)


def tensor_bytes(array: np.ndarray) -> bytes:
    """One tensor's raw bytes, laid out as the binary extension says."""
    return _binary_data(array)
