"""A release file server on 127.0.0.1 with Range support and the faults a field network has."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_module.release import Release, sign_release


@dataclass
class Served:
    data: bytes
    # Every response stops after this many body bytes and ignores Range (a download that never completes).
    always_truncate_at: int | None = None
    # The first response stops after this many bytes and waits for ``release_stall`` before closing.
    stall_first_at: int | None = None
    # The first response stops after this many bytes with a TCP reset (RST), not a clean close.
    reset_first_at: int | None = None
    # Answer every request with this HTTP status and no body (403: an expired SAS; 404: a deleted blob).
    status: int | None = None
    requests: list[str | None] = field(default_factory=list)  # the Range header of each request


class ReleaseServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.down = False  # the network is gone: connections close at once
        self.refused = threading.Semaphore(0)  # released once per connection refused while down
        self.stalled = threading.Event()
        self.release_stall = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if server.down:
                    self.close_connection = True
                    server.refused.release()
                    return
                served = server.files.get(self.path.split("?")[0])
                if served is None:
                    self.send_error(404)
                    return
                served.requests.append(self.headers.get("Range"))
                if served.status is not None:
                    self.send_error(served.status)
                    return
                self._serve(served, len(served.requests) == 1)

            def _serve(self, served: Served, first: bool) -> None:
                data = served.data
                start = 0
                range_header = self.headers.get("Range")
                if range_header and served.always_truncate_at is None and range_header.startswith("bytes="):
                    start = int(range_header[len("bytes=") :].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                body = data[start:]
                if served.always_truncate_at is not None:
                    self.wfile.write(body[: served.always_truncate_at])
                    self.close_connection = True
                    return
                if first and served.reset_first_at is not None:
                    self.wfile.write(body[: served.reset_first_at])
                    self.wfile.flush()
                    # Linger 0 makes close() send RST: the client sees a connection reset mid-body.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if first and served.stall_first_at is not None:
                    self.wfile.write(body[: served.stall_first_at])
                    self.wfile.flush()
                    server.stalled.set()
                    server.release_stall.wait(60)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, name="release-server", daemon=True)

    def add(self, path: str, data: bytes, **faults: Any) -> Served:
        self.files[path] = Served(data, **faults)
        return self.files[path]

    def release(
        self,
        name: str,
        version: str,
        data: bytes,
        *,
        key: Any = None,
        sha256: str | None = None,
        size: int | None = -1,
        **faults: Any,
    ) -> dict[str, Any]:
        """Serve ``data`` and return its desired-property release block (signed with ``key`` if given)."""
        path = f"/models/{name}/{version}/model.onnx"
        self.add(path, data, **faults)
        release = Release(
            name=name,
            version=version,
            uri=f"{self.base_url}{path}?sv=2024&sig=SECRET-SAS-SIGNATURE",
            sha256=sha256 or hashlib.sha256(data).hexdigest(),
            size=len(data) if size == -1 else size,
        )
        if key is not None:
            release = sign_release(release, key)
        return release.as_desired()

    def start(self) -> ReleaseServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.release_stall.set()
        self._http.shutdown()
        self._http.server_close()
