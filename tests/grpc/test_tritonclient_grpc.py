"""The real tritonclient.grpc against the real module process: health, metadata, inference, errors, token, TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.service_pb2 as triton_pb
import tritonclient.grpc.service_pb2_grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.support.iothub import make_tls_files
from tests.support.models import diabetes_regressor, iris_classifier, mixed_types_pipeline, served_model_args
from tests.support.server import ModuleProcess, free_port

pytestmark = pytest.mark.slow
API_TOKEN = "grpc-test-api-token-0123456789"
AUTH = {"authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleProcess]:
    root = tmp_path_factory.mktemp("grpc")
    args = served_model_args(root)
    env = {"EDGE_GRPC_PORT": str(free_port()), "EDGE_API_TOKEN": API_TOKEN}
    with ModuleProcess(root / "store", env=env, args=args) as process:
        yield process


@pytest.fixture(scope="module")
def grpc_url(module: ModuleProcess) -> str:
    return f"127.0.0.1:{module.env['EDGE_GRPC_PORT']}"


@pytest.fixture
def client(grpc_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(grpc_url)
    yield client
    client.close()


@pytest.fixture
def stub(grpc_url: str) -> Iterator[triton_grpc.GRPCInferenceServiceStub]:
    """tritonclient's own generated stub, for requests its high-level API does not build (typed, malformed)."""
    with grpc.insecure_channel(grpc_url) as channel:
        yield triton_grpc.GRPCInferenceServiceStub(channel)


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris", headers=AUTH) and client.is_model_ready("iris", "1", headers=AUTH)
    assert not client.is_model_ready("missing", headers=AUTH)
    assert not client.is_model_ready("iris", "9", headers=AUTH)
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "edge-module" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("iris", headers=AUTH, as_json=True)
    assert meta["name"] == "iris" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert {output["name"] for output in meta["outputs"]} == {"label", "probabilities"}
    mixed = client.get_model_metadata("mixed", headers=AUTH, as_json=True)
    assert [(i["name"], i["datatype"]) for i in mixed["inputs"]] == [("temperature", "FP32"), ("site", "BYTES")]


def test_raw_infer_matches_scikit_learn(client: triton.InferenceServerClient) -> None:
    iris = iris_classifier()
    x = iris.x_test
    result = client.infer("iris", [_input("input", x, "FP32")], request_id="req-1", headers=AUTH)
    assert result.as_numpy("label").tolist() == iris.estimator.predict(x).tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), iris.estimator.predict_proba(x), atol=1e-5)
    response = result.get_response(as_json=True)
    assert response["model_name"] == "iris" and response["model_version"] == "1" and response["id"] == "req-1"

    diabetes = diabetes_regressor()
    result = client.infer("diabetes", [_input("input", diabetes.x_test, "FP32")], headers=AUTH)
    np.testing.assert_allclose(
        result.as_numpy("variable").ravel(), diabetes.estimator.predict(diabetes.x_test), rtol=1e-4
    )


def test_raw_bytes_inputs_and_requested_outputs(client: triton.InferenceServerClient) -> None:
    mixed = mixed_types_pipeline()
    frame = mixed.x_test
    temperature = frame[:, :1].astype(np.float32)
    site = frame[:, 1:].astype(object)
    outputs = [triton.InferRequestedOutput("probabilities")]
    result = client.infer(
        "mixed",
        [_input("temperature", temperature, "FP32"), _input("site", site, "BYTES")],
        outputs=outputs,
        headers=AUTH,
    )
    import pandas as pd

    expected = mixed.estimator.predict_proba(pd.DataFrame({"temperature": temperature.ravel(), "site": site.ravel()}))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    assert result.as_numpy("label") is None  # only what was asked for


