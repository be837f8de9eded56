"""gRPC over HTTP/2 framing (edge_module/grpc/wire.py), after gRPC's PROTOCOL-HTTP2 and compression documents."""

from __future__ import annotations

import gzip
import zlib

import hpack
import pytest

from edge_module.grpc.status import GrpcError, StatusCode
from edge_module.grpc.wire import (
    NotGrpc,
    parse_timeout,
    percent_encode,
    read_call,
    read_message,
    trailers_only,
)

CALL = [
    (b":method", b"POST"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b"content-type", b"application/grpc"),
]


def framed(message: bytes, compressed: int = 0) -> bytes:
    return bytes([compressed]) + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"2H", 7200.0), (b"3M", 180.0), (b"5S", 5.0), (b"250m", 0.25), (b"7u", 7e-6), (b"99999999n", 0.099999999)],
)
def test_timeouts_in_every_unit(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"5", b"S", b"123456789S", b"5s", b"-5S", b"1.5S"])
def test_malformed_timeouts_are_invalid_arguments(value: bytes) -> None:
    with pytest.raises(GrpcError) as caught:
        parse_timeout(value)
    assert caught.value.code == StatusCode.INVALID_ARGUMENT


def test_what_is_not_a_grpc_call_gets_an_http_status() -> None:
    with pytest.raises(NotGrpc) as wrong_method:
        read_call([(b":method", b"GET"), *CALL[1:]])
    assert wrong_method.value.status == 405
    with pytest.raises(NotGrpc) as wrong_type:
        read_call([*CALL[:2], (b"content-type", b"application/json")])
    assert wrong_type.value.status == 415
    call = read_call([*CALL[:2], (b"content-type", b"application/grpc+proto"), (b"grpc-timeout", b"100m")])
    assert call.timeout == pytest.approx(0.1) and call.encoding is None


def test_an_unsupported_encoding_is_unimplemented_and_says_what_is() -> None:
    with pytest.raises(GrpcError) as caught:
        read_call([*CALL, (b"grpc-encoding", b"snappy")])
    assert caught.value.code == StatusCode.UNIMPLEMENTED
    fields = dict(hpack.Decoder().decode(trailers_only(caught.value.code, caught.value.message), raw=True))
    assert fields[b"grpc-status"] == b"12" and fields[b"grpc-accept-encoding"] == b"identity,deflate,gzip"


def test_compressed_messages_are_read_within_the_limit() -> None:
    message = b"x" * 1000
    assert read_message(framed(gzip.compress(message), 1), b"gzip", 1000) == message
    assert read_message(framed(zlib.compress(message), 1), b"deflate", 1000) == message
    bomb = gzip.compress(b"\0" * 10_000_000)  # 10 kB that would inflate to 10 MB
    with pytest.raises(GrpcError) as caught:
        read_message(framed(bomb, 1), b"gzip", 1000)
    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(GrpcError, match="without grpc-encoding"):
        read_message(framed(gzip.compress(message), 1), None, 1000)
    with pytest.raises(GrpcError, match="does not decompress"):
        read_message(framed(b"not gzip", 1), b"gzip", 1000)


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (b"", StatusCode.INTERNAL, "no message"),
        (framed(b"abc")[:-1], StatusCode.INTERNAL, "truncated"),
        (framed(b"abc") + framed(b"def"), StatusCode.UNIMPLEMENTED, "exactly one message"),
        (framed(b"a" * 11), StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        (framed(b"abc", 2), StatusCode.INTERNAL, "neither 0 nor 1"),
    ],
)
def test_bad_framing(body: bytes, code: StatusCode, text: str) -> None:
    with pytest.raises(GrpcError, match=text) as caught:
        read_message(body, None, 10)
    assert caught.value.code == code


def test_status_messages_are_percent_encoded() -> None:
    assert percent_encode("plain text") == b"plain text"
    assert percent_encode("100% ünïcode\n") == b"100%25 %C3%BCn%C3%AFcode%0A"
