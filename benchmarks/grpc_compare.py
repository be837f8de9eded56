"""gRPC raw contents next to HTTP binary, on the binary-heavy "wide" model (32 rows x 64 FP32 per request).

``python -m benchmarks.grpc_compare [--duration S] [--rounds N]``, or ``python -m benchmarks.run --grpc``.
One module process serves both ports, pinned to core 0. HTTP is driven by wrk, as in benchmarks.run; gRPC by a
bounded grpc.aio load loop (ghz is not packaged in any registry this project installs from), in its own process
pinned to core 1, sending the bytes tritonclient.grpc sends (a ModelInferRequest with raw_input_contents,
serialised once). The two clients differ, so next to req/s the report gives each side's server CPU per request,
which does not depend on the client, and the gRPC client's own CPU use (near 100% means it was the limit).
A third row is the gRPC floor: a bare grpc.aio server on uvloop that answers every ModelInfer with a fixed reply
of the real reply's size, with no decoding and no model. It is what the transport alone costs per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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
MAX_REQUESTS = 2_000_000  # the load loop's bound besides its duration


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


async def drive(target: str, body: bytes, connections: int, seconds: float) -> dict[str, Any]:
    """Keep ``connections`` calls in flight, each on its own HTTP/2 connection, for ``seconds``."""
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel, as wrk's connections
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    latencies: list[int] = []
    errors = 0
    try:
        for channel in channels:
            await channel.unary_unary(METHOD)(body, timeout=30)  # connect and warm up before timing
        cpu_before = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(channel: Any) -> None:
            nonlocal errors
            call = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side (de)serialisation
            clock = time.perf_counter_ns
            while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS:
                begun = clock()
                try:
                    await call(body, timeout=30)
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append(clock() - begun)

        await asyncio.gather(*(worker(channel) for channel in channels))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
    finally:
        for channel in channels:
            await channel.close()
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "seconds": elapsed,
        "p50_ms": latencies[count // 2] / 1e6 if count else 0.0,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] / 1e6 if count else 0.0,
        "errors": errors,
        "client_cpu": client_cpu / elapsed if elapsed else 0.0,
    }


def run_grpc_client(
    port: int, body: bytes, connections: int, seconds: float, server_pid: int, workdir: Path
) -> tuple[LoadResult, float]:
    """The load loop in its own process on LOAD_CORE; returns the result and the client's CPU share."""
    body_path = workdir / "grpc-body.bin"
    body_path.write_bytes(body)
    command = pinned(
        [
            sys.executable,
            "-m",
            "benchmarks.grpc_compare",
            "--client",
            f"127.0.0.1:{port}",
            str(body_path),
            str(connections),
            str(seconds),
        ],
        LOAD_CORE,
    )
    pids = process_tree(server_pid)
    cpu_before = tree_cpu_ns(pids)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    cpu_after = tree_cpu_ns(pids)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("GRPC-JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"gRPC load failed ({completed.returncode}): {completed.stdout}{completed.stderr}")
    stats = json.loads(line.removeprefix("GRPC-JSON "))
    requests = int(stats["requests"])
    result = LoadResult(
        requests=requests,
        seconds=stats["seconds"],
        p50_ms=stats["p50_ms"],
        p99_ms=stats["p99_ms"],
        errors=int(stats["errors"]),
        server_cpu_us=(cpu_after - cpu_before) / 1000 / requests if requests else 0.0,
    )
    return result, float(stats["client_cpu"])


def _fmt(r: LoadResult) -> str:
    return f"p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms  {r.rps:9.0f} req/s  {r.server_cpu_us:7.1f} µs CPU/req"


def compare(ref: Reference, wrk: str, duration: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """Measure both transports, back to back in each round, at 1 and 32 connections; print and return figures."""
    http_port, grpc_port = free_port(), free_port()
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
    body, grpc_body = http_binary(ref), grpc_request(ref)
    url = f"http://127.0.0.1:{http_port}/v2/models/{ref.name}/infer"
    rows: dict[tuple[str, int], list[LoadResult]] = {}
    client_cpu: dict[int, list[float]] = {}
    floor_port = free_port()
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
        for round_ in range(rounds):
            print(f"grpc vs http, round {round_ + 1}/{rounds}", flush=True)
            for conns in (1, 32):
                http = run_wrk(wrk, url, body, conns, duration, process.pid, workdir, LOAD_CORE)
                grpc_result, share = run_grpc_client(grpc_port, grpc_body, conns, duration, process.pid, workdir)
                floor_result, _ = run_grpc_client(floor_port, grpc_body, conns, duration, floor.pid, workdir)
                measured = (("http binary", http), ("grpc raw", grpc_result), ("grpc floor", floor_result))
                for name, result in measured:
                    if result.errors or not result.requests:
                        raise RuntimeError(f"{name} c{conns}: {result.errors} errors")
                    rows.setdefault((name, conns), []).append(result)
                    print(f"  {name:12} {ref.name} c{conns:<3} {_fmt(result)}", flush=True)
                client_cpu.setdefault(conns, []).append(share)
    finally:
        for server in (process, floor):
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return report(rows, client_cpu)


def report(rows: dict[tuple[str, int], list[LoadResult]], client_cpu: dict[int, list[float]]) -> dict[str, Any]:
    med = statistics.median
    summary: list[dict[str, Any]] = [
        {
            "transport": name,
            "connections": conns,
            "rps": round(med(r.rps for r in results), 1),
            "p50_ms": round(med(r.p50_ms for r in results), 3),
            "p99_ms": round(med(r.p99_ms for r in results), 3),
            "server_cpu_us": round(med(r.server_cpu_us for r in results), 1),
        }
        for (name, conns), results in rows.items()
    ]
    by = {(row["transport"], row["connections"]): row for row in summary}
    checks = []
    for conns in (1, 32):
        grpc_row, http_row = by.get(("grpc raw", conns)), by.get(("http binary", conns))
        if grpc_row is None or http_row is None:
            continue
        rps = float(grpc_row["rps"]) / float(http_row["rps"])
        cpu = float(grpc_row["server_cpu_us"]) / float(http_row["server_cpu_us"])
        checks.append(
            {
                "target": f"wide c{conns}: gRPC raw req/s vs HTTP binary",
                "value": round(rps, 2),
                "bound": ">= 1.0",
                "met": rps >= 1.0,
            }
        )
        checks.append(
            {
                "target": f"wide c{conns}: gRPC raw server CPU/req vs HTTP binary",
                "value": round(cpu, 2),
                "bound": "<= 1.0",
                "met": cpu <= 1.0,
            }
        )
    print()
    print("| transport | conns | p50 ms | p99 ms | req/s | server CPU µs/req |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in summary:
        print(
            f"| {row['transport']} | {row['connections']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
            f"{row['rps']:.0f} | {row['server_cpu_us']:.1f} |"
        )
    for conns in (1, 32):
        grpc_row, floor_row = by.get(("grpc raw", conns)), by.get(("grpc floor", conns))
        if grpc_row is not None and floor_row is not None:
            print(
                f"wide c{conns}: the module over gRPC uses {float(grpc_row['server_cpu_us']):.0f} µs CPU/req; the bare "
                f"grpc.aio floor alone {float(floor_row['server_cpu_us']):.0f} µs"
            )
    shares = {f"c{conns}": round(med(values), 2) for conns, values in client_cpu.items()}
    print(f"gRPC load loop's own CPU (share of its core): {shares}")
    for check in checks:
        print(f"{'MET ' if check['met'] else 'MISS'}  {check['target']}: {check['value']} (target {check['bound']})")
    return {"model": MODEL, "summary": summary, "grpc_client_cpu_share": shares, "targets": checks}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_compare", description=__doc__)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--cache", type=Path, default=Path("bench-results/models"), help="trained models")
    parser.add_argument("--out", type=Path, default=Path("bench-results/grpc.json"), help="JSON results")
    parser.add_argument(
        "--client", nargs=4, metavar=("TARGET", "BODY", "CONNECTIONS", "SECONDS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--floor-server", nargs=2, metavar=("PORT", "REPLY"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.floor_server:
        import uvloop

        port, reply_path = args.floor_server
        uvloop.run(serve_floor(int(port), Path(reply_path).read_bytes()))
        return 0
    if args.client:
        target, body_path, conns, seconds = args.client
        stats = asyncio.run(drive(target, Path(body_path).read_bytes(), int(conns), float(seconds)))
        print("GRPC-JSON " + json.dumps(stats), flush=True)
        return 0
    import shutil

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found: install the Debian package 'wrk'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edge-grpc-bench-") as tmp:
        figures = compare(reference(MODEL, args.cache), wrk, args.duration, args.rounds, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
