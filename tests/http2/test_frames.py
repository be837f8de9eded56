"""More of our HTTP/2 server (RFC 9113) frame by frame over a real socket: settings, padding, CONTINUATION,
flow control on the connection and after a settings change, larger frames, header list limits, the
handshake timeout, a client's GOAWAY and a graceful stop with a call in flight.

Absence of a frame is never waited for: a PING sent after the point of interest is a fence, since the server
answers frames in order and its PING ACK follows whatever it could send before it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from edge_module.grpc import inference_pb2 as pb
from edge_module.grpc.server import GrpcServer
from edge_module.http2 import frames as f
from tests.http2.test_connection import INFER, LIVE, Frame, RawClient, infer_request, serve
from tests.support.misbehaving_models import iris_rows
from tests.support.models import iris_classifier

FENCE = b"fence!!!"
BIG_WINDOW = 1 << 24


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    async for server in serve(tmp_path):
        yield server


def settings_of(frame: Frame) -> dict[int, int]:
    pairs = (struct.unpack_from(">HI", frame.payload, i) for i in range(0, len(frame.payload), 6))
    return {int(key): int(value) for key, value in pairs}


def call_fields(path: bytes = INFER, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"test")]
    return [*fields, (b"content-type", b"application/grpc"), (b"te", b"trailers"), *extra]


def fixed_id_request(rows: np.ndarray) -> bytes:
    """An infer request with its own id, which the response echoes: two answers are then the same bytes."""
    request = pb.ModelInferRequest.FromString(infer_request(rows))
    request.id = "frame-by-frame"
    data: bytes = request.SerializeToString()
    return data


def framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def big_call(client: RawClient, stream: int, message: bytes) -> None:
    """A call whose message may be larger than one frame: DATA in frames of at most 16,384 bytes."""
    client.headers(stream, INFER)
    data = framed(message)
    for start in range(0, len(data), f.DEFAULT_MAX_FRAME):
        last = start + f.DEFAULT_MAX_FRAME >= len(data)
        client.write(f.frame(f.DATA, f.END_STREAM if last else 0, stream, data[start : start + f.DEFAULT_MAX_FRAME]))


async def reference_body(port: int, message: bytes) -> bytes:
    """The response body of a call on a connection with no flow-control constraints."""
    client = await RawClient.connect(port, settings={f.INITIAL_WINDOW_SIZE: BIG_WINDOW})
    client.write(f.window_update(0, BIG_WINDOW))
    big_call(client, 1, message)
    fields, body, _ = await client.response(1, window_updates=True)
    assert fields[b"grpc-status"] == b"0", fields
    await client.close()
    return body


async def data_until(client: RawClient, stream: int, total: int) -> tuple[bytes, dict[bytes, bytes]]:
    """DATA on ``stream`` until ``total`` bytes arrived (headers decoded on the way)."""
    body, fields = b"", dict[bytes, bytes]()
    while len(body) < total:
        frame = await client.frame()
        assert frame is not None, "closed mid-response"
        assert not (frame.stream == stream and frame.flags & f.END_STREAM), "ended before the window was used"
        if frame.stream == stream and frame.kind == f.HEADERS:
            fields.update((bytes(n), bytes(v)) for n, v in client.decoder.decode(frame.payload, raw=True))
        elif frame.stream == stream and frame.kind == f.DATA:
            body += frame.payload
    assert len(body) == total, f"{len(body)} bytes: more than the window of {total}"
    return body, fields


async def fence(client: RawClient, strict: bool = True) -> list[Frame]:
    """The frames before the server's answer to a PING sent now; ``strict``: nothing but control frames."""
    client.write(f.frame(f.PING, 0, 0, FENCE))
    before: list[Frame] = []
    while True:
        frame = await client.frame()
        assert frame is not None, "closed before the PING ACK"
        if frame.kind == f.PING and frame.flags & f.ACK:
            assert frame.payload == FENCE
            return before
        assert not strict or frame.kind not in (f.DATA, f.HEADERS), f"frame {frame.kind} past its window"
        before.append(frame)


