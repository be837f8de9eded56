"""A counting reverse proxy in front of the blob endpoint (Azurite), for ``benchmarks/fleet.py``.

Devices download release files through it, so what the blob endpoint serves is measured, not estimated:
requests by method, response bytes, requests in flight (peak), and a per-100 ms time series of requests
started and in flight. ``GET /__proxy/stats`` returns the counters as JSON; ``POST /__proxy/reset`` zeroes
them. Everything else is forwarded unchanged (a SAS URL does not sign the host, so it stays valid).

``python -m benchmarks.blob_proxy --upstream http://127.0.0.1:PORT --port P``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
BUCKET_S = 0.1


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.bytes_out = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.buckets: dict[int, dict[str, int]] = {}

    def _bucket(self) -> dict[str, int]:
        key = int((time.time() - self.started) / BUCKET_S)
        return self.buckets.setdefault(key, {"started": 0, "peak_in_flight": 0})

    def begin(self, method: str) -> None:
        self.requests[method] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        bucket = self._bucket()
        bucket["started"] += 1
        bucket["peak_in_flight"] = max(bucket["peak_in_flight"], self.in_flight)

    def end(self) -> None:
        self.in_flight -= 1
        bucket = self._bucket()
        bucket["peak_in_flight"] = max(bucket["peak_in_flight"], self.in_flight)

    def as_json(self) -> dict[str, Any]:
        per_second: Counter[int] = Counter()
        for key, bucket in self.buckets.items():
            per_second[int(key * BUCKET_S)] += bucket["started"]
        return {
            "started": self.started,
            "requests": dict(self.requests),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "bytes_out": self.bytes_out,
            "peak_in_flight": self.peak_in_flight,
            "peak_requests_per_second": max(per_second.values(), default=0),
            "bucket_s": BUCKET_S,
            "buckets": [[key * BUCKET_S, b["started"], b["peak_in_flight"]] for key, b in sorted(self.buckets.items())],
        }


def make_app(upstream: str) -> web.Application:
    stats = Stats()
    app = web.Application()

    async def session_context(app: web.Application) -> Any:
        # No client-side cap: the endpoint sees what devices send. No pooled upstream connection either: each
        # device opens its own to the endpoint, and a pooled one the endpoint closed while idle (Azurite's
        # keep-alive timeout) would fail a request that no device's own connection would have failed.
        connector = TCPConnector(limit=0, force_close=True)
        app["session"] = ClientSession(connector=connector, auto_decompress=False, timeout=ClientTimeout(total=None))
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session_context)

    async def control(request: web.Request) -> web.Response:
        if request.path == "/__proxy/reset" and request.method == "POST":
            stats.reset()
            return web.json_response({"reset": True})
        return web.json_response(stats.as_json())

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/__proxy/"):
            return await control(request)
        stats.begin(request.method)
        response: web.StreamResponse | None = None
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            body = await request.read() if request.can_read_body else None
            session: ClientSession = request.app["session"]
            async with session.request(
                request.method,
                upstream + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
                # Added headers would break a Shared Key signature, which covers Content-Type.
                skip_auto_headers=("Content-Type", "Accept", "Accept-Encoding", "User-Agent"),
            ) as answer:
                stats.statuses[answer.status] += 1
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                if answer.content_length is not None:
                    response.content_length = answer.content_length
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    stats.bytes_out += len(chunk)
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientConnectionError as error:
            if response is not None and response.prepared:
                raise  # mid-body: the device sees the connection close, and resumes with Range
            # The endpoint could not be reached or dropped the connection before answering: say so, as a
            # gateway does, and count it (a device retries a 502 like any 5xx).
            stats.statuses[502] += 1
            return web.Response(status=502, text=f"upstream: {type(error).__name__}")
        finally:
            stats.end()

    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