def test_typed_contents_infer_matches_scikit_learn(stub: triton_grpc.GRPCInferenceServiceStub) -> None:
    iris = iris_classifier()
    x = iris.x_test[:7]
    request = triton_pb.ModelInferRequest(model_name="iris", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    assert not response.raw_output_contents  # typed in, typed out
    by_name = {output.name: output for output in response.outputs}
    assert list(by_name["label"].contents.int64_contents) == iris.estimator.predict(x).tolist()
    probabilities = np.array(by_name["probabilities"].contents.fp32_contents).reshape(
        list(by_name["probabilities"].shape)
    )
    np.testing.assert_allclose(probabilities, iris.estimator.predict_proba(x), atol=1e-5)
    assert response.id == "typed" and response.model_version == "1"


def test_every_bad_request_gets_its_status_and_serving_continues(
    client: triton.InferenceServerClient, stub: triton_grpc.GRPCInferenceServiceStub
) -> None:
    x = np.zeros((2, 4), np.float32)

    def fails(request: triton_pb.ModelInferRequest, code: grpc.StatusCode, text: str) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=tuple(AUTH.items()))
        assert caught.value.code() == code, caught.value.details()
        assert text in (caught.value.details() or ""), caught.value.details()

    def raw_request(model: str, shape: list[int], datatype: str, content: bytes) -> triton_pb.ModelInferRequest:
        request = triton_pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype=datatype, shape=shape)
        request.raw_input_contents.append(content)
        return request

    fails(raw_request("missing", [2, 4], "FP32", x.tobytes()), grpc.StatusCode.NOT_FOUND, "unknown model 'missing'")
    versioned = raw_request("iris", [2, 4], "FP32", x.tobytes())
    versioned.model_version = "9"
    fails(versioned, grpc.StatusCode.NOT_FOUND, "unknown version '9'")
    fails(raw_request("iris", [2, 3], "FP32", x[:, :3].tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "expects [-1, 4]")
    fails(
        raw_request("iris", [2, 4], "FP64", x.astype(np.float64).tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expects FP32",
    )
    fails(raw_request("iris", [2, 4], "FP32", x.tobytes()[:-4]), grpc.StatusCode.INVALID_ARGUMENT, "has 28 bytes")
    two = raw_request("iris", [2, 4], "FP32", x.tobytes())
    two.raw_input_contents.append(b"extra")
    fails(two, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2 entries")
    fails(triton_pb.ModelInferRequest(model_name="iris"), grpc.StatusCode.INVALID_ARGUMENT, "at least one input")
    only_site = raw_request("mixed", [1, 1], "BYTES", b"\x04\x00\x00\x00east")
    only_site.inputs[0].name = "site"
    fails(only_site, grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) 'temperature'")
    fails(
        raw_request("iris", [1, 4], "FP32", np.array([[1, np.nan, 2, 3]], np.float32).tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    )
    typed = triton_pb.ModelInferRequest(model_name="iris")
    typed.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp64_contents.extend([1, 2, 3, 4])
    fails(typed, grpc.StatusCode.INVALID_ARGUMENT, "FP32 goes in fp32_contents")
    unknown_output = raw_request("iris", [2, 4], "FP32", x.tobytes())
    unknown_output.outputs.add(name="nope")
    fails(unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'nope'")

    with pytest.raises(InferenceServerException) as missing_token:
        client.infer("iris", [_input("input", x, "FP32")])
    assert missing_token.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as wrong_token:
        client.get_model_metadata("iris", headers={"authorization": "Bearer not-the-token-0123456789"})
    assert wrong_token.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as unimplemented:
        client.get_model_config("iris", headers=AUTH)
    assert unimplemented.value.status() == "StatusCode.UNIMPLEMENTED"

    assert client.is_server_live()  # health stays open without the token, as on HTTP
    result = client.infer("iris", [_input("input", x, "FP32")], headers=AUTH)
    assert result.as_numpy("label").shape == (2,)


def test_failures_count_in_the_shared_statistics(module: ModuleProcess, client: triton.InferenceServerClient) -> None:
    import httpx

    def failed() -> int:
        stats = httpx.get(f"{module.url}/v2/models/diabetes/stats", headers=AUTH, timeout=10).json()
        return int(stats["model_stats"][0]["inference_stats"]["fail"]["count"])

    def succeeded() -> int:
        stats = httpx.get(f"{module.url}/v2/models/diabetes/stats", headers=AUTH, timeout=10).json()
        return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])

    before_fail, before_ok = failed(), succeeded()
    x = diabetes_regressor().x_test[:3]
    client.infer("diabetes", [_input("input", x, "FP32")], headers=AUTH)
    with pytest.raises(InferenceServerException):
        client.infer("diabetes", [_input("input", x[:, :5], "FP32")], headers=AUTH)
    assert (failed(), succeeded()) == (before_fail + 1, before_ok + 1)


def test_grpc_over_tls_with_certificate_files(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    env = {
        "EDGE_TLS_CERT_FILE": str(tls.server_cert),
        "EDGE_TLS_KEY_FILE": str(tls.server_key),
        "EDGE_GRPC_PORT": str(port),
    }
    with ModuleProcess(tmp_path / "store", env=env, ca_file=tls.ca_cert):
        secure = triton.InferenceServerClient(f"127.0.0.1:{port}", ssl=True, root_certificates=str(tls.ca_cert))
        try:
            assert secure.is_server_ready()
            row = np.array([[13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050]], np.float32)
            assert secure.infer("wine", [_input("input", row, "FP32")]).as_numpy("label").tolist() == [0]
        finally:
            secure.close()
        plain = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            with pytest.raises(InferenceServerException):
                plain.is_server_live(client_timeout=5)  # no plaintext on a TLS port
        finally:
            plain.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_from_tritonclient(client: triton.InferenceServerClient, algorithm: str) -> None:
    iris = iris_classifier()
    x = iris.x_test
    result = client.infer("iris", [_input("input", x, "FP32")], headers=AUTH, compression_algorithm=algorithm)
    assert result.as_numpy("label").tolist() == iris.estimator.predict(x).tolist()
