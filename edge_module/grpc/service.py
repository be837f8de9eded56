"""GRPCInferenceService over the data plane: the same models, statistics, metrics and token as HTTP."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_module.correlation import new_correlation_id
from edge_module.dataplane import PLATFORM, DataPlane
from edge_module.errors import EdgeError, ModelNotFound
from edge_module.grpc import inference_pb2 as pb
from edge_module.grpc.codec import decode_request, encode_response
from edge_module.grpc.wire import Call
from edge_module.rest.body import check_authorization

SERVICE_NAME = "inference.GRPCInferenceService"
# A method: the parsed request message and the call's headers in, the serialized response message out.
Handler = Callable[[Any, Call], Awaitable[bytes]]
Parser = Callable[[bytes], Any]


class InferenceService:
    """Health and server metadata are open, as on HTTP; model metadata, readiness and inference need the
    API token (``authorization: Bearer <token>`` metadata) when one is set."""

    def __init__(self, dataplane: DataPlane, api_token: str | None = None) -> None:
        self.dataplane = dataplane
        self.api_token = api_token

    def methods(self) -> dict[bytes, tuple[Parser, Handler]]:
        """Each method by its HTTP/2 ``:path``, with the parser of its request message."""
        methods: dict[str, tuple[Any, Handler]] = {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self.model_infer),
        }
        return {
            f"/{SERVICE_NAME}/{name}".encode(): (message.FromString, method)
            for name, (message, method) in methods.items()
        }

    async def server_live(self, request: pb.ServerLiveRequest, call: Call) -> bytes:
        return _serialized(pb.ServerLiveResponse(live=True))

    async def server_ready(self, request: pb.ServerReadyRequest, call: Call) -> bytes:
        return _serialized(pb.ServerReadyResponse(ready=self.dataplane.ready()))

    async def server_metadata(self, request: pb.ServerMetadataRequest, call: Call) -> bytes:
        meta = self.dataplane.server_metadata()
        extensions = meta["extensions"]
        return _serialized(pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=extensions))

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> bytes:
        self._authorize(call)
        try:
            ready = self.dataplane.model_ready(request.name, request.version or None)
        except ModelNotFound:
            ready = False  # the specification's answer for a model that is not ready: false, not an error
        return _serialized(pb.ModelReadyResponse(ready=ready))

    async def model_metadata(self, request: pb.ModelMetadataRequest, call: Call) -> bytes:
        self._authorize(call)
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        params = meta["parameters"]
        response = pb.ModelMetadataResponse(
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
        return _serialized(response)

    async def model_infer(self, request: pb.ModelInferRequest, call: Call) -> bytes:
        self._authorize(call)
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

    def _authorize(self, call: Call) -> None:
        if self.api_token is not None:
            check_authorization(call.authorization, self.api_token)


def _tensor_metadata(spec: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])


def _serialized(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
