"""``python -m benchmarks.run [--quick] [--mlserver]``: the module against its floors, under wrk, in one run.

The server under test is pinned to core 0 and wrk to core 1. Figures from one run are compared with
each other (ratios); absolute numbers depend on the machine and on whatever else it is doing.
``--mlserver`` also measures MLServer 1.7.1 on the small model (JSON), from its own virtual environment.
``--grpc`` also measures gRPC raw contents next to HTTP binary on the wide model (benchmarks/grpc_compare.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks import grpc_compare, mlserver, sweep
from benchmarks.load import Body, LoadResult, free_port, pinned, rss_mb, run_wrk, wait_until, warm_up
from benchmarks.models import Reference, reference

SERVER_CORE = 0
LOAD_CORE = 1


Key = tuple[str, str, str, int]  # server, model, mode, connections


@dataclass(frozen=True)
class Measurement:
    server: str  # module | module+batching | floor | mlserver | mlserver-inline
    model: str
    mode: str  # json | binary
    connections: int
    result: LoadResult
    round: int = 0
    rows_per_execution: float | None = None  # the batching server's mean merged batch during this measurement

    @property
    def key(self) -> Key:
        return (self.server, self.model, self.mode, self.connections)

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "server": self.server,
            "model": self.model,
            "mode": self.mode,
            "connections": self.connections,
            **asdict(self.result),
            "rps": round(self.result.rps, 1),
            "rows_per_execution": self.rows_per_execution,
        }


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    startup_seconds: float


def bodies(ref: Reference) -> dict[str, Body]:
    shape = list(ref.rows.shape)
    as_json = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": ref.rows.ravel().tolist()}]}
    )
    raw = ref.rows.astype(np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return {"json": Body(as_json, None), "binary": Body(header + raw, len(header))}


@contextmanager
def server(
    name: str, command: Sequence[str], env: dict[str, str], port: int, probe: Body | None, probe_path: str, log: Path
) -> Iterator[Server]:
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(pinned(command, SERVER_CORE), env={**os.environ, **env}, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(url + probe_path, probe, process, timeout=120)
        yield Server(name, process, url, time.monotonic() - started)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def module_env(port: int, workdir: Path) -> dict[str, str]:
    """The module's settings for a benchmark run: loopback, a fresh store, no default model, quiet logs."""
    return {
        "EDGE_HOST": "127.0.0.1",
        "EDGE_PORT": str(port),
        "EDGE_MODEL_DIR": tempfile.mkdtemp(dir=workdir, prefix="store-"),
        "EDGE_SERVE_DEFAULT_MODEL": "false",
        "EDGE_LOG_LEVEL": "WARNING",
    }


def module_server(refs: dict[str, Reference], workdir: Path, batching: tuple[int, float] | None) -> Any:
    port = free_port()
    env = module_env(port, workdir)
    if batching:
        env["EDGE_BATCH_MAX_SIZE"] = str(batching[0])
        env["EDGE_BATCH_MAX_DELAY_MS"] = str(batching[1])
    args = [arg for ref in refs.values() for arg in ("--model", f"{ref.name}={ref.path}")]
    name = "module+batching" if batching else "module"
    command = [sys.executable, "-m", "edge_module", *args]
    return server(name, command, env, port, None, "/v2/health/ready", workdir / f"{name}.log")


def floor_server(refs: dict[str, Reference], workdir: Path) -> Any:
    """The floor from the best-versions overlay (benchmarks/sweep.py), not from the module's own environment:
    a slower dependency pinned for the module then shows as a ratio below target instead of hiding in both."""
    port = free_port()
    first = next(iter(refs.values()))
    command = [sys.executable, "-m", "benchmarks.floor", str(port), *(f"{r.name}={r.path}" for r in refs.values())]
    probe = bodies(first)["json"]
    env = {"PYTHONPATH": sweep.python_path(sweep.best_overlay())}
    return server("floor", command, env, port, probe, f"/v2/models/{first.name}/infer", workdir / "floor.log")


