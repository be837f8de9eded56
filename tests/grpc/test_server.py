"""The gRPC server in-process: off unless configured, refuses a taken port, follows a renewed certificate."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from edge_module.grpc import inference_pb2 as pb
from edge_module.grpc.server import GrpcServer
from edge_module.module import build_module
from edge_module.server import _start_grpc
from edge_module.settings import Settings
from edge_module.tls import LiveTLS, ServerCertificate
from tests.support.iothub import make_tls_files

LIVE = "/inference.GRPCInferenceService/ServerLive"


def settings(tmp_path: Path, grpc_port: int | None = None) -> Settings:
    return Settings(model_dir=tmp_path / "store", host="127.0.0.1", serve_default_model=False, grpc_port=grpc_port)


async def live_call(target: str, credentials: grpc.ChannelCredentials) -> bool:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        call = channel.unary_unary(
            LIVE,
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        try:
            response = await call(pb.ServerLiveRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # the handshake failed
            return False
        return bool(response.live)


async def test_no_grpc_server_unless_a_port_is_set(tmp_path: Path) -> None:
    module = build_module(settings(tmp_path))
    try:
        assert await _start_grpc(module) is None
    finally:
        module.close()


async def test_a_taken_port_is_an_error_not_a_shared_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        module = build_module(settings(tmp_path, grpc_port=port))
        try:
            with pytest.raises(OSError, match="gRPC could not bind"):
                await GrpcServer.start(module)
        finally:
            module.close()


async def test_a_renewed_certificate_serves_new_connections(tmp_path: Path) -> None:
    first, second = make_tls_files(tmp_path / "first"), make_tls_files(tmp_path / "second")
    live = LiveTLS()
    live.install(ServerCertificate.from_pem(first.server_cert.read_bytes(), first.server_key.read_bytes()))
    trusts_first = grpc.ssl_channel_credentials(root_certificates=first.ca_cert.read_bytes())
    trusts_second = grpc.ssl_channel_credentials(root_certificates=second.ca_cert.read_bytes())
    module = build_module(settings(tmp_path, grpc_port=0))
    server = await GrpcServer.start(module, tls=live.derive(["h2"]))
    target = f"127.0.0.1:{server.port}"
    try:
        assert await live_call(target, trusts_first)
        assert not await live_call(target, trusts_second)
        # A renewal, as the workload API's renewer installs it: no restart, the next handshake has it.
        live.install(ServerCertificate.from_pem(second.server_cert.read_bytes(), second.server_key.read_bytes()))
        assert await live_call(target, trusts_second)
        assert not await live_call(target, trusts_first)
    finally:
        await server.stop(0)
        module.close()
