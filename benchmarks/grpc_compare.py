"""gRPC raw contents next to HTTP binary, on the binary-heavy "wide" model (32 rows x 64 FP32 per request).

``python -m benchmarks.grpc_compare [--duration S] [--rounds N]``, or ``python -m benchmarks.run --grpc``.
One module process serves both ports, pinned to core 0; the load generator runs on core 1. HTTP is driven by
wrk, as in benchmarks.run; gRPC by h2load (nghttp2's HTTP/2 load generator, Debian package nghttp2-client; ghz
is packaged nowhere this project installs from), posting the ModelInferRequest tritonclient.grpc builds
(raw_input_contents) as a gRPC message. Both are C clients. Three ways of loading:
- c1: one connection, one call at a time;
- c32: 32 connections, one call each at a time (what wrk does for HTTP/1.1);
- c32 mux: 32 calls at a time multiplexed on one connection, which is how a gRPC client (one channel) sends
  concurrent calls. HTTP/1.1 cannot multiplex, so it is compared with HTTP's c32.
h2load counts a response with HTTP status 200 as a success, and a failed gRPC call is also a 200, so the
run reads the model's statistics before and after each gRPC measurement and fails unless every call
succeeded there. The grpcio row is a bare grpc.aio server (grpcio's Python server, which the module used
before its own HTTP/2 server) answering every call with a fixed reply of the real reply's size: what grpcio
alone costs per call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import Body, LoadResult, free_port, pinned, process_tree, run_wrk, tree_cpu_ns, wait_until, warm_up
from benchmarks.models import Reference, reference

SERVER_CORE = 0
LOAD_CORE = 1
MODEL = "wide"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Each gRPC load: (connections, calls in flight per connection).
LOADS = {"c1": (1, 1), "c32": (32, 1), "c32 mux": (1, 32)}
HTTP_LOADS = {"c1": 1, "c32": 32}  # wrk connections, one request in flight each
COMPARED_WITH = {"c1": "c1", "c32": "c32", "c32 mux": "c32"}


def grpc_request(ref: Reference) -> bytes:
    """The ModelInferRequest tritonclient.grpc builds for these rows: raw_input_contents, all outputs."""
    from edge_module.grpc import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=ref.name)
    request.inputs.add(name="input", datatype="FP32", shape=list(ref.rows.shape))
    request.raw_input_contents.append(ref.rows.astype(np.float32).tobytes())
    data: bytes = request.SerializeToString()
    return data


def floor_reply(ref: Reference) -> bytes:
    """A reply the size of the module's for this model: the label and probabilities of every row, raw."""
    from edge_module.grpc import inference_pb2 as pb

    rows = ref.rows.shape[0]
    reply = pb.ModelInferResponse(model_name=ref.name, model_version="1", id="0" * 32)
    reply.outputs.add(name="label", datatype="INT64", shape=[rows])
    reply.outputs.add(name="probabilities", datatype="FP32", shape=[rows, 10])
    reply.raw_output_contents.append(np.zeros(rows, np.int64).tobytes())
    reply.raw_output_contents.append(np.zeros((rows, 10), np.float32).tobytes())
    data: bytes = reply.SerializeToString()
    return data