def mlserver_server(ref: Reference, workdir: Path, venv: Path, config: str) -> Any:
    command = mlserver.ensure_venv(venv)
    root, port = mlserver.model_folder(ref, workdir, config)
    probe = bodies(ref)["json"]
    path = f"/v2/models/{ref.name}/infer"
    return server(config, [str(command), "start", str(root)], {}, port, probe, path, workdir / f"{config}.log")


def measure(srv: Server, ref: Reference, mode: str, conns: int, args: argparse.Namespace, round_: int) -> Measurement:
    url = f"{srv.url}/v2/models/{ref.name}/infer"
    body = bodies(ref)[mode]
    warm_up(url, body, 20)
    batching = srv.name == "module+batching"
    before = execution_counts(srv, ref.name) if batching else (0, 0)
    result = run_wrk(args.wrk, url, body, conns, args.duration, srv.process.pid, args.workdir, LOAD_CORE)
    if result.errors or not result.requests:
        raise RuntimeError(f"{srv.name} {ref.name} {mode} c{conns}: {result.errors} errors")
    rows = None
    if batching:
        after = execution_counts(srv, ref.name)
        rows = round((after[0] - before[0]) / max(1, after[1] - before[1]), 2)
    print(f"  {srv.name:16} {ref.name:6} {mode:6} c{conns:<3} {_fmt(result)}", flush=True)
    return Measurement(srv.name, ref.name, mode, conns, result, round_, rows)


def execution_counts(srv: Server, model: str) -> tuple[int, int]:
    """(rows inferred, model executions) from the module's Triton-style statistics."""
    with urllib.request.urlopen(f"{srv.url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"]
    return sum(s["inference_count"] for s in stats), sum(s["execution_count"] for s in stats)


