"""Read one whole HTTP/1.1 response from a raw socket: TCP may deliver it in any number of segments."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    raw: bytes


def read_response(sock: socket.socket, timeout: float = 30.0) -> RawResponse:
    """Read until the headers and ``Content-Length`` bytes of body have arrived, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock, deadline, data)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise AssertionError(f"response without Content-Length: {data!r}")
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = _recv(sock, deadline, data)
        data += chunk
        body += chunk
    return RawResponse(status=int(status_line.split(" ", 2)[1]), headers=headers, body=body[:length], raw=data)


def _recv(sock: socket.socket, deadline: float, so_far: bytes) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"incomplete HTTP response after the deadline: {so_far!r}")
    sock.settimeout(remaining)
    chunk = sock.recv(65536)
    if not chunk:
        raise AssertionError(f"connection closed before the whole response arrived: {so_far!r}")
    return chunk