async def test_settings_are_exchanged_and_acknowledged(running: GrpcServer) -> None:
    """Section 3.4: the server's preface is a SETTINGS frame; section 6.5.3: the client's SETTINGS is ACKed."""
    client = await RawClient.connect(running.port, settings={f.INITIAL_WINDOW_SIZE: 1000})
    first = await client.frame()
    assert first is not None and first.kind == f.SETTINGS and not first.flags & f.ACK and first.stream == 0
    advertised = settings_of(first)
    assert advertised[f.ENABLE_PUSH] == 0 and advertised[f.MAX_HEADER_LIST_SIZE] == 16 * 1024
    assert advertised[f.MAX_FRAME_SIZE] == 16_384 and advertised[f.HEADER_TABLE_SIZE] == 4096
    ack = await client.until(f.SETTINGS)
    assert ack.flags & f.ACK and ack.payload == b""
    client.write(f.frame(f.SETTINGS, f.ACK, 0))
    client.call(1, LIVE, b"")
    assert (await client.response(1))[0][b"grpc-status"] == b"0"
    await client.close()


@pytest.mark.parametrize(
    ("before", "code"),
    [
        (f.frame(f.PING, 0, 0, b"12345678"), f.PROTOCOL_ERROR),  # section 3.4: the first frame must be SETTINGS
        (f.frame(f.SETTINGS, f.ACK, 0), f.PROTOCOL_ERROR),  # an ACK is not the client's SETTINGS
    ],
)
async def test_a_first_frame_other_than_settings_is_a_protocol_error(
    running: GrpcServer, before: bytes, code: int
) -> None:
    client = await RawClient.connect(running.port, preface=f.PREFACE + before)
    assert (await client.goaway()).code() == code


@pytest.mark.parametrize(
    ("send", "code"),
    [
        # Section 6.10: a header block in progress is followed by CONTINUATION of the same stream only.
        (lambda c: c.write(_open_block(c) + f.frame(f.PING, 0, 0, b"12345678")), f.PROTOCOL_ERROR),
        (lambda c: c.write(_open_block(c) + f.frame(f.CONTINUATION, f.END_HEADERS, 3, b"")), f.PROTOCOL_ERROR),
        # Section 6.1: padding that is not shorter than the frame.
        (lambda c: c.write(f.frame(f.HEADERS, f.END_HEADERS | f.PADDED, 1, b"\x05abc")), f.PROTOCOL_ERROR),
        # Section 6.5: SETTINGS whose length is not a multiple of 6; SETTINGS_MAX_FRAME_SIZE out of range.
        (lambda c: c.write(f.frame(f.SETTINGS, 0, 0, b"\x00\x05\x00")), f.FRAME_SIZE_ERROR),
        (lambda c: c.write(f.settings_frame({f.MAX_FRAME_SIZE: 100})), f.PROTOCOL_ERROR),
        # Section 6.9.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1.
        (lambda c: c.write(f.settings_frame({f.INITIAL_WINDOW_SIZE: 1 << 31})), f.FLOW_CONTROL_ERROR),
        # Section 4.3: a header block that does not decode (index 0).
        (lambda c: c.write(f.frame(f.HEADERS, f.END_HEADERS, 1, b"\x80")), f.COMPRESSION_ERROR),
    ],
    ids=[
        "ping-in-block",
        "continuation-of-another-stream",
        "padding",
        "settings-length",
        "frame-size",
        "window",
        "hpack",
    ],
)
async def test_more_connection_errors(running: GrpcServer, send: Callable[[RawClient], None], code: int) -> None:
    client = await RawClient.connect(running.port)
    send(client)
    assert (await client.goaway()).code() == code


def _open_block(client: RawClient) -> bytes:
    """HEADERS of a call without END_HEADERS: a header block in progress."""
    return f.frame(f.HEADERS, 0, 1, client.encoder.encode(call_fields()))


async def test_padded_headers_with_priority_and_padded_data(running: GrpcServer) -> None:
    """Sections 6.1 and 6.2: padding (and HEADERS' priority fields) are stripped, never part of the call."""
    iris = iris_classifier()
    client = await RawClient.connect(running.port)
    block = client.encoder.encode(call_fields())
    priority = struct.pack(">IB", 0, 15)
    flags = f.END_HEADERS | f.PADDED | f.PRIORITY_FLAG
    client.write(f.frame(f.HEADERS, flags, 1, bytes([9]) + priority + block + b"\x00" * 9))
    message = framed(infer_request(iris.x_test))
    half = len(message) // 2
    client.write(f.frame(f.DATA, f.PADDED, 1, bytes([200]) + message[:half] + b"\x00" * 200))
    client.write(f.frame(f.DATA, f.PADDED | f.END_STREAM, 1, b"\x00" + message[half:]))  # zero padding
    fields, body, _ = await client.response(1)
    assert fields[b"grpc-status"] == b"0", fields
    labels = np.frombuffer(pb.ModelInferResponse.FromString(body[5:]).raw_output_contents[0], np.int64)
    assert labels.tolist() == iris.estimator.predict(iris.x_test).tolist()
    await client.close()