async def serve_floor(port: int, reply: bytes) -> None:
    import grpc

    async def infer(request: bytes, context: Any) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def http_binary(ref: Reference) -> Body:
    """What tritonclient.http sends for the same rows: a JSON header, the tensor's bytes, binary outputs."""
    import orjson

    raw = ref.rows.astype(np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(ref.rows.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return Body(header + raw, len(header))


def h2load_body(ref: Reference, workdir: Path) -> Path:
    """The request as a gRPC message on the wire: uncompressed flag, 4-byte length, ModelInferRequest."""
    message = grpc_request(ref)
    path = workdir / "grpc-request.bin"
    path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return path


def run_h2load(
    h2load: str, port: int, body: Path, mode: str, seconds: float, server_pid: int, workdir: Path
) -> tuple[LoadResult, float]:
    """One gRPC measurement; returns the result and the load generator's own CPU share of its core."""
    connections, streams = LOADS[mode]
    log_path = workdir / "h2load.log"
    log_path.unlink(missing_ok=True)
    command = [h2load, "-t", "1", "-c", str(connections), "-m", str(streams), "-D", str(max(1, round(seconds)))]
    command += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    command += ["--log-file", str(log_path), f"http://127.0.0.1:{port}{METHOD}"]
    pids = process_tree(server_pid)
    cpu_before, children_before, started = tree_cpu_ns(pids), _children_cpu(), time.perf_counter()
    completed = subprocess.run(pinned(command, LOAD_CORE), capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.perf_counter() - started
    cpu_after, client_cpu = tree_cpu_ns(pids), _children_cpu() - children_before
    summary = next((ln for ln in completed.stdout.splitlines() if ln.startswith("requests:")), None)
    if completed.returncode != 0 or summary is None:
        raise RuntimeError(f"h2load failed ({completed.returncode}): {completed.stdout}{completed.stderr}")
    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    counts = dict(zip(summary.split()[2::2], (int(n) for n in summary.split()[1::2]), strict=False))
    durations = sorted(int(line.split()[2]) for line in log_path.read_text().splitlines() if line.strip())
    done = len(durations)
    seconds_measured = float(completed.stdout.split("finished in ")[1].split("s,")[0])
    result = LoadResult(
        requests=counts.get("succeeded,", done),
        seconds=seconds_measured,
        p50_ms=durations[done // 2] / 1000 if done else 0.0,
        p99_ms=durations[min(done - 1, int(done * 0.99))] / 1000 if done else 0.0,
        errors=sum(counts.get(key, 0) for key in ("failed,", "errored,", "timeout")),
        server_cpu_us=(cpu_after - cpu_before) / 1000 / done if done else 0.0,
    )
    return result, client_cpu / elapsed if elapsed else 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def call_counts(http_port: int, model: str) -> tuple[int, int]:
    """(successful, failed) requests of ``model`` in the module's statistics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=30) as response:
        stats = json.loads(response.read())["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["fail"]["count"])


def _fmt(r: LoadResult) -> str:
    return f"p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms  {r.rps:9.0f} req/s  {r.server_cpu_us:7.1f} µs CPU/req"


def compare(ref: Reference, wrk: str, h2load: str, duration: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """Measure HTTP binary, gRPC and the grpcio floor back to back in each round; print and return figures."""
    http_port, grpc_port, floor_port = free_port(), free_port(), free_port()
    store = Path(tempfile.mkdtemp(dir=workdir, prefix="grpc-store-"))
    env = {
        **os.environ,
        "EDGE_HOST": "127.0.0.1",
        "EDGE_PORT": str(http_port),
        "EDGE_GRPC_PORT": str(grpc_port),
        "EDGE_MODEL_DIR": str(store),
        "EDGE_SERVE_DEFAULT_MODEL": "false",
        "EDGE_LOG_LEVEL": "WARNING",
    }
    command = pinned([sys.executable, "-m", "edge_module", "--model", f"{ref.name}={ref.path}"], SERVER_CORE)
    body, grpc_body = http_binary(ref), h2load_body(ref, workdir)
    url = f"http://127.0.0.1:{http_port}/v2/models/{ref.name}/infer"
    rows: dict[tuple[str, str], list[LoadResult]] = {}
    client_cpu: dict[str, list[float]] = {}
    reply_path = workdir / "grpc-floor-reply.bin"
    reply_path.write_bytes(floor_reply(ref))
    floor_command = pinned(
        [sys.executable, "-m", "benchmarks.grpc_compare", "--floor-server", str(floor_port), str(reply_path)],
        SERVER_CORE,
    )
    with (workdir / "grpc-module.log").open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        floor = subprocess.Popen(floor_command, stdout=log, stderr=log)
    try:
        wait_until(f"http://127.0.0.1:{http_port}/v2/health/ready", None, process, timeout=120)
        warm_up(url, body, 20)
        for port, pid in ((grpc_port, process.pid), (floor_port, floor.pid)):
            run_h2load(h2load, port, grpc_body, "c1", 1, pid, workdir)  # connect and warm up before timing
        for round_ in range(rounds):
            print(f"grpc vs http, round {round_ + 1}/{rounds}", flush=True)
            for mode in LOADS:
                measured: list[tuple[str, LoadResult]] = []
                if mode in HTTP_LOADS:
                    http = run_wrk(wrk, url, body, HTTP_LOADS[mode], duration, process.pid, workdir, LOAD_CORE)
                    measured.append(("http binary", http))
                before = call_counts(http_port, ref.name)
                grpc_result, share = run_h2load(h2load, grpc_port, grpc_body, mode, duration, process.pid, workdir)
                after = call_counts(http_port, ref.name)
                succeeded, failed = after[0] - before[0], after[1] - before[1]
                if failed or succeeded < grpc_result.requests:
                    raise RuntimeError(
                        f"gRPC {mode}: the model counted {succeeded} successes and {failed} failures for "
                        f"{grpc_result.requests} calls h2load saw succeed"
                    )
                floor_result, _ = run_h2load(h2load, floor_port, grpc_body, mode, duration, floor.pid, workdir)
                measured += [("grpc raw", grpc_result), ("grpcio floor", floor_result)]
                for name, result in measured:
                    if result.errors or not result.requests:
                        raise RuntimeError(f"{name} {mode}: {result.errors} errors, {result.requests} requests")
                    rows.setdefault((name, mode), []).append(result)
                    print(f"  {name:12} {ref.name} {mode:<7} {_fmt(result)}", flush=True)
                client_cpu.setdefault(mode, []).append(share)
    finally:
        for server in (process, floor):
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return report(rows, client_cpu)


def report(rows: dict[tuple[str, str], list[LoadResult]], client_cpu: dict[str, list[float]]) -> dict[str, Any]:
    med = statistics.median
    summary: list[dict[str, Any]] = [
        {
            "transport": name,
            "load": mode,
            "rps": round(med(r.rps for r in results), 1),
            "p50_ms": round(med(r.p50_ms for r in results), 3),
            "p99_ms": round(med(r.p99_ms for r in results), 3),
            "server_cpu_us": round(med(r.server_cpu_us for r in results), 1),
        }
        for (name, mode), results in rows.items()
    ]
    by = {(row["transport"], row["load"]): row for row in summary}
    checks = []
    for mode in LOADS:
        grpc_row, http_row = by.get(("grpc raw", mode)), by.get(("http binary", COMPARED_WITH[mode]))
        if grpc_row is None or http_row is None:
            continue
        against = f"HTTP binary {COMPARED_WITH[mode]}" if COMPARED_WITH[mode] != mode else "HTTP binary"
        rps = float(grpc_row["rps"]) / float(http_row["rps"])
        cpu = float(grpc_row["server_cpu_us"]) / float(http_row["server_cpu_us"])
        checks.append(
            {
                "target": f"wide {mode}: gRPC raw req/s vs {against}",
                "value": round(rps, 2),
                "bound": ">= 1.0",
                "met": rps >= 1.0,
            }
        )
        checks.append(
            {
                "target": f"wide {mode}: gRPC raw server CPU/req vs {against}",
                "value": round(cpu, 2),
                "bound": "<= 1.0",
                "met": cpu <= 1.0,
            }
        )
    print()
    print("| transport | load | p50 ms | p99 ms | req/s | server CPU µs/req |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in summary:
        print(
            f"| {row['transport']} | {row['load']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
            f"{row['rps']:.0f} | {row['server_cpu_us']:.1f} |"
        )
    shares = {mode: round(med(values), 2) for mode, values in client_cpu.items()}
    print(f"h2load's own CPU (share of its core): {shares}")
    for check in checks:
        print(f"{'MET ' if check['met'] else 'MISS'}  {check['target']}: {check['value']} (target {check['bound']})")
    return {"model": MODEL, "summary": summary, "h2load_cpu_share": shares, "targets": checks}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_compare", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--cache", type=Path, default=Path("bench-results/models"), help="trained models")
    parser.add_argument("--out", type=Path, default=Path("bench-results/grpc.json"), help="JSON results")
    parser.add_argument("--floor-server", nargs=2, metavar=("PORT", "REPLY"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def tools() -> tuple[str, str] | None:
    """wrk and h2load, or None after saying which Debian package is missing."""
    import shutil

    wrk, h2load = shutil.which("wrk"), shutil.which("h2load")
    if wrk is None or h2load is None:
        missing = " and ".join(pkg for pkg, tool in (("wrk", wrk), ("nghttp2-client", h2load)) if tool is None)
        print(f"missing load generators: install the Debian package(s) {missing}", file=sys.stderr)
        return None
    return wrk, h2load


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.floor_server:
        import uvloop

        port, reply_path = args.floor_server
        uvloop.run(serve_floor(int(port), Path(reply_path).read_bytes()))
        return 0
    found = tools()
    if found is None:
        return 2
    wrk, h2load = found
    with tempfile.TemporaryDirectory(prefix="edge-grpc-bench-") as tmp:
        figures = compare(reference(MODEL, args.cache), wrk, h2load, args.duration, args.rounds, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
