"""The HTTP app factory: Open Inference Protocol V2 (Triton-compatible) over a DataPlane."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_module import __version__
from edge_module.dataplane import DataPlane
from edge_module.errors import EdgeError, Forbidden, InvalidRequest, ModelNotFound
from edge_module.manager import ModelManager
from edge_module.observability import Observability
from edge_module.rest.body import BODY_TIMEOUT_S, check_bearer, read_body
from edge_module.rest.errors import error_body, error_status_and_body
from edge_module.rest.infer import ASGIApp, InferFastPath, infer_response
from edge_module.rest.openapi import (
    INFER_RESPONSES,
    LIVE,
    LOADED,
    MODEL_CONFIG,
    MODEL_METADATA,
    MODEL_READY,
    MODEL_STATS,
    READY_RESPONSES,
    REPOSITORY_INDEX,
    SERVER_METADATA,
    TRUST_BUNDLE_RESPONSES,
    UNLOADED,
    responses,
    without_validation_errors,
)
from edge_module.rest.status import status_router

_FILE_PARAM = re.compile(r"^file:(?:([^/]+)/)?model\.onnx$")
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"inputs": {"type": "array"}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(content: Any, status: int = 200) -> Response:
    return JSONResponse(content, status_code=status)


def create_app(
    dataplane: DataPlane,
    manager: ModelManager,
    *,
    max_request_bytes: int,
    request_timeout_s: float = BODY_TIMEOUT_S,
    admin_token: str | None = None,
    api_token: str | None = None,
    observability: Observability | None = None,
    trust_bundle: Callable[[], bytes | None] = lambda: None,
) -> ASGIApp:
    """Build the ASGI app. Nothing here does work at import time; everything is passed in."""
    app = FastAPI(
        title="edge-module",
        version=__version__,
        description="Open Inference Protocol V2 for ONNX models on Azure IoT Edge",
        default_response_class=JSONResponse,
        docs_url="/docs",
        redoc_url=None,
    )

    @app.exception_handler(EdgeError)
    async def _edge_error(_: Request, exc: EdgeError) -> Response:
        status, body = error_status_and_body(exc)
        return Response(body, status_code=status, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return Response(error_body(str(exc.detail)), status_code=exc.status_code, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return Response(error_body(f"invalid request: {exc.errors()}"), status_code=400, media_type="application/json")

    def inference_auth(request: Request) -> None:
        check_bearer(request.scope, api_token)

    def admin_auth(request: Request) -> None:
        if admin_token is None:
            raise Forbidden("the repository API is disabled: set EDGE_ADMIN_TOKEN to enable it")
        check_bearer(request.scope, admin_token)

    health = APIRouter(tags=["health"])

    @health.get("/v2", responses=responses(SERVER_METADATA))
    async def server_metadata() -> Response:
        return _json(dataplane.server_metadata())

    @health.get("/v2/health/live", responses=responses(LIVE))
    async def live() -> Response:
        return _json({"live": True})

    @health.get("/v2/health/ready", responses=READY_RESPONSES)
    async def ready() -> Response:
        is_ready = dataplane.ready()
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    @health.get("/trust-bundle.pem", responses=TRUST_BUNDLE_RESPONSES)
    async def trust_bundle_pem() -> Response:
        bundle = trust_bundle()
        if bundle is None:
            raise EdgeError("no trust bundle: TLS is off, or EDGE_TLS=files without EDGE_TLS_CA_FILE", status_code=404)
        return Response(bundle, media_type="application/x-pem-file")

    models = APIRouter(tags=["models"], dependencies=[Depends(inference_auth)])

    @models.get("/v2/models/stats", responses=responses(MODEL_STATS, 401))
    async def all_stats() -> Response:
        return _json(dataplane.model_stats(None, None))

    @models.get("/v2/models/{name}", responses=responses(MODEL_METADATA, 401, 404))
    async def model_metadata(name: str) -> Response:
        return _json(dataplane.model_metadata(name, None))

    @models.get("/v2/models/{name}/versions/{version}", responses=responses(MODEL_METADATA, 401, 404))
    async def version_metadata(name: str, version: str) -> Response:
        return _json(dataplane.model_metadata(name, version))

    @models.get("/v2/models/{name}/ready", responses=responses(MODEL_READY, 401, 404))
    async def model_ready(name: str) -> Response:
        dataplane.model_ready(name, None)
        return _json({"name": name, "ready": True})

    @models.get("/v2/models/{name}/versions/{version}/ready", responses=responses(MODEL_READY, 401, 404))
    async def version_ready(name: str, version: str) -> Response:
        dataplane.model_ready(name, version)
        return _json({"name": name, "version": version, "ready": True})

    @models.get("/v2/models/{name}/config", responses=responses(MODEL_CONFIG, 401, 404))
    async def model_config(name: str) -> Response:
        return _json(dataplane.model_config(name, None))

    @models.get("/v2/models/{name}/versions/{version}/config", responses=responses(MODEL_CONFIG, 401, 404))
    async def version_config(name: str, version: str) -> Response:
        return _json(dataplane.model_config(name, version))

    @models.get("/v2/models/{name}/stats", responses=responses(MODEL_STATS, 401, 404))
    async def model_stats(name: str) -> Response:
        return _json(dataplane.model_stats(name, None))

    @models.get("/v2/models/{name}/versions/{version}/stats", responses=responses(MODEL_STATS, 401, 404))
    async def version_stats(name: str, version: str) -> Response:
        return _json(dataplane.model_stats(name, version))

    # Served by InferFastPath in front of this app; declared here too so the OpenAPI schema lists them.
    @models.post("/v2/models/{name}/infer", openapi_extra=_INFER_BODY, responses=INFER_RESPONSES)
    async def infer(name: str, request: Request) -> Response:
        return await _infer(request, name, None)

    @models.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_INFER_BODY, responses=INFER_RESPONSES)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await _infer(request, name, version)

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        status, headers, body = await infer_response(
            dataplane, request.scope, request.receive, name, version, max_request_bytes, request_timeout_s
        )
        return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})

    repository = APIRouter(tags=["repository"])

    @repository.post("/v2/repository/index", responses=responses(REPOSITORY_INDEX))
    async def repository_index() -> Response:
        return _json(dataplane.repository_index())

    @repository.post(
        "/v2/repository/models/{name}/load",
        dependencies=[Depends(admin_auth)],
        responses=responses(LOADED, 400, 401, 403, 404, 408, 413, 415, 500),
    )
    async def load(name: str, request: Request) -> Response:
        params = await _parameters(request, max_request_bytes)
        files = {key: value for key, value in params.items() if key.startswith("file:")}
        if files:
            version, data = _model_file(files, params)
            await manager.install_bytes(name, version, data)
        elif isinstance(params.get("version"), str):
            await _activate_kept(manager, name, params["version"])
        else:
            await manager.restore_model(name)
        active = dataplane.repository.get(name)
        return _json({"name": name, "version": active.version, "sha256": active.sha256})

    @repository.post(
        "/v2/repository/models/{name}/unload",
        dependencies=[Depends(admin_auth)],
        responses=responses(UNLOADED, 400, 401, 403, 404),
    )
    async def unload(name: str) -> Response:
        await manager.remove(name)
        return _json({"name": name, "unloaded": True})

    app.include_router(health)
    app.include_router(models)
    app.include_router(repository)
    if observability is not None:
        app.include_router(status_router(observability))
    generate = app.openapi
    app.openapi = lambda: without_validation_errors(generate())  # type: ignore[method-assign]
    return InferFastPath(app, dataplane, max_request_bytes, api_token, request_timeout_s)


async def _parameters(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request.scope, request.receive, limit)
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("the body must be a JSON object")
    params = payload.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    return params


def _model_file(files: dict[str, Any], params: dict[str, Any]) -> tuple[str, bytes]:
    """Triton's load API sends files as ``"file:<version>/model.onnx": <base64>``."""
    if len(files) != 1:
        raise InvalidRequest("send exactly one model file, as 'file:<version>/model.onnx'")
    key, encoded = next(iter(files.items()))
    match = _FILE_PARAM.match(key)
    if match is None or not isinstance(encoded, str):
        raise InvalidRequest(f"unsupported file parameter {key!r}: use 'file:<version>/model.onnx' with base64 content")
    version = match.group(1) or params.get("version")
    if not isinstance(version, str):
        raise InvalidRequest("name the version: 'file:<version>/model.onnx' or a 'version' parameter")
    try:
        data = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise InvalidRequest(f"{key} is not valid base64") from None
    return version, data


async def _activate_kept(manager: ModelManager, name: str, version: str) -> None:
    record = manager.store.get(name)
    entry = record.find(version) if record else None
    if entry is None:
        raise ModelNotFound(f"model '{name}' has no stored version '{version}'")
    await manager.activate_blob(name, version, entry.sha256)
