"""The parts of an ONNX file that vetting needs, read straight from the protobuf wire format.

The edge image does not ship the ``onnx`` package (about 20 MB with protobuf and ml_dtypes) to read a handful of
fields. This reader walks only the messages that ``model_check`` inspects and skips every other field as opaque
bytes, so a large initializer costs nothing. Field numbers are those of ``onnx/onnx.proto``.

Protobuf merges repeated occurrences of a singular message field; the walk visits every occurrence, so a file
cannot hide a node or a tensor from it by splitting a message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_NESTING = 16  # subgraphs within subgraphs: real models nest a few deep; protobuf stops at 100 messages

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_TENSOR_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass
class ExternalTensor:
    name: str
    location: str


@dataclass
class ValueShape:
    name: str
    dims: list[int | None]  # None: a symbolic or absent dimension


@dataclass
class ModelSummary:
    """What vetting looks at: operator domains, model functions, external data and declared graph I/O shapes."""

    has_graph: bool = False
    domains: set[str] = field(default_factory=set)
    function_count: int = 0
    external_tensors: list[ExternalTensor] = field(default_factory=list)
    graph_io: list[ValueShape] = field(default_factory=list)


Value = int | memoryview


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def fields(buf: memoryview, scalars: bool = True) -> Iterator[tuple[int, Value]]:
    """(field number, value) pairs of one message: an int for scalars, a memoryview of the payload otherwise.

    With ``scalars=False`` only length-delimited fields are yielded, and a run of one repeated scalar field is
    skipped at C speed: tree ensembles keep their node tables in unpacked attributes of 100,000s of fields.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        key_end = pos
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        value: Value
        if wire_type == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            width = 8 if wire_type == _FIXED64 else 4
            if pos + width > end:
                raise WireError(f"truncated field {number}")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire_type == _LENGTH:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {number} runs past the end of its message")
            value = buf[pos : pos + length]
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {number})")
        if scalars or wire_type == _LENGTH:
            yield number, value
        else:
            matched = _scalar_run(bytes(buf[start:key_end]), wire_type).match(buf, pos)
            pos = matched.end() if matched else pos


@functools.cache
def _scalar_run(key: bytes, wire_type: int) -> re.Pattern[bytes]:
    """Consecutive complete occurrences of one scalar field, given its key bytes."""
    payload = (
        rb"[\x80-\xff]{0,9}[\x00-\x7f]" if wire_type == _VARINT else rb".{%d}" % (8 if wire_type == _FIXED64 else 4)
    )
    return re.compile(rb"(?:" + re.escape(key) + payload + rb")*", re.DOTALL)


def _message(value: Value, what: str) -> memoryview:
    if not isinstance(value, memoryview):
        raise WireError(f"{what} is not a message")
    return value


def _text(value: Value, what: str) -> str:
    return bytes(_message(value, what)).decode("utf-8", errors="replace")


def _int64(value: Value, what: str) -> int:
    if isinstance(value, memoryview):
        raise WireError(f"{what} is not an integer")
    return value - (1 << 64) if value >= 1 << 63 else value


def summarize(data: bytes) -> ModelSummary:
    """Walk a serialized ModelProto; raise WireError when the bytes are not a well-formed message."""
    summary = ModelSummary()
    for number, value in fields(memoryview(data)):
        if number == 7:  # graph
            summary.has_graph = True
            _graph(_message(value, "graph"), summary, depth=0)
        elif number == 8:  # opset_import
            for sub, domain in fields(_message(value, "opset_import")):
                if sub == 1:
                    summary.domains.add(_text(domain, "opset domain"))
        elif number == 25:  # functions
            _message(value, "function")
            summary.function_count += 1
    return summary


def _graph(buf: memoryview, summary: ModelSummary, depth: int) -> None:
    if depth > MAX_NESTING:
        raise WireError(f"subgraphs nested more than {MAX_NESTING} deep")
    for number, value in fields(buf):
        if number == 1:  # node
            _node(_message(value, "node"), summary, depth)
        elif number == 5:  # initializer
            _tensor(_message(value, "initializer"), summary)
        elif number == 15:  # sparse_initializer
            _sparse_tensor(_message(value, "sparse initializer"), summary)
        elif number in (11, 12) and depth == 0:  # input, output of the main graph
            summary.graph_io.append(_value_info(_message(value, "graph input/output")))


def _node(buf: memoryview, summary: ModelSummary, depth: int) -> None:
    domain = ""
    for number, value in fields(buf):
        if number == 7:
            domain = _text(value, "node domain")
        elif number == 5:
            _attribute(_message(value, "attribute"), summary, depth)
    summary.domains.add(domain)


def _attribute(buf: memoryview, summary: ModelSummary, depth: int) -> None:
    for number, value in fields(buf, scalars=False):
        if number in (5, 10):  # t, tensors
            _tensor(_message(value, "attribute tensor"), summary)
        elif number in (6, 11):  # g, graphs
            _graph(_message(value, "attribute graph"), summary, depth + 1)
        elif number in (22, 23):  # sparse_tensor, sparse_tensors
            _sparse_tensor(_message(value, "attribute sparse tensor"), summary)


def _sparse_tensor(buf: memoryview, summary: ModelSummary) -> None:
    for number, value in fields(buf):
        if number in (1, 2):  # values, indices
            _tensor(_message(value, "sparse tensor part"), summary)


def _tensor(buf: memoryview, summary: ModelSummary) -> None:
    name = ""
    external = False
    location = "?"
    for number, value in fields(buf):
        if number == 8:
            name = _text(value, "tensor name")
        elif number == 14:
            external = external or _int64(value, "data_location") == _TENSOR_EXTERNAL
        elif number == 13:  # external_data: StringStringEntryProto
            external = True
            entry = {sub: _text(text, "external_data entry") for sub, text in fields(_message(value, "entry"))}
            if entry.get(1) == "location":
                location = entry.get(2, "?")
    if external:
        summary.external_tensors.append(ExternalTensor(name, location))


def _value_info(buf: memoryview) -> ValueShape:
    shape = ValueShape("", [])
    for number, value in fields(buf):
        if number == 1:
            shape.name = _text(value, "value name")
        elif number == 2:  # type: TypeProto
            for sub, tensor_type in fields(_message(value, "type")):
                if sub == 1:  # tensor_type
                    _add_dims(_message(tensor_type, "tensor type"), shape.dims)
    return shape


def _add_dims(tensor_type: memoryview, dims: list[int | None]) -> None:
    """Append the tensor type's dimensions: split occurrences of a message merge, so their dims add up."""
    for number, value in fields(tensor_type):
        if number == 2:  # shape: TensorShapeProto
            for sub, dim in fields(_message(value, "shape")):
                if sub == 1:
                    dims.append(_dimension(_message(dim, "dimension")))


def _dimension(buf: memoryview) -> int | None:
    size: int | None = None
    for number, value in fields(buf):
        if number == 1:  # dim_value
            size = _int64(value, "dim_value")
        elif number == 2:  # dim_param: the last member of the oneof set wins
            size = None
    return size