async def test_a_header_block_split_across_continuation_frames(running: GrpcServer) -> None:
    """Section 6.10: HEADERS without END_HEADERS, then CONTINUATION frames, make one header block."""
    client = await RawClient.connect(running.port)
    block = client.encoder.encode(call_fields(LIVE, (b"x-padding", b"p" * 200)), huffman=False)
    third = len(block) // 3
    client.write(f.frame(f.HEADERS, 0, 1, block[:third]))
    client.write(f.frame(f.CONTINUATION, 0, 1, block[third : 2 * third]))
    client.write(f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[2 * third :]))
    client.message(1, b"")
    fields, body, _ = await client.response(1)
    assert fields[b"grpc-status"] == b"0" and pb.ServerLiveResponse.FromString(body[5:]).live
    await client.close()


async def test_a_header_list_over_16_kib_is_enhance_your_calm(running: GrpcServer) -> None:
    """Section 10.5.1: the advertised SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB) is enforced on the decoded list."""
    client = await RawClient.connect(running.port)
    block = client.encoder.encode(call_fields(LIVE, (b"x-big", b"v" * 17_000)), huffman=False)
    client.write(f.frame(f.HEADERS, 0, 1, block[:16_384]))
    client.write(f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[16_384:]))
    assert (await client.goaway()).code() == f.ENHANCE_YOUR_CALM


async def test_a_response_beyond_the_connection_window_waits_for_its_window_update(running: GrpcServer) -> None:
    """Section 6.9.1: with a large stream window the connection's 65,535 bytes still bound what is sent;
    the rest follows the connection's WINDOW_UPDATE, and the body is the same bytes as unconstrained."""
    message = fixed_id_request(np.tile(iris_classifier().x_test, (100, 1)))  # 3,800 rows: ~76 KB of outputs
    expected = await reference_body(running.port, message)
    assert len(expected) > f.DEFAULT_WINDOW
    client = await RawClient.connect(running.port, settings={f.INITIAL_WINDOW_SIZE: BIG_WINDOW})
    big_call(client, 1, message)
    head, _ = await data_until(client, 1, f.DEFAULT_WINDOW)
    await fence(client)
    client.write(f.window_update(0, len(expected)))
    fields, rest, _ = await client.response(1)
    assert fields[b"grpc-status"] == b"0"
    assert head + rest == expected
    await client.close()


async def test_a_window_raised_by_settings_mid_stream(running: GrpcServer) -> None:
    """Section 6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE changes the window of streams already open; the
    response held at 100 bytes continues with no WINDOW_UPDATE for the stream."""
    message = fixed_id_request(iris_classifier().x_test)
    expected = await reference_body(running.port, message)
    client = await RawClient.connect(running.port, settings={f.INITIAL_WINDOW_SIZE: 100})
    client.call(1, INFER, message)
    head, _ = await data_until(client, 1, 100)
    await fence(client)
    client.write(f.settings_frame({f.INITIAL_WINDOW_SIZE: 65_535}))
    fields, rest, _ = await client.response(1)
    assert fields[b"grpc-status"] == b"0"
    assert head + rest == expected
    await client.close()


async def test_a_window_lowered_by_settings_mid_stream_can_go_negative(running: GrpcServer) -> None:
    """Section 6.9.2: a lowered SETTINGS_INITIAL_WINDOW_SIZE can make a stream's window negative; the server
    then sends nothing until WINDOW_UPDATEs bring it above zero."""
    message = fixed_id_request(iris_classifier().x_test)
    expected = await reference_body(running.port, message)
    client = await RawClient.connect(running.port, settings={f.INITIAL_WINDOW_SIZE: 100})
    client.call(1, INFER, message)
    head, _ = await data_until(client, 1, 100)
    client.write(f.settings_frame({f.INITIAL_WINDOW_SIZE: 50}))  # the stream's window: 100 - 100 - 50 = -50
    client.write(f.window_update(1, 50))  # back to 0: still nothing may be sent
    await fence(client)
    client.write(f.window_update(1, len(expected)))
    fields, rest, _ = await client.response(1)
    assert fields[b"grpc-status"] == b"0"
    assert head + rest == expected
    await client.close()


