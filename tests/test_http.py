from __future__ import annotations

import asyncio
import base64
import gzip
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from edge_module.module import default_model_manifest
from tests.support.inprocess import ADMIN_TOKEN, running_module
from tests.support.models import WINE_ROW, iris_classifier, mixed_types_pipeline

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wine_request(rows: list[list[float]] | None = None) -> dict[str, object]:
    rows = rows or [WINE_ROW]
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 13], "data": rows}]}


async def assert_still_serves(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/wine/infer", json=wine_request())
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [0]


async def test_default_model_serves_with_metadata(model_dir: Path) -> None:
    async with running_module(model_dir) as (_, client):
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).status_code == 200
        server = (await client.get("/v2")).json()
        assert server["name"] == "edge-module" and "binary_tensor_data" in server["extensions"]
        meta = (await client.get("/v2/models/wine")).json()
        manifest = default_model_manifest()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 13]}]
        assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
        assert meta["parameters"]["sha256"] == manifest["sha256"]
        assert meta["parameters"]["feature_names"] == manifest["feature_names"]
        response = await client.post("/v2/models/wine/infer", json={**wine_request(), "id": "req-7"})
        body = response.json()
        assert response.status_code == 200
        assert (body["model_name"], body["model_version"], body["id"]) == ("wine", "1", "req-7")
        probabilities = body["outputs"][1]
        assert probabilities["shape"] == [1, 3] and abs(sum(probabilities["data"]) - 1) < 1e-5


async def test_not_ready_without_models(model_dir: Path) -> None:
    async with running_module(model_dir, serve_default_model=False) as (_, client):
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert (await client.get("/v2/health/live")).status_code == 200


async def test_predictions_match_scikit_learn_json_and_binary(model_dir: Path, tmp_path: Path) -> None:
    trained = iris_classifier()
    path = tmp_path / "iris.onnx"
    path.write_bytes(trained.onnx)
    x = trained.x_test
    async with running_module(model_dir, {"iris": path}) as (_, client):
        as_json = await client.post(
            "/v2/models/iris/infer",
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]},
        )
        outputs = {o["name"]: o for o in as_json.json()["outputs"]}
        assert outputs["label"]["data"] == trained.estimator.predict(x).tolist()
        np.testing.assert_allclose(
            np.array(outputs["probabilities"]["data"]).reshape(x.shape[0], 3),
            trained.estimator.predict_proba(x),
            atol=1e-5,
        )

        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
            }
        )
        as_binary = await client.post(
            "/v2/models/iris/infer",
            content=header + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert as_binary.status_code == 200, as_binary.text
        length = int(as_binary.headers["inference-header-content-length"])
        meta = orjson.loads(as_binary.content[:length])
        label_meta = meta["outputs"][0]
        assert label_meta["parameters"]["binary_data_size"] == 8 * x.shape[0]
        labels = np.frombuffer(as_binary.content[length:], dtype=np.int64)
        assert labels.tolist() == trained.estimator.predict(x).tolist()
        assert "data" in meta["outputs"][1]  # not asked for as binary


async def test_string_features_and_missing_values(model_dir: Path, tmp_path: Path) -> None:
    trained = mixed_types_pipeline()
    path = tmp_path / "mixed.onnx"
    path.write_bytes(trained.onnx)
    rows = trained.x_test
    temperature = [[float(v)] for v in rows[:, 0]]
    sites = [[str(v)] for v in rows[:, 1]]
    async with running_module(model_dir, {"mixed": path}) as (_, client):
        # NaN cannot be written in JSON, so send the numeric column as binary and the strings as BYTES.
        temps = np.array(temperature, dtype=np.float32)
        encoded_sites = b"".join(struct.pack("<I", len(s[0])) + s[0].encode() for s in sites)
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "temperature",
                        "datatype": "FP32",
                        "shape": [len(rows), 1],
                        "parameters": {"binary_data_size": temps.nbytes},
                    },
                    {
                        "name": "site",
                        "datatype": "BYTES",
                        "shape": [len(rows), 1],
                        "parameters": {"binary_data_size": len(encoded_sites)},
                    },
                ]
            }
        )
        response = await client.post(
            "/v2/models/mixed/infer",
            content=header + temps.tobytes() + encoded_sites,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        import pandas as pd

        frame = pd.DataFrame({"temperature": temps[:, 0], "site": [s[0] for s in sites]})
        labels = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
        assert labels == trained.estimator.predict(frame).tolist()

        as_json = await client.post(
            "/v2/models/mixed/infer",
            json={
                "inputs": [
                    {"name": "temperature", "datatype": "FP32", "shape": [1, 1], "data": [25.0]},
                    {"name": "site", "datatype": "BYTES", "shape": [1, 1], "data": ["north"]},
                ]
            },
        )
        assert as_json.status_code == 200, as_json.text
        inf = np.array([[np.inf]], dtype=np.float32)
        header = orjson.dumps(
            {
                "inputs": [
                    {"name": "temperature", "datatype": "FP32", "shape": [1, 1], "parameters": {"binary_data_size": 4}},
                    {"name": "site", "datatype": "BYTES", "shape": [1, 1], "data": ["north"]},
                ]
            }
        )
        rejected = await client.post(
            "/v2/models/mixed/infer",
            content=header + inf.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert rejected.status_code == 400 and "inf" in rejected.json()["error"]


def _binary_request(shape: list[int], size: int, payload: bytes, extra_header: int = 0) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}]}
    )
    return header + payload, {"Inference-Header-Content-Length": str(len(header) + extra_header)}


