"""Our HTTP/2 server (RFC 9113) frame by frame: a hand-driven client over a real socket to a real GrpcServer."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import hpack
import numpy as np
import pytest

from edge_module.grpc import inference_pb2 as pb
from edge_module.grpc.server import GrpcServer
from edge_module.http2 import frames as f
from edge_module.module import build_module
from edge_module.settings import Settings
from tests.support.misbehaving_models import iris_rows
from tests.support.models import iris_classifier

LIVE = b"/inference.GRPCInferenceService/ServerLive"
INFER = b"/inference.GRPCInferenceService/ModelInfer"
WAIT_S = 30.0


class Frame:
    def __init__(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        self.kind, self.flags, self.stream, self.payload = kind, flags, stream, payload

    def code(self) -> int:
        """The error code of a GOAWAY or RST_STREAM."""
        offset = 4 if self.kind == f.GOAWAY else 0
        return int(struct.unpack_from(">I", self.payload, offset)[0])


class RawClient:
    """Writes frames as given and reads the server's frames one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()

    @classmethod
    async def connect(cls, port: int, preface: bytes = f.PREFACE, settings: dict[int, int] | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.write(preface + f.settings_frame(settings or {}))
        return client

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(
        self, stream: int, path: bytes, end_stream: bool = False, content_type: bytes = b"application/grpc"
    ) -> None:
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"test")]
        fields += [(b"content-type", content_type), (b"te", b"trailers")]
        block = self.encoder.encode(fields)
        flags = f.END_HEADERS | (f.END_STREAM if end_stream else 0)
        self.write(f.frame(f.HEADERS, flags, stream, block))

    def message(self, stream: int, message: bytes) -> None:
        self.write(f.frame(f.DATA, f.END_STREAM, stream, b"\x00" + len(message).to_bytes(4, "big") + message))

    def call(self, stream: int, path: bytes, message: bytes) -> None:
        self.headers(stream, path)
        self.message(stream, message)

    async def frame(self) -> Frame | None:
        """The next frame; None when the server closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), WAIT_S)
        except asyncio.IncompleteReadError:
            return None
        length = int.from_bytes(head[:3], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), WAIT_S)
        return Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)

    async def until(self, kind: int, stream: int | None = None) -> Frame:
        while True:
            frame = await self.frame()
            assert frame is not None, f"closed before a frame of type {kind}"
            if frame.kind == kind and (stream is None or frame.stream == stream):
                return frame

    async def response(self, stream: int, window_updates: bool = False) -> tuple[dict[bytes, bytes], bytes, int]:
        """Headers and trailers merged, the body, and how many DATA frames carried it."""
        fields: dict[bytes, bytes] = {}
        body, pieces = b"", 0
        while True:
            frame = await self.frame()
            assert frame is not None, "closed mid-response"
            if frame.stream != stream:
                continue
            if frame.kind == f.HEADERS:
                fields.update((bytes(n), bytes(v)) for n, v in self.decoder.decode(frame.payload, raw=True))
            elif frame.kind == f.DATA:
                body += frame.payload
                pieces += 1
                if window_updates and frame.payload:
                    self.write(f.window_update(stream, len(frame.payload)) + f.window_update(0, len(frame.payload)))
            elif frame.kind == f.RST_STREAM:
                raise AssertionError(f"stream {stream} reset with {frame.code()}")
            if frame.flags & f.END_STREAM:
                return fields, body, pieces

    async def closed(self) -> bool:
        while await self.frame() is not None:
            pass
        return True

    async def goaway(self) -> Frame:
        frame = await self.until(f.GOAWAY)
        assert await self.closed()
        await self.close()
        return frame

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def serve(tmp_path: Path, **overrides: int) -> AsyncIterator[GrpcServer]:
    iris = tmp_path / "iris.onnx"
    iris.write_bytes(iris_classifier().onnx)
    fields: dict[str, Any] = {"host": "127.0.0.1", "serve_default_model": False, "grpc_port": 0, **overrides}
    settings = Settings(model_dir=tmp_path / "store", **fields)
    module = build_module(settings, {"iris": iris})
    await module.start()
    server = await GrpcServer.start(module)
    try:
        yield server
    finally:
        await server.stop(0)
        module.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    async for running in serve(tmp_path):
        yield running


def infer_request(rows: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype(np.float32).tobytes())
    data: bytes = request.SerializeToString()
    return data


async def test_a_call_and_a_ping(server: GrpcServer) -> None:
    client = await RawClient.connect(server.port)
    settings = await client.until(f.SETTINGS)
    assert not settings.flags & f.ACK and (f.MAX_CONCURRENT_STREAMS, 128) in {
        struct.unpack_from(">HI", settings.payload, i) for i in range(0, len(settings.payload), 6)
    }
    client.write(f.frame(f.PING, 0, 0, b"12345678"))
    ping = await client.until(f.PING)
    assert ping.flags & f.ACK and ping.payload == b"12345678"
    client.call(1, LIVE, b"")
    fields, body, _ = await client.response(1)
    assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"0"
    assert pb.ServerLiveResponse.FromString(body[5:]).live
    await client.close()


async def test_a_response_larger_than_the_client_window_waits_for_window_updates(server: GrpcServer) -> None:
    """Section 6.9: the server sends no more than the stream's window and resumes on WINDOW_UPDATE."""
    iris = iris_classifier()
    client = await RawClient.connect(server.port, settings={f.INITIAL_WINDOW_SIZE: 64})
    client.call(1, INFER, infer_request(iris.x_test))
    fields, body, pieces = await client.response(1, window_updates=True)
    assert fields[b"grpc-status"] == b"0"
    assert pieces >= 5  # the message is several times the 64-byte window
    response = pb.ModelInferResponse.FromString(body[5:])
    labels = np.frombuffer(response.raw_output_contents[0], np.int64)
    assert labels.tolist() == iris.estimator.predict(iris.x_test).tolist()
    await client.close()


