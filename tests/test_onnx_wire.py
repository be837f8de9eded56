"""The edge's own ONNX wire reader against the onnx package's parser, on real and hostile models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edge_module import onnx_wire
from edge_module.model_check import static_problems
from tests.support.models import diabetes_regressor, iris_classifier, mixed_types_pipeline
from tests.test_hostile_models import HOSTILE

DEFAULT_MODEL = Path(__file__).parents[1] / "edge_module" / "default_model" / "model.onnx"


def _text(value: str | bytes) -> str:
    """protobuf hands a string field that is not valid UTF-8 back as bytes; ours decodes it with U+FFFD."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def reference(data: bytes) -> tuple[set[str], int, list[tuple[str, str]], list[tuple[str, list[int | None]]]]:
    """The same summary, computed with the onnx package."""
    model = onnx.load_model_from_string(data)
    domains = {_text(opset.domain) for opset in model.opset_import}
    external: list[tuple[str, str]] = []

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_location == TensorProto.EXTERNAL or t.external_data:
            location = next((_text(e.value) for e in t.external_data if _text(e.key) == "location"), "?")
            external.append((_text(t.name), location))

    def sparse(s: onnx.SparseTensorProto) -> None:
        if s.HasField("values"):
            tensor(s.values)
        if s.HasField("indices"):
            tensor(s.indices)

    def graph(g: onnx.GraphProto) -> None:
        for node in g.node:
            domains.add(_text(node.domain))
            for a in node.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)
                if a.HasField("sparse_tensor"):
                    sparse(a.sparse_tensor)
                for s in a.sparse_tensors:
                    sparse(s)
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            sparse(s)

    graph(model.graph)
    io = [
        (_text(v.name), [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
        for v in list(model.graph.input) + list(model.graph.output)
    ]
    return domains, len(model.functions), external, io


def ours(data: bytes) -> tuple[set[str], int, list[tuple[str, str]], list[tuple[str, list[int | None]]]]:
    summary = onnx_wire.summarize(data)
    external = [(t.name, t.location) for t in summary.external_tensors]
    return summary.domains, summary.function_count, external, [(v.name, v.dims) for v in summary.graph_io]


def _external(name: str, location: str) -> onnx.TensorProto:
    weight = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    return weight


def subgraph_model() -> bytes:
    """An If whose branches hide a custom-domain node, an external constant and a sparse external tensor."""
    hidden = helper.make_node("Constant", [], ["c"], value=_external("deep", "/etc/shadow"))
    custom = helper.make_node("Smuggle", ["c"], ["y"], domain="evil.nested")
    then_branch = helper.make_graph([hidden, custom], "then", [], [helper.make_tensor_value_info("y", 1, [4])])
    indices = helper.make_tensor("idx", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(_external("sparse_values", "../x.bin"), indices, [4])
    else_const = helper.make_node("Constant", [], ["y"], sparse_value=sparse)
    else_branch = helper.make_graph([else_const], "else", [], [helper.make_tensor_value_info("y", 1, [4])])
    branch = helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)
    graph = helper.make_graph(
        [branch],
        "nested",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", -3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    function = helper.make_function("local", "f", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], [])
    model.functions.append(function)
    data: bytes = model.SerializeToString()
    return data


REAL = {
    "default model": lambda: DEFAULT_MODEL.read_bytes(),
    "iris random forest": lambda: iris_classifier().onnx,
    "diabetes ridge": lambda: diabetes_regressor().onnx,
    "mixed-type pipeline": lambda: mixed_types_pipeline().onnx,
}
CASES: dict[str, Any] = {**REAL, **{name: build for name, (build, _) in HOSTILE.items()}, "subgraphs": subgraph_model}


@pytest.mark.parametrize("case", list(CASES))
def test_summary_matches_the_onnx_parser(case: str) -> None:
    data = CASES[case]()
    assert ours(data) == reference(data)


def test_nested_problems_are_found() -> None:
    domains, functions, external, io = ours(subgraph_model())
    assert "evil.nested" in domains and functions == 1
    assert sorted(external) == [("deep", "/etc/shadow"), ("sparse_values", "../x.bin")]
    assert io == [("cond", []), ("y", [None, -3])]
    problems = static_problems(subgraph_model())
    assert any("evil.nested" in p for p in problems)
    assert any("'deep' references external data ('/etc/shadow')" in p for p in problems)
    assert any("absurd dimension -3" in p for p in problems)
    assert "model-local functions are not accepted" in problems


def test_a_graph_split_in_two_occurrences_is_walked_whole() -> None:
    """Protobuf merges repeated singular fields, so onnxruntime would see both halves: so must vetting."""
    clean = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [], []),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    smuggled = onnx.ModelProto()
    smuggled.graph.node.append(helper.make_node("Smuggle", ["x"], ["y"], domain="evil.split"))
    data = clean.SerializeToString() + smuggled.SerializeToString()
    assert "evil.split" in reference(data)[0]
    assert ours(data) == reference(data)


def test_a_shape_split_in_two_occurrences_counts_every_dimension() -> None:
    """Split type messages merge in protobuf, so their dimensions add up: a rank cannot hide across them."""
    model = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
    first = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * 5)
    more = onnx.TypeProto()
    more.tensor_type.shape.dim.add().dim_value = 7
    for _ in range(4):
        more.tensor_type.shape.dim.add().dim_value = 1
    split_input = first.SerializeToString() + _field(2, more.SerializeToString())  # ValueInfoProto.type, twice
    data = model.SerializeToString() + _graph_input(split_input)
    assert reference(data)[3] == [("x", [1] * 5 + [7] + [1] * 4)]
    assert ours(data) == reference(data)
    assert any("declares rank 10" in problem for problem in static_problems(data))


def _field(number: int, payload: bytes) -> bytes:
    length, encoded = len(payload), b""
    while True:
        encoded += bytes([(length & 0x7F) | (0x80 if length > 0x7F else 0)])
        length >>= 7
        if not length:
            return bytes([number << 3 | 2]) + encoded + payload


def _graph_input(value_info: bytes) -> bytes:
    """A second occurrence of ModelProto.graph (they merge) that adds one graph input."""
    return _field(7, _field(11, value_info))


def test_nesting_beyond_the_limit_is_refused() -> None:
    graph = helper.make_graph([], "leaf", [], [])
    for depth in range(onnx_wire.MAX_NESTING + 2):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph)
        graph = helper.make_graph([node], f"level{depth}", [], [])
    data = helper.make_model(graph).SerializeToString()
    assert static_problems(data) == [
        f"not a loadable ONNX file: subgraphs nested more than {onnx_wire.MAX_NESTING} deep"
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "it has no graph"),
        (b"\x3a", "truncated varint"),
        (b"\x3a\x10abc", "field 7 runs past the end of its message"),
        (b"\x38\x01", "graph is not a message"),
        (b"\x3b", "unsupported wire type 3"),
        (b"\x00", "field number 0"),
        (b"\x08" + b"\xff" * 11, "varint longer than 10 bytes"),
    ],
)
def test_malformed_bytes_get_a_reason(data: bytes, reason: str) -> None:
    problems = static_problems(data)
    assert len(problems) == 1 and problems[0].startswith("not a loadable ONNX file") and reason in problems[0]


def _truncations_and_flips() -> st.SearchStrategy[bytes]:
    base = iris_classifier().onnx
    truncated = st.integers(0, len(base) - 1).map(lambda n: base[:n])
    flipped = st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255)).map(
        lambda p: base[: p[0]] + bytes([base[p[0]] ^ p[1]]) + base[p[0] + 1 :]
    )
    return st.one_of(truncated, flipped, st.binary(max_size=512))


@settings(max_examples=300, deadline=None)
@given(_truncations_and_flips())
def test_damaged_files_fail_cleanly_and_never_disagree_with_onnx(data: bytes) -> None:
    try:
        mine = ours(data)
    except onnx_wire.WireError:
        return  # refused with a reason; the static check turns it into a problem
    try:
        theirs = reference(data)
    except Exception:  # onnx's parser refused bytes ours could walk: onnxruntime's load is the next gate
        return
    assert mine == theirs