BAD_REQUESTS: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("malformed json", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not an object", b"[1, 2]", {}, 400, "JSON object"),
    ("no inputs", b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    (
        "wrong input name",
        orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 13], "data": WINE_ROW}]}),
        {},
        400,
        "unexpected input 'x'",
    ),
    (
        "wrong datatype",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 13], "data": [1] * 13}]}),
        {},
        400,
        "expects FP32",
    ),
    (
        "wrong shape",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 12], "data": WINE_ROW[:12]}]}),
        {},
        400,
        "expects [-1, 13]",
    ),
    (
        "element count",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 13], "data": WINE_ROW}]}),
        {},
        400,
        "needs 26",
    ),
    (
        "ragged data",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 13], "data": [WINE_ROW, [1.0]]}]}),
        {},
        400,
        "regular array",
    ),
    (
        "strings in FP32",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": ["a"] * 13}]}),
        {},
        400,
        "regular array",
    ),
    (
        "empty batch",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 13], "data": []}]}),
        {},
        400,
        "empty",
    ),
    (
        "negative dim",
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 13], "data": WINE_ROW}]}),
        {},
        400,
        "non-negative",
    ),
    ("nan binary", *_binary_request([1, 13], 52, np.full(13, np.nan, np.float32).tobytes()), 400, "NaN or inf"),
    ("inf binary", *_binary_request([1, 13], 52, np.full(13, np.inf, np.float32).tobytes()), 400, "NaN or inf"),
    ("truncated binary", *_binary_request([1, 13], 52, b"\0" * 20), 400, "only 20 remain"),
    ("binary size mismatch", *_binary_request([1, 13], 20, b"\0" * 20), 400, "needs 52"),
    ("header longer than body", *_binary_request([1, 13], 52, b"\0" * 52, extra_header=500), 400, "only"),
    ("trailing bytes", *_binary_request([1, 13], 52, b"\0" * 60), 400, "no input claims"),
    ("bad header length", b"{}", {"Inference-Header-Content-Length": "abc"}, 400, "integer"),
    ("bad gzip", b"not gzip", {"Content-Encoding": "gzip"}, 400, "gzip"),
    ("unknown encoding", b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
]


