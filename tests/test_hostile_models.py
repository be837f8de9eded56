"""Model files built to hurt: each is refused with a reason and the old version keeps serving."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edge_module.errors import ModelLoadError
from edge_module.model_check import check_in_subprocess, static_problems
from tests.support.inprocess import ADMIN_TOKEN, running_module
from tests.support.models import iris_classifier

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REQUEST = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.0, 3.4, 1.5, 0.2]}]}


def _graph_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], dims: list[int | str]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17)] + [
        helper.make_opsetid(node.domain, 1) for node in nodes if node.domain not in ("", "ai.onnx")
    ]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def external_data_model() -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    return _graph_model([helper.make_node("Add", ["x", "w"], ["y"])], [weight], ["n", 4])


def custom_domain_model() -> bytes:
    return _graph_model([helper.make_node("Exfiltrate", ["x"], ["y"], domain="evil.ops")], [], ["n", 4])


def absurd_shape_model() -> bytes:
    return _graph_model([helper.make_node("Identity", ["x"], ["y"])], [], ["n", 10**12])


def deep_rank_model() -> bytes:
    return _graph_model([helper.make_node("Identity", ["x"], ["y"])], [], [1] * 12)


HOSTILE = {
    "external data path traversal": (external_data_model, "external data ('../../etc/passwd')"),
    "custom operator domain": (custom_domain_model, "unexpected operator domain(s): evil.ops"),
    "absurd declared shape": (absurd_shape_model, "absurd dimension"),
    "absurd rank": (deep_rank_model, "rank 12"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_static_checks_name_the_problem(case: str) -> None:
    build, message = HOSTILE[case]
    problems = static_problems(build())
    assert any(message in problem for problem in problems), problems


def test_models_from_our_pipeline_pass() -> None:
    assert static_problems(iris_classifier().onnx) == []


def _load(onnx_bytes: bytes, version: str) -> dict[str, object]:
    return {"parameters": {f"file:{version}/model.onnx": base64.b64encode(onnx_bytes).decode()}}


@pytest.mark.slow
async def test_hostile_files_are_refused_and_the_old_version_keeps_serving(model_dir: Path) -> None:
    async with running_module(model_dir, max_model_bytes=200_000) as (module, client):
        good = await client.post(
            "/v2/repository/models/iris/load", json=_load(iris_classifier().onnx, "1"), headers=ADMIN
        )
        assert good.status_code == 200, good.text
        cases = {name: build() for name, (build, _) in HOSTILE.items()}
        cases["over the size cap"] = iris_classifier().onnx + b"\0" * 200_000
        cases["random bytes"] = b"\x08\x07" + bytes(range(256)) * 10
        for number, (case, payload) in enumerate(cases.items(), start=2):
            refused = await client.post(
                "/v2/repository/models/iris/load", json=_load(payload, str(number)), headers=ADMIN
            )
            assert refused.status_code == 400, (case, refused.text)
            assert "error" in refused.json()
            served = await client.post("/v2/models/iris/infer", json=REQUEST)
            assert served.status_code == 200 and served.json()["model_version"] == "1", case
        record = module.store.get("iris")
        assert record is not None and [v.version for v in record.versions] == ["1"]
        assert sorted(p.name for p in (model_dir / "blobs").iterdir()) == [record.active.sha256]


def test_a_check_that_cannot_start_is_an_os_error_not_the_models_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(iris_classifier().onnx)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(OSError, match="could not start the model check") as raised:
        check_in_subprocess(model, max_bytes=10_000_000)
    assert not isinstance(raised.value, ModelLoadError)