@dataclass(frozen=True)
class Summary:
    """One server and scenario over every round: medians, so one disturbed round does not decide."""

    key: Key
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float

    def as_dict(self) -> dict[str, Any]:
        server, model, mode, conns = self.key
        values = {"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "server_cpu_us": self.cpu_us}
        return {"server": server, "model": model, "mode": mode, "connections": conns} | {
            k: round(v, 3) for k, v in values.items()
        }


def summarize(ms: list[Measurement]) -> list[Summary]:
    groups: dict[Key, list[LoadResult]] = {}
    for m in ms:
        groups.setdefault(m.key, []).append(m.result)
    med = statistics.median
    return [
        Summary(
            key,
            med(r.rps for r in rs),
            med(r.p50_ms for r in rs),
            med(r.p99_ms for r in rs),
            med(r.server_cpu_us for r in rs),
        )
        for key, rs in groups.items()
    ]


def paired(ms: list[Measurement], a: Key, b: Key, metric: Callable[[LoadResult], float]) -> float | None:
    """Median over rounds of metric(a) / metric(b), each pair measured back to back in one round."""
    rounds: dict[int, dict[Key, LoadResult]] = {}
    for m in ms:
        rounds.setdefault(m.round, {})[m.key] = m.result
    values = [metric(r[a]) / metric(r[b]) for r in rounds.values() if a in r and b in r and metric(r[b])]
    return statistics.median(values) if values else None


def _rps(r: LoadResult) -> float:
    return r.rps


def _p50(r: LoadResult) -> float:
    return r.p50_ms


def _p99(r: LoadResult) -> float:
    return r.p99_ms


def _cpu(r: LoadResult) -> float:
    return r.server_cpu_us


def scenarios(refs: dict[str, Reference], with_mlserver: bool = False) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(model, mode, connections, servers): the servers of one scenario are measured back to back."""
    out: list[tuple[str, str, int, tuple[str, ...]]] = []
    for name in refs:
        servers = ("module", "module+batching") if name == "heavy" else ("floor", "module")
        for mode in ("json",) if name == "heavy" else ("json", "binary"):
            for conns in (1, 32):
                extra = tuple(mlserver.CONFIGS) if with_mlserver and name == "small" and mode == "json" else ()
                out.append((name, mode, conns, servers + extra))
    return out


def _fmt(r: LoadResult) -> str:
    return f"p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms  {r.rps:9.0f} req/s  {r.server_cpu_us:7.1f} µs CPU/req"


def in_process_us(ref: Reference, calls: int, rows: int = 0) -> float:
    """Median microseconds of one onnxruntime call in this process: the floor under every server.

    ``rows`` repeats the sample to that many rows (a merged batch); 0 keeps the reference's own batch.
    """
    from benchmarks.floor import session

    sess = session(str(ref.path))
    sample = np.resize(ref.rows, (rows, ref.features)) if rows else ref.rows
    feed = {sess.get_inputs()[0].name: sample}
    for _ in range(20):
        sess.run(None, feed)
    timings = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        sess.run(None, feed)
        timings.append(time.perf_counter_ns() - start)
    return statistics.median(timings) / 1000


def cold_start(workdir: Path, repeats: int) -> dict[str, float]:
    """``python -m edge_module`` with the bundled default model: process start to ready, and RSS then."""
    seconds: list[float] = []
    rss: list[float] = []
    for i in range(repeats):
        port = free_port()
        store = workdir / f"cold-{i}"
        env = {"EDGE_HOST": "127.0.0.1", "EDGE_PORT": str(port), "EDGE_MODEL_DIR": str(store)}
        command = [sys.executable, "-m", "edge_module"]
        with server("cold", command, env, port, None, "/v2/health/ready", workdir / "cold.log") as srv:
            seconds.append(srv.startup_seconds)
            rss.append(rss_mb(srv.process.pid))
    return {"ready_seconds": round(statistics.median(seconds), 3), "rss_mb": round(statistics.median(rss), 1)}


def targets(ms: list[Measurement], heavy: HeavyFigures | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def check(what: str, value: float | None, op: str, bound: float) -> None:
        if value is None:
            return
        met = value >= bound if op == ">=" else value <= bound
        rows.append({"target": what, "value": round(value, 2), "bound": f"{op} {round(bound, 2)}", "met": met})

    # Against the best-versions floor (issue 16): >= 0.7x throughput and <= 1.5x CPU per request at c32,
    # JSON and binary; c1 p50 <= 1.3x.
    for mode in ("json", "binary"):
        module_32, floor_32 = ("module", "small", mode, 32), ("floor", "small", mode, 32)
        check(f"small {mode} c32: req/s vs floor", paired(ms, module_32, floor_32, _rps), ">=", 0.7)
        check(f"small {mode} c32: CPU per request vs floor", paired(ms, module_32, floor_32, _cpu), "<=", 1.5)
    check(
        "small json c1: p50 vs floor",
        paired(ms, ("module", "small", "json", 1), ("floor", "small", "json", 1), _p50),
        "<=",
        1.3,
    )
    for config, label in mlserver.LABELS.items():
        check(
            f"small json c32: req/s vs {label}",
            paired(ms, ("module", "small", "json", 32), (config, "small", "json", 32), _rps),
            ">=",
            10.0,
        )
    for model, bound in (("small", 1.0), ("wide", 2.0)):
        for conns in (1, 32):
            check(
                f"{model} c{conns}: binary req/s vs json",
                paired(ms, ("module", model, "binary", conns), ("module", model, "json", conns), _rps),
                ">=",
                bound,
            )
    on_32, off_32 = ("module+batching", "heavy", "json", 32), ("module", "heavy", "json", 32)
    check("heavy c32: batching on vs off req/s", paired(ms, on_32, off_32, _rps), ">=", 3.0)
    if heavy is not None:
        check("heavy c32 batching on: p99 ms (strict: single-row call)", heavy.p99_ms, "<=", heavy.strict_bound_ms)
        check("heavy c32 batching on: p99 ms (as executed: 32-row call)", heavy.p99_ms, "<=", heavy.executed_bound_ms)
    on_1, off_1 = ("module+batching", "heavy", "json", 1), ("module", "heavy", "json", 1)
    check("heavy c1: batching on vs off p50", paired(ms, on_1, off_1, _p50), "<=", 1.1)
    return rows


@dataclass(frozen=True)
class HeavyFigures:
    """The heavy model's tail under batching, against the bound read two ways, and what Little's law says.

    The target bounds p99 by the queue delay plus three service times. Read strictly, a service time is
    one single-row call; as the batcher executes it, one call carries a merged batch of up to
    ``batch_max_size`` rows. At ``connections`` concurrent requests, a p99 under the strict bound needs a
    mean latency under it too, i.e. a throughput of at least connections / bound (Little's law).
    """

    connections: int
    delay_ms: float
    single_ms: float
    batch_rows: int
    batch_ms: float
    executed_rows: float  # mean rows per merged run, as the module counted them at 32 connections
    executed_ms: float  # in-process time of one call of that many rows
    p50_ms: float
    p99_ms: float
    rps: float

    @property
    def strict_bound_ms(self) -> float:
        return self.delay_ms + 3 * self.single_ms

    @property
    def executed_bound_ms(self) -> float:
        return self.delay_ms + 3 * self.batch_ms

    @property
    def strict_rps_needed(self) -> float:
        return self.connections / (self.strict_bound_ms / 1000)

    @property
    def batched_rps_ceiling(self) -> float:
        """Requests per second if the core did nothing but full batched calls back to back."""
        return self.batch_rows / (self.batch_ms / 1000)

    def as_dict(self) -> dict[str, float]:
        values = {
            "connections": self.connections,
            "delay_ms": self.delay_ms,
            "single_row_call_ms": self.single_ms,
            "batch_rows": self.batch_rows,
            "batch_call_ms": self.batch_ms,
            "executed_rows_per_call": self.executed_rows,
            "executed_rows_call_ms": self.executed_ms,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p99_over_p50": self.p99_ms / self.p50_ms if self.p50_ms else 0.0,
            "rps": self.rps,
            "strict_bound_ms": self.strict_bound_ms,
            "executed_bound_ms": self.executed_bound_ms,
            "strict_rps_needed": self.strict_rps_needed,
            "batched_rps_ceiling": self.batched_rps_ceiling,
        }
        return {k: round(v, 3) for k, v in values.items()}

    def lines(self) -> list[str]:
        return [
            f"heavy c{self.connections} batching on: p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms "
            f"(p99/p50 {self.p99_ms / self.p50_ms:.2f}), {self.rps:.0f} req/s",
            f"  bound, strict: delay {self.delay_ms:g} + 3 x single-row call {self.single_ms:.2f} ms "
            f"= {self.strict_bound_ms:.2f} ms; by Little's law that needs >= {self.strict_rps_needed:.0f} req/s "
            f"({self.strict_rps_needed * self.single_ms / 1000:.1f}x one core's single-row rate)",
            f"  bound, as executed: delay {self.delay_ms:g} + 3 x {self.batch_rows}-row call {self.batch_ms:.2f} ms "
            f"= {self.executed_bound_ms:.2f} ms; full {self.batch_rows}-row calls back to back top out at "
            f"{self.batched_rps_ceiling:.0f} req/s",
            f"  merged runs at c{self.connections} carried {self.executed_rows:.1f} rows on average "
            f"(one call of {round(self.executed_rows)} rows: {self.executed_ms:.2f} ms in-process)",
        ]


def heavy_figures(
    ms: list[Measurement], ref: Reference, single_ms: float, rows: int, delay_ms: float
) -> HeavyFigures | None:
    runs = [m for m in ms if m.key == ("module+batching", "heavy", "json", 32)]
    if not runs:
        return None
    results = [m.result for m in runs]
    med = statistics.median
    executed = med(m.rows_per_execution or 1.0 for m in runs)
    return HeavyFigures(
        connections=32,
        delay_ms=delay_ms,
        single_ms=single_ms,
        batch_rows=rows,
        batch_ms=in_process_us(ref, 50, rows) / 1000,
        executed_rows=executed,
        executed_ms=in_process_us(ref, 50, max(1, round(executed))) / 1000,
        p50_ms=med(r.p50_ms for r in results),
        p99_ms=med(r.p99_ms for r in results),
        rps=med(r.rps for r in results),
    )


def mlserver_ratios(ms: list[Measurement]) -> dict[str, dict[str, dict[str, float]]]:
    """Module over each MLServer configuration, small model, JSON: req/s, p50 and CPU/request ratios."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for config in mlserver.CONFIGS:
        for conns in (1, 32):
            module, other = ("module", "small", "json", conns), (config, "small", "json", conns)
            ratios = {
                name: round(value, 3)
                for name, metric in (("rps", _rps), ("p50", _p50), ("cpu", _cpu))
                if (value := paired(ms, module, other, metric)) is not None
            }
            if ratios:
                out.setdefault(config, {})[f"c{conns}"] = ratios
    return out


def mlserver_lines(ms: list[Measurement]) -> list[str]:
    return [
        f"module vs {mlserver.LABELS[config]}, small json {conns}: "
        f"req/s {r['rps']:.1f}x, p50 {r['p50']:.2f}x, CPU/req {r['cpu']:.2f}x"
        for config, by_conns in mlserver_ratios(ms).items()
        for conns, r in by_conns.items()
    ]


def table(ms: list[Measurement]) -> str:
    header = "| server | model | mode | conns | p50 ms | p99 ms | req/s | CPU µs/req | vs floor: req/s | p50 | CPU |"
    lines = [header, "|" + " --- |" * 11]
    for row in summarize(ms):
        server, model, mode, conns = row.key
        floor: Key = ("floor", model, mode, conns)
        ratios = ["", "", ""]
        if server != "floor":
            for i, metric in enumerate((_rps, _p50, _cpu)):
                value = paired(ms, row.key, floor, metric)
                ratios[i] = f"{value:.2f}x" if value is not None else ""
        lines.append(
            f"| {server} | {model} | {mode} | {conns} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | "
            f"{row.rps:.0f} | {row.cpu_us:.1f} | {' | '.join(ratios)} |"
        )
    return "\n".join(lines)


def mlserver_report(ms: list[Measurement]) -> dict[str, Any]:
    return {
        "version": "1.7.1",
        "runtime": "benchmarks/mlserver_runtime.py (onnxruntime, 1 intra-op thread)",
        "configs": mlserver.CONFIGS,
        "model": "small",
        "mode": "json",
        "module_vs_mlserver": mlserver_ratios(ms),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: short measurements, one cold start")
    parser.add_argument("--duration", type=float, help="whole seconds per measurement (default 2, quick 1)")
    parser.add_argument("--rounds", type=int, help="rounds over every scenario; the best is kept (default 3, quick 1)")
    parser.add_argument("--models", default="small,wide,heavy", help="comma-separated subset of small,wide,heavy")
    parser.add_argument("--batch-size", type=int, default=32, help="EDGE_BATCH_MAX_SIZE for the batching run")
    parser.add_argument("--batch-delay-ms", type=float, default=0.0, help="EDGE_BATCH_MAX_DELAY_MS for it")
    parser.add_argument("--cache", type=Path, default=Path("bench-results/models"), help="trained models")
    parser.add_argument("--out", type=Path, default=Path("bench-results/latest.json"), help="JSON results")
    parser.add_argument(
        "--mlserver", action="store_true", help="also measure MLServer 1.7.1 (small model, JSON; own venv)"
    )
    parser.add_argument(
        "--mlserver-venv", type=Path, default=Path("bench-results/mlserver-venv"), help="MLServer's venv, made once"
    )
    parser.add_argument("--grpc", action="store_true", help="also compare gRPC raw contents with HTTP binary (wide)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 2.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.wrk = shutil.which("wrk")
    if args.wrk is None:
        print("wrk not found: install the Debian package 'wrk'", file=sys.stderr)
        return 2
    names = [n for n in ("small", "wide", "heavy") if n in args.models.split(",")]
    refs = {name: reference(name, args.cache) for name in names}
    with_mlserver = args.mlserver and "small" in refs
    service_ms = {name: in_process_us(ref, 200 if name == "heavy" else 2000) / 1000 for name, ref in refs.items()}
    print("in-process onnxruntime, µs/call: " + ", ".join(f"{n} {v * 1000:.1f}" for n, v in service_ms.items()))
    ms: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp, ExitStack() as stack:
        args.workdir = Path(tmp)
        # All servers run at once, pinned to the same core; only the one under load does any work.
        servers: dict[str, Server] = {}
        light = {n: r for n, r in refs.items() if n != "heavy"}
        if light:
            servers["floor"] = stack.enter_context(floor_server(light, args.workdir))
        servers["module"] = stack.enter_context(module_server(refs, args.workdir, None))
        if "heavy" in refs:
            batching = module_server({"heavy": refs["heavy"]}, args.workdir, (args.batch_size, args.batch_delay_ms))
            servers["module+batching"] = stack.enter_context(batching)
        for config in mlserver.CONFIGS if with_mlserver else ():
            ref = refs["small"]
            servers[config] = stack.enter_context(mlserver_server(ref, args.workdir, args.mlserver_venv, config))
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for name, mode, conns, names_ in scenarios(refs, with_mlserver):
                ms += [measure(servers[srv], refs[name], mode, conns, args, round_) for srv in names_]
        stack.close()
        cold = cold_start(args.workdir, 1 if args.quick else 3)
        grpc_figures = None
        if args.grpc:
            wide = refs.get("wide") or reference("wide", args.cache)
            found = grpc_compare.tools()
            if found is None:
                raise SystemExit(2)
            grpc_figures = grpc_compare.compare(wide, args.wrk, found[1], args.duration, args.rounds, args.workdir)
    heavy = None
    if "heavy" in refs:
        heavy = heavy_figures(ms, refs["heavy"], service_ms["heavy"], args.batch_size, args.batch_delay_ms)
    checks = targets(ms, heavy)
    print()
    print(table(ms))
    print()
    print(f"in-process onnxruntime µs/call: {', '.join(f'{n} {v * 1000:.1f}' for n, v in service_ms.items())}")
    print(f"cold start (process start -> ready, default model): {cold['ready_seconds']} s, RSS {cold['rss_mb']} MB")
    for line in (heavy.lines() if heavy else []) + mlserver_lines(ms):
        print(line)
    if not with_mlserver:
        print("MLServer: not measured (add --mlserver)")
    print()
    for check in checks:
        print(f"{'MET ' if check['met'] else 'MISS'}  {check['target']}: {check['value']} (target {check['bound']})")
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "batch_max_size": args.batch_size,
            "batch_delay_ms": args.batch_delay_ms,
        },
        "in_process_us": {n: round(v * 1000, 2) for n, v in service_ms.items()},
        "summary": [row.as_dict() for row in summarize(ms)],
        "measurements": [m.as_dict() for m in ms],
        "cold_start": cold,
        "heavy_batching": heavy.as_dict() if heavy else None,
        "targets": checks,
        "mlserver": mlserver_report(ms) if with_mlserver else "not measured (python -m benchmarks.run --mlserver)",
        "grpc": grpc_figures or "not measured (python -m benchmarks.run --grpc)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
