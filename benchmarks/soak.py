"""Soak test: drive the running module at 32 connections for a long, bounded time; watch errors, latency, RSS.

    python -m benchmarks.soak --duration 600 --interval 30

Starts ``python -m edge_module`` on 127.0.0.1 (its bundled default model, a fresh temp store) pinned to
core 0, drives it with wrk on core 1 in back-to-back intervals, and prints p50/p99/req/s/errors and the
server's resident memory per interval. Exits non-zero when any request failed or RSS grew by 5% or more
after warm-up. Stops by itself after --duration seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from benchmarks.load import Body, free_port, pinned, rss_mb, run_wrk, wait_until, warm_up

WINE_ROW = [13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050]
RSS_GROWTH_LIMIT = 0.05


@dataclass(frozen=True)
class Interval:
    at_s: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float


def soak(duration: float, interval: float, warmup: float, connections: int, out: Path | None) -> int:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.stderr.write("wrk not found: install the Debian package 'wrk'\n")
        return 2
    body = Body(
        orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": WINE_ROW}]}), None
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/wine/infer"
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        workdir = Path(tmp)
        env = {
            **os.environ,
            "EDGE_HOST": "127.0.0.1",
            "EDGE_PORT": str(port),
            "EDGE_MODEL_DIR": str(workdir / "store"),
            "EDGE_LOG_LEVEL": "WARNING",
        }
        with (workdir / "module.log").open("wb") as log:
            server = subprocess.Popen(
                pinned([sys.executable, "-m", "edge_module"], 0), env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                wait_until(url, body, server, timeout=60)
                warm_up(url, body, 200)
                run_wrk(wrk, url, body, connections, warmup, server.pid, workdir, core=1)
                baseline = rss_mb(server.pid)
                intervals: list[Interval] = []
                elapsed = 0.0
                while elapsed < duration:
                    result = run_wrk(wrk, url, body, connections, interval, server.pid, workdir, core=1)
                    elapsed += result.seconds
                    intervals.append(
                        Interval(
                            at_s=round(elapsed, 1),
                            requests=result.requests,
                            rps=round(result.rps, 1),
                            p50_ms=round(result.p50_ms, 3),
                            p99_ms=round(result.p99_ms, 3),
                            errors=result.errors,
                            rss_mb=round(rss_mb(server.pid), 2),
                        )
                    )
                    _print_row(intervals[-1])
            finally:
                server.terminate()
                server.wait(timeout=30)
    errors = sum(i.errors for i in intervals)
    final_rss = intervals[-1].rss_mb if intervals else baseline
    growth = (final_rss - baseline) / baseline if baseline else 0.0
    summary = {
        "duration_s": round(elapsed, 1),
        "connections": connections,
        "requests": sum(i.requests for i in intervals),
        "errors": errors,
        "rss_after_warmup_mb": round(baseline, 2),
        "rss_final_mb": final_rss,
        "rss_growth_pct": round(growth * 100, 2),
        "intervals": [asdict(i) for i in intervals],
    }
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "intervals"}) + "\n")
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if errors == 0 and growth < RSS_GROWTH_LIMIT else 1


def _print_row(row: Interval) -> None:
    sys.stdout.write(
        f"t={row.at_s:7.1f}s  req/s={row.rps:9.1f}  p50={row.p50_ms:7.3f}ms  p99={row.p99_ms:7.3f}ms  "
        f"errors={row.errors}  rss={row.rss_mb:.1f}MB\n"
    )
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load after warm-up (default 600)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per reported interval (default 30)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the RSS baseline")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the full result as JSON here")
    args = parser.parse_args()
    return soak(args.duration, args.interval, args.warmup, args.connections, args.out)


if __name__ == "__main__":
    sys.exit(main())
