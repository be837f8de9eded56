"""Triton's raw binary request over real HTTP, built by hand: header length 0, the body is the tensor."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from tests.support.models import diabetes_regressor, iris_classifier, served_model_args
from tests.support.rawhttp import RawResponse, read_response
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleProcess]:
    root = tmp_path_factory.mktemp("raw")
    args = served_model_args(root)
    with ModuleProcess(root / "store", args=args) as process:
        yield process


def post_raw(module: ModuleProcess, model: str, body: bytes, header_length: str = "0") -> RawResponse:
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {header_length}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", module.port), timeout=30) as sock:
        sock.sendall(head + body)
        return read_response(sock)


def binary_outputs(reply: RawResponse) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The JSON header and every output tensor of a binary response."""
    assert reply.status == 200, reply.raw
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    header = orjson.loads(reply.body[:length])
    tensors, offset = {}, length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64}[output["datatype"]]
        tensors[output["name"]] = np.frombuffer(reply.body[offset : offset + size], dtype).reshape(output["shape"])
        offset += size
    assert offset == len(reply.body)
    return header, tensors


def test_the_body_is_the_one_input_and_outputs_come_back_binary(module: ModuleProcess) -> None:
    iris = iris_classifier()
    x = iris.x_test[:9]
    header, outputs = binary_outputs(post_raw(module, "iris", x.tobytes()))
    assert header["model_name"] == "iris" and header["model_version"] == "1" and header["id"]
    assert outputs["label"].tolist() == iris.estimator.predict(x).tolist()
    np.testing.assert_allclose(outputs["probabilities"], iris.estimator.predict_proba(x), atol=1e-5)

    diabetes = diabetes_regressor()
    _, outputs = binary_outputs(post_raw(module, "diabetes", diabetes.x_test[:1].tobytes()))
    np.testing.assert_allclose(outputs["variable"].ravel(), diabetes.estimator.predict(diabetes.x_test[:1]), rtol=1e-4)


@pytest.mark.parametrize(
    ("model", "body", "status", "message"),
    [
        ("iris", np.zeros(6, np.float32).tobytes(), 400, "multiple of 16 bytes; it has 24"),
        ("iris", b"\x00" * 17, 400, "multiple of 16 bytes; it has 17"),
        ("iris", b"", 400, "non-zero multiple of 16 bytes; it has 0"),
        ("iris", np.full(4, np.nan, np.float32).tobytes(), 400, "NaN"),
        ("mixed", np.zeros(4, np.float32).tobytes(), 400, "needs a model with one input; model 'mixed' has 2"),
        ("missing", np.zeros(4, np.float32).tobytes(), 404, "unknown model"),
    ],
    ids=["short-row", "odd-bytes", "empty", "nan", "two-inputs", "unknown-model"],
)
def test_a_body_that_does_not_fit_gets_a_clear_4xx(
    module: ModuleProcess, model: str, body: bytes, status: int, message: str
) -> None:
    reply = post_raw(module, model, body)
    assert reply.status == status, reply.raw
    assert message in orjson.loads(reply.body)["error"]
    assert post_raw(module, "iris", np.zeros(4, np.float32).tobytes()).status == 200  # still serving