async def test_streams_beyond_the_limit_are_refused_and_the_rest_served(server: GrpcServer) -> None:
    """Section 5.1.2: SETTINGS_MAX_CONCURRENT_STREAMS is 128; a call counts until it is answered."""
    client = await RawClient.connect(server.port)
    streams = [1 + 2 * i for i in range(130)]
    for stream in streams:
        client.headers(stream, LIVE)  # open, not ended: none is answered yet
    refused = {(await client.until(f.RST_STREAM)).stream for _ in range(2)}
    assert refused == set(streams[128:])
    for stream in streams[:128]:
        client.message(stream, b"")
    answered = 0
    while answered < 128:
        frame = await client.until(f.HEADERS)
        if frame.flags & f.END_STREAM:
            answered += 1
    client.call(streams[-1] + 2, LIVE, b"")  # slots are free again
    fields, _, _ = await client.response(streams[-1] + 2)
    assert fields[b"grpc-status"] == b"0"
    await client.close()


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda c: c.write(f.frame(f.DATA, 0, 5, b"x")), f.PROTOCOL_ERROR),  # DATA on an idle stream
        (lambda c: c.headers(2, LIVE, end_stream=True), f.PROTOCOL_ERROR),  # an even (server) stream id
        (lambda c: c.write(f.frame(f.DATA, 0, 1, b"x" * 16_385)), f.FRAME_SIZE_ERROR),
        (lambda c: c.write(f.frame(f.CONTINUATION, f.END_HEADERS, 1, b"")), f.PROTOCOL_ERROR),
        (lambda c: c.write(f.frame(f.PING, 0, 0, b"short")), f.FRAME_SIZE_ERROR),
        (lambda c: c.write(f.frame(f.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")), f.PROTOCOL_ERROR),
    ],
)
async def test_connection_errors_end_in_goaway(
    server: GrpcServer, send: Callable[[RawClient], None], code: int
) -> None:
    client = await RawClient.connect(server.port)
    send(client)
    assert (await client.goaway()).code() == code
    client = await RawClient.connect(server.port)  # the server goes on serving
    client.call(1, LIVE, b"")
    assert (await client.response(1))[0][b"grpc-status"] == b"0"
    await client.close()


async def test_a_bad_preface_is_a_protocol_error(server: GrpcServer) -> None:
    client = await RawClient.connect(server.port, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.goaway()).code() == f.PROTOCOL_ERROR


async def test_not_grpc_and_unknown_methods(server: GrpcServer) -> None:
    client = await RawClient.connect(server.port)
    client.headers(1, LIVE, content_type=b"application/json")
    client.message(1, b"")
    assert (await client.response(1))[0][b":status"] == b"415"
    client.call(3, b"/inference.GRPCInferenceService/ModelConfig", b"")
    assert (await client.response(3))[0][b"grpc-status"] == b"12"
    await client.close()


async def test_a_message_over_the_limit_is_refused_and_the_connection_serves_on(tmp_path: Path) -> None:
    async for server in serve(tmp_path, max_request_bytes=1000):
        client = await RawClient.connect(server.port)
        settings = await client.until(f.SETTINGS)
        window = dict(struct.unpack_from(">HI", settings.payload, i) for i in range(0, len(settings.payload), 6))
        assert window[f.INITIAL_WINDOW_SIZE] == 1000 + 5 + 1  # one byte more than a message may have
        message = infer_request(np.zeros((100, 4)))  # 1,600 bytes of tensor
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        client.headers(1, INFER)
        # As a client that keeps to flow control: the stream's window, then it waits for more.
        client.write(f.frame(f.DATA, 0, 1, framed[: window[f.INITIAL_WINDOW_SIZE]]))
        fields, body, _ = await client.response(1)
        assert fields[b"grpc-status"] == b"8" and not body
        assert (await client.until(f.RST_STREAM, 1)).code() == f.NO_ERROR  # the rest is not wanted (8.1)
        client.call(3, LIVE, b"")
        assert (await client.response(3))[0][b"grpc-status"] == b"0"
        await client.close()


async def test_connections_beyond_the_cap_are_sent_away(tmp_path: Path) -> None:
    async for server in serve(tmp_path, max_connections=1):
        first = await RawClient.connect(server.port)
        first.call(1, LIVE, b"")
        assert (await first.response(1))[0][b"grpc-status"] == b"0"
        second = await RawClient.connect(server.port)
        assert (await second.goaway()).code() == f.REFUSED_STREAM
        await first.close()


async def test_stopping_sends_goaway_and_closes(tmp_path: Path) -> None:
    async for server in serve(tmp_path):
        client = await RawClient.connect(server.port)
        client.call(1, LIVE, b"")
        await client.response(1)
        stopping = asyncio.create_task(server.stop(5))
        goaway = await client.goaway()
        assert goaway.code() == f.NO_ERROR and struct.unpack_from(">I", goaway.payload)[0] == 1  # last stream
        await stopping


async def test_a_waiting_call_past_its_deadline_and_a_reset_one(slow: GrpcServer) -> None:
    """A call that waits (a slow model runs in the thread pool) is answered DEADLINE_EXCEEDED when its
    grpc-timeout passes; resetting another mid-run does not disturb the connection, which serves on."""
    client = await RawClient.connect(slow.port)
    rows = iris_rows()
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER), (b":authority", b"t")]
    fields += [(b"content-type", b"application/grpc"), (b"grpc-timeout", b"20m")]
    client.write(f.frame(f.HEADERS, f.END_HEADERS, 1, client.encoder.encode(fields)))
    client.message(1, infer_request(rows))
    answer, _, _ = await client.response(1)
    assert answer[b"grpc-status"] == b"4", answer  # DEADLINE_EXCEEDED
    client.call(3, INFER, infer_request(rows))
    client.write(f.rst_stream(3, f.CANCEL))
    client.call(5, LIVE, b"")
    live, _, _ = await client.response(5)
    assert live[b"grpc-status"] == b"0"
    await client.close()