@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_requests_get_clean_errors_and_serving_continues(
    model_dir: Path, case: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    async with running_module(model_dir) as (_, client):
        response = await client.post("/v2/models/wine/infer", content=body, headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert message in error, error
        await assert_still_serves(client)


async def test_body_size_limit_and_unknown_models(model_dir: Path) -> None:
    async with running_module(model_dir) as (_, client):
        big = await client.post("/v2/models/wine/infer", content=b"x" * (10 * 1024 * 1024))
        assert big.status_code == 413 and "limit" in big.json()["error"]
        bomb = gzip.compress(b" " * (20 * 1024 * 1024))
        zipped = await client.post("/v2/models/wine/infer", content=bomb, headers={"Content-Encoding": "gzip"})
        assert zipped.status_code == 413
        for path in ("/v2/models/nope/infer", "/v2/models/wine/versions/9/infer"):
            missing = await client.post(path, json=wine_request())
            assert missing.status_code == 404 and "unknown" in missing.json()["error"]
        assert (await client.get("/v2/models/nope")).status_code == 404
        assert (await client.get("/v2/models/wine/versions/9/ready")).status_code == 404
        assert (await client.get("/v2/nothing")).json() == {"error": "Not Found"}
        await assert_still_serves(client)


async def test_a_body_in_many_chunks_is_joined_and_capped_as_it_arrives(model_dir: Path) -> None:
    async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    async with running_module(model_dir, max_request_bytes=4096) as (_, client):
        body = orjson.dumps(wine_request())
        response = await client.post("/v2/models/wine/infer", content=chunks(body, 7))
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [0]
        # No Content-Length (chunked): the cap applies as the chunks add up.
        big = await client.post("/v2/models/wine/infer", content=chunks(b" " * 5000, 1000))
        assert big.status_code == 413 and "limit" in big.json()["error"]
        await assert_still_serves(client)


async def test_gzip_request_bodies_are_accepted(model_dir: Path) -> None:
    async with running_module(model_dir) as (_, client):
        body = gzip.compress(orjson.dumps(wine_request()))
        response = await client.post("/v2/models/wine/infer", content=body, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [0]


async def test_config_stats_and_index(model_dir: Path) -> None:
    async with running_module(model_dir) as (_, client):
        await assert_still_serves(client)
        await client.post("/v2/models/wine/infer", content=b"{")
        config = (await client.get("/v2/models/wine/config")).json()
        assert config["platform"] == "onnxruntime_onnx" and config["input"][0]["data_type"] == "TYPE_FP32"
        stats = (await client.get("/v2/models/wine/stats")).json()["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 1
        assert stats["inference_stats"]["fail"]["count"] == 1
        assert stats["inference_count"] == 1
        index = (await client.post("/v2/repository/index")).json()
        assert index == [{"name": "wine", "version": "1", "state": "READY", "reason": ""}]


async def test_repository_api_needs_the_admin_token(model_dir: Path) -> None:
    async with running_module(model_dir, admin_token=None) as (_, client):
        disabled = await client.post("/v2/repository/models/iris/load")
        assert disabled.status_code == 403 and "EDGE_ADMIN_TOKEN" in disabled.json()["error"]
    async with running_module(model_dir) as (_, client):
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": ADMIN_TOKEN}):
            denied = await client.post("/v2/repository/models/iris/unload", headers=headers)
            assert denied.status_code == 401


async def test_inference_token_guards_models_but_not_health(model_dir: Path) -> None:
    token = "inference-token-0123456789"
    async with running_module(model_dir, api_token=token) as (_, client):
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await client.post("/v2/models/wine/infer", json=wine_request())).status_code == 401
        assert (await client.get("/v2/models/wine")).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.post("/v2/models/wine/infer", json=wine_request(), headers=auth)).status_code == 200


def _load_body(onnx: bytes, version: str) -> dict[str, object]:
    return {"parameters": {f"file:{version}/model.onnx": base64.b64encode(onnx).decode()}}


async def test_load_swap_rollback_and_unload_through_the_repository_api(model_dir: Path) -> None:
    one, two = iris_classifier("1", 5), iris_classifier("2", 15)
    async with running_module(model_dir) as (module, client):
        loaded = await client.post("/v2/repository/models/iris/load", json=_load_body(one.onnx, "1"), headers=ADMIN)
        assert loaded.status_code == 200, loaded.text
        request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.0, 3.4, 1.5, 0.2]}]}
        assert (await client.post("/v2/models/iris/infer", json=request)).json()["model_version"] == "1"
        await client.post("/v2/repository/models/iris/load", json=_load_body(two.onnx, "2"), headers=ADMIN)
        assert (await client.post("/v2/models/iris/infer", json=request)).json()["model_version"] == "2"
        # Both the active and the last-known-good version are addressable.
        pinned = await client.post("/v2/models/iris/versions/1/infer", json=request)
        assert pinned.json()["model_version"] == "1"
        assert (await client.get("/v2/models/iris")).json()["versions"] == ["1", "2"]
        back = await client.post(
            "/v2/repository/models/iris/load", json={"parameters": {"version": "1"}}, headers=ADMIN
        )
        assert back.json()["version"] == "1"
        assert (await client.post("/v2/models/iris/infer", json=request)).json()["model_version"] == "1"
        record = module.store.get("iris")
        assert record is not None and record.active.version == "1" and record.previous is not None

        corrupt = await client.post(
            "/v2/repository/models/iris/load", json=_load_body(b"not an onnx file", "3"), headers=ADMIN
        )
        assert corrupt.status_code == 400 and "not a loadable ONNX file" in corrupt.json()["error"]
        truncated = await client.post(
            "/v2/repository/models/iris/load", json=_load_body(two.onnx[: len(two.onnx) // 2], "4"), headers=ADMIN
        )
        assert truncated.status_code == 400
        assert (await client.post("/v2/models/iris/infer", json=request)).json()["model_version"] == "1"

        unloaded = await client.post("/v2/repository/models/iris/unload", headers=ADMIN)
        assert unloaded.status_code == 200
        assert (await client.post("/v2/models/iris/infer", json=request)).status_code == 404
        assert module.store.get("iris") is None
        again = await client.post("/v2/repository/models/iris/unload", headers=ADMIN)
        assert again.status_code == 404


async def test_restart_serves_what_the_store_says_and_falls_back_to_last_known_good(model_dir: Path) -> None:
    one, two = iris_classifier("1", 5), iris_classifier("2", 15)
    async with running_module(model_dir) as (_, client):
        await client.post("/v2/repository/models/iris/load", json=_load_body(one.onnx, "1"), headers=ADMIN)
        await client.post("/v2/repository/models/iris/load", json=_load_body(two.onnx, "2"), headers=ADMIN)
    async with running_module(model_dir) as (module, client):
        assert (await client.get("/v2/models/iris")).json()["parameters"]["active_version"] == "2"
        # The store has a model, so the default model is not served.
        assert (await client.get("/v2/models/wine")).status_code == 404
        record = module.store.get("iris")
        assert record is not None
        active_blob = module.store.blob_path(record.active.sha256)
    active_blob.write_bytes(b"bit rot")
    async with running_module(model_dir) as (module, client):
        meta = (await client.get("/v2/models/iris")).json()
        assert meta["parameters"]["active_version"] == "1"
        record = module.store.get("iris")
        assert record is not None and record.active.version == "1"


async def test_in_flight_requests_finish_on_their_version_during_swaps(model_dir: Path) -> None:
    versions = [iris_classifier(str(v), 5 + v) for v in range(1, 5)]
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.0, 3.4, 1.5, 0.2]}]}
    async with running_module(model_dir) as (_, client):
        await client.post("/v2/repository/models/iris/load", json=_load_body(versions[0].onnx, "1"), headers=ADMIN)
        responses: list[httpx.Response] = []
        stop = asyncio.Event()

        async def load_generator() -> None:
            for _ in range(5000):  # bounded, whatever happens to the swaps
                if stop.is_set():
                    return
                responses.append(await client.post("/v2/models/iris/infer", json=request))
                # In-process transport never blocks on a socket: yield so the swaps get the loop too.
                await asyncio.sleep(0)

        workers = [asyncio.create_task(load_generator()) for _ in range(8)]
        for number, trained in enumerate(versions[1:], start=2):
            swapped = await client.post(
                "/v2/repository/models/iris/load", json=_load_body(trained.onnx, str(number)), headers=ADMIN
            )
            assert swapped.status_code == 200
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*workers)
        assert responses and all(r.status_code == 200 for r in responses)
        seen = {r.json()["model_version"] for r in responses}
        assert seen <= {"1", "2", "3", "4"} and "4" in seen
