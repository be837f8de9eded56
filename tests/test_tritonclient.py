"""The real tritonclient against the real module process on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.inprocess import ADMIN_TOKEN
from tests.support.models import TrainedModel, iris_classifier
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return iris_classifier()


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory, trained: TrainedModel) -> Iterator[ModuleProcess]:
    root = tmp_path_factory.mktemp("triton")
    path = root / "iris.onnx"
    path.write_bytes(trained.onnx)
    store = root / "store"
    with ModuleProcess(store, env={"EDGE_ADMIN_TOKEN": ADMIN_TOKEN}, args=["--model", f"iris={path}"]) as process:
        yield process


@pytest.fixture
def client(module: ModuleProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{module.port}")
    yield client
    client.close()


def _infer(client: triton.InferenceServerClient, x: np.ndarray, binary: bool) -> triton.InferResult:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    return client.infer("iris", [tensor], outputs=outputs)


def test_health_and_metadata(client: triton.InferenceServerClient, trained: TrainedModel) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris")
    assert not client.is_model_ready("missing")
    server = client.get_server_metadata()
    assert server["name"] == "edge-module" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("iris")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"]["feature_names"] == list(trained.feature_names)
    config = client.get_model_config("iris")
    assert config["input"][0]["dims"] == [-1, 4]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_scikit_learn(client: triton.InferenceServerClient, trained: TrainedModel, binary: bool) -> None:
    x = trained.x_test
    result = _infer(client, x, binary)
    assert result.as_numpy("label").tolist() == trained.estimator.predict(x).tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), trained.estimator.predict_proba(x), atol=1e-5)
    response = result.get_response()
    assert response["model_name"] == "iris" and response["model_version"] == "1"


def test_default_call_is_binary_and_all_outputs(client: triton.InferenceServerClient, trained: TrainedModel) -> None:
    x = trained.x_test[:3]
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("iris", [tensor], request_id="r1")
    assert result.get_response()["id"] == "r1"
    assert result.as_numpy("label").tolist() == trained.estimator.predict(x).tolist()
    assert result.as_numpy("probabilities").shape == (3, 3)


def test_compressed_requests(client: triton.InferenceServerClient, trained: TrainedModel) -> None:
    x = trained.x_test
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("iris", [tensor], request_compression_algorithm=algorithm)
        assert result.as_numpy("label").tolist() == trained.estimator.predict(x).tolist()


def test_errors_surface_as_server_exceptions(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match=r"expects \[-1, 4\]"):
        client.infer("iris", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("missing", [tensor])
    assert client.is_server_ready()


def test_statistics_and_repository(client: triton.InferenceServerClient, trained: TrainedModel) -> None:
    _infer(client, trained.x_test[:2], True)
    stats = client.get_inference_statistics("iris")["model_stats"][0]
    assert stats["name"] == "iris" and stats["inference_count"] >= 2
    index = client.get_model_repository_index()
    assert {"name": "iris", "version": "1", "state": "READY", "reason": ""} in index


def test_load_a_new_version_with_tritonclient(module: ModuleProcess, client: triton.InferenceServerClient) -> None:
    newer = iris_classifier("7", 25)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    client.load_model("iris2", headers=headers, files={"file:7/model.onnx": newer.onnx})
    meta = client.get_model_metadata("iris2")
    assert meta["versions"] == ["7"]
    x = newer.x_test[:4]
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("iris2", [tensor])
    assert result.get_response()["model_version"] == "7"
    assert result.as_numpy("label").tolist() == newer.estimator.predict(x).tolist()
    with pytest.raises(InferenceServerException):
        client.unload_model("iris2")  # no token
    client.unload_model("iris2", headers=headers)
    assert not client.is_model_ready("iris2")
    # The --model file is served but never written to the store.
    assert not (module.model_dir / "models" / "iris.json").exists()


def test_oversized_and_malformed_bodies_over_real_http(module: ModuleProcess) -> None:
    with httpx.Client(base_url=module.url, timeout=30) as http:
        big = http.post("/v2/models/iris/infer", content=b"0" * (10 * 1024 * 1024))
        assert big.status_code == 413 and "error" in big.json()
        bad = http.post("/v2/models/iris/infer", content=b'{"inputs": [{"name": "input"')
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
        ok = http.post(
            "/v2/models/iris/infer",
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.0, 3.4, 1.5, 0.2]}]},
        )
        assert ok.status_code == 200
