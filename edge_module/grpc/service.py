"""GRPCInferenceService over the data plane: the same models, statistics, metrics and token as HTTP."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from edge_module.correlation import new_correlation_id
from edge_module.dataplane import PLATFORM, DataPlane
from edge_module.errors import EdgeError, ModelNotFound
from edge_module.grpc import inference_pb2 as pb
from edge_module.grpc.codec import decode_request, encode_response
from edge_module.grpc.errors import status_of
from edge_module.rest.body import check_authorization

SERVICE_NAME = "inference.GRPCInferenceService"
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceService:
    """Health and server metadata are open, as on HTTP; model metadata, readiness and inference need the
    API token (``authorization: Bearer <token>`` metadata) when one is set."""

    def __init__(self, dataplane: DataPlane, api_token: str | None = None) -> None:
        self.dataplane = dataplane
        self.api_token = api_token

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Handler, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    _guarded(method),
                    request_deserializer=message.FromString,
                    response_serializer=_serialize,
                )
                for name, (method, message) in methods.items()
            },
        )

    async def server_live(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def model_ready(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        try:
            ready = self.dataplane.model_ready(request.name, request.version or None)
        except ModelNotFound:
            ready = False  # the specification's answer for a model that is not ready: false, not an error
        return pb.ModelReadyResponse(ready=ready)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        params = meta["parameters"]
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=PLATFORM,
            inputs=[_tensor_metadata(spec) for spec in meta["inputs"]],
            outputs=[_tensor_metadata(spec) for spec in meta["outputs"]],
            properties={
                "active_version": str(params["active_version"]),
                "sha256": str(params["sha256"]),
                "task": str(params["task"] or ""),
            },
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        started = time.perf_counter_ns()
        name, version = request.model_name, request.model_version or None
        dataplane = self.dataplane
        model = dataplane.repository.get(name, version)
        try:
            decoded = decode_request(request, model)
        except EdgeError:
            # Counted as a failed request of that version, as the HTTP path counts its decode failures.
            dataplane.stats.for_version(name, model.version).record_failure(time.perf_counter_ns() - started)
            raise
        correlation_id = request.id or new_correlation_id()
        ran, results = await dataplane.infer_arrays(name, version, decoded.inputs, correlation_id)
        return encode_response(name, ran.version, correlation_id, results, decoded.outputs, decoded.raw)

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.api_token is None:
            return
        supplied = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                supplied = value.encode() if isinstance(value, str) else value
                break
        check_authorization(supplied, self.api_token)


def _tensor_metadata(spec: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _guarded(method: Handler) -> Handler:
    """Every failure becomes a gRPC status through edge_module.grpc.errors, never an unhandled exception."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(request, context)
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    call.__name__ = getattr(method, "__name__", "call")
    return call