async def test_a_larger_max_frame_size_is_used(running: GrpcServer) -> None:
    """Section 4.2 / 6.5.2: the server may send DATA frames up to the client's SETTINGS_MAX_FRAME_SIZE."""
    message = infer_request(np.tile(iris_classifier().x_test, (60, 1)))  # ~45 KB of outputs
    settings = {f.INITIAL_WINDOW_SIZE: BIG_WINDOW, f.MAX_FRAME_SIZE: 1 << 16}
    client = await RawClient.connect(running.port, settings=settings)
    client.write(f.window_update(0, BIG_WINDOW))
    big_call(client, 1, message)
    sizes: list[int] = []
    while True:
        frame = await client.until(f.DATA, 1) if not sizes else await client.frame()
        assert frame is not None
        if frame.kind == f.DATA:
            sizes.append(len(frame.payload))
        if frame.stream == 1 and frame.flags & f.END_STREAM:
            break
    assert max(sizes) > f.DEFAULT_MAX_FRAME and max(sizes) <= 1 << 16
    await client.close()


@pytest.mark.parametrize("sent", [b"", f.PREFACE[:10], f.PREFACE], ids=["nothing", "part-preface", "no-settings"])
async def test_no_preface_and_settings_in_time_closes(running: GrpcServer, sent: bytes) -> None:
    """Section 3.4 / 6.5: a client that does not complete its preface in time is sent away (SETTINGS_TIMEOUT)."""
    running.handshake_timeout = 0.2
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(sent)
    client = RawClient(reader, writer)
    assert (await client.goaway()).code() == f.SETTINGS_TIMEOUT


async def test_a_client_goaway_closes_once_its_call_is_answered(slow: GrpcServer) -> None:
    """Section 6.8: a GOAWAY from the client: its streams in flight are answered, no new one is taken, and
    the connection closes."""
    client = await RawClient.connect(slow.port)
    client.call(1, INFER, infer_request(iris_rows()[:8]))
    client.write(f.goaway(1, f.NO_ERROR))
    client.call(3, LIVE, b"")  # after its own GOAWAY: not processed
    fields, body, _ = await client.response(1)
    assert fields[b"grpc-status"] == b"0"
    assert pb.ModelInferResponse.FromString(body[5:]).outputs
    while (frame := await client.frame()) is not None:
        assert frame.stream != 3, "a stream opened after the client's GOAWAY was served"
    await client.close()


async def test_stop_lets_a_waiting_call_finish_then_closes(slow: GrpcServer) -> None:
    """Section 6.8: graceful shutdown: GOAWAY names the last stream taken, which is still answered."""
    client = await RawClient.connect(slow.port)
    client.call(1, INFER, infer_request(iris_rows()[:8]))
    seen = await fence(client, strict=False)  # the call is in: its HEADERS and DATA came before the PING
    stopping = asyncio.create_task(slow.stop(60))
    while (frame := await client.frame()) is not None:
        seen.append(frame)
    goaway = next(frame for frame in seen if frame.kind == f.GOAWAY)
    assert goaway.code() == f.NO_ERROR and struct.unpack_from(">I", goaway.payload)[0] == 1
    fields: dict[bytes, bytes] = {}
    for frame in (frame for frame in seen if frame.stream == 1 and frame.kind == f.HEADERS):
        fields.update((bytes(n), bytes(v)) for n, v in client.decoder.decode(frame.payload, raw=True))
    body = b"".join(frame.payload for frame in seen if frame.stream == 1 and frame.kind == f.DATA)
    assert fields[b"grpc-status"] == b"0" and pb.ModelInferResponse.FromString(body[5:]).outputs
    await client.close()
    await asyncio.wait_for(stopping, 60)


async def test_a_settings_change_that_overflows_a_stream_window_is_a_flow_control_error(running: GrpcServer) -> None:
    """Section 6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes a stream's window above 2^31-1 is a
    connection error of type FLOW_CONTROL_ERROR."""
    client = await RawClient.connect(running.port, settings={f.INITIAL_WINDOW_SIZE: 100})
    client.headers(1, LIVE)  # open: its window is 100
    client.write(f.window_update(1, f.MAX_WINDOW - 100))  # exactly 2^31-1: allowed
    await fence(client)
    client.write(f.settings_frame({f.INITIAL_WINDOW_SIZE: 101}))
    assert (await client.goaway()).code() == f.FLOW_CONTROL_ERROR
