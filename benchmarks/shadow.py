"""``python -m benchmarks.shadow``: what a shadow costs the active version's requests, over HTTP under wrk.

Three real module servers (``benchmarks.shadow_server``) serve the benchmark's small model (a 100-tree
forest, 30 features): one without a shadow, two with a different real forest as its shadow, mirrored at the
module's default sample rate (``EDGE_SHADOW_SAMPLE_RATE``, 0.2) and at 1 (every request). All are pinned to
core 0 (the shadow worker inherits the pinning, so it competes for the very core the module serves on: the
worst case, a device with no idle core) and wrk runs on core 1. Rounds alternate which server goes first;
figures are medians over rounds. The bar
(issue 20): c=1 p50 with the shadow within 1.1x of without, c=32 throughput within 0.9x. Prints MET or
MISS, and how many requests the shadow compared and dropped (it runs only on idle CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import LoadResult, free_port, run_wrk, warm_up
from benchmarks.models import Reference, reference
from benchmarks.run import LOAD_CORE, Server, bodies, server
from cloud.export import to_onnx_single_tensor
from edge_module.model_contract import Feature, ModelMetadata

# name -> the shadow's sample rate (None: no shadow). The module's default rate, and every request.
CONFIGS: dict[str, float | None] = {"off": None, "on, rate 0.2": 0.2, "on, rate 1": 1.0}
C1_BAR = 1.1
C32_BAR = 0.9


def candidate(ref: Reference, cache: Path) -> Path:
    """A different real forest on the same data and inputs: fewer, shallower trees, another seed."""
    path = cache / f"{ref.name}-shadow.onnx"
    if not path.exists():
        from sklearn.datasets import load_breast_cancer
        from sklearn.ensemble import RandomForestClassifier

        x, y = load_breast_cancer(return_X_y=True)
        estimator = RandomForestClassifier(n_estimators=30, max_depth=4, random_state=7).fit(x, y)
        metadata = ModelMetadata(
            name=ref.name,
            version="shadow",
            task="classification",
            features=tuple(Feature(f"f{i}") for i in range(x.shape[1])),
            class_labels=tuple(int(c) for c in estimator.classes_),
        )
        path.write_bytes(to_onnx_single_tensor(estimator, x.shape[1], metadata))
    return path


@contextmanager
def module(ref: Reference, shadow: Path | None, workdir: Path, config: str, rate: float | None) -> Iterator[Server]:
    port = free_port()
    store = Path(tempfile.mkdtemp(dir=workdir, prefix="store-"))
    env = {
        "EDGE_HOST": "127.0.0.1",
        "EDGE_PORT": str(port),
        "EDGE_MODEL_DIR": str(store),
        "EDGE_SERVE_DEFAULT_MODEL": "false",
        "EDGE_LOG_LEVEL": "WARNING",
        "EDGE_SHADOW_SAMPLE_RATE": str(rate or 1.0),
    }
    name = "shadow-" + "".join(c if c.isalnum() else "-" for c in config)
    command = [sys.executable, "-m", "benchmarks.shadow_server", "--model", f"{ref.name}={ref.path}"]
    if shadow is not None:
        command += ["--shadow", str(shadow)]
    with server(name, command, env, port, None, "/v2/health/ready", workdir / f"{name}.log") as srv:
        if shadow is not None:
            wait_for_shadow(srv.url, ref.name)
        yield srv


def shadow_figures(url: str, name: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(url + "/status.json", timeout=10) as response:
        status = json.load(response)
    model = next((m for m in status["models"] if m["name"] == name), None)
    return None if model is None else model.get("shadow")


def wait_for_shadow(url: str, name: str, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if shadow_figures(url, name) is not None:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the shadow of {name} was not installed within {timeout:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    import shutil

    parser = argparse.ArgumentParser(prog="python -m benchmarks.shadow", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="whole seconds per measurement")
    parser.add_argument("--cache", type=Path, default=Path("bench-results/models"), help="trained models")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found: install the Debian package 'wrk'", file=sys.stderr)
        return 2
    ref = reference("small", args.cache)
    shadow_path = candidate(ref, args.cache)
    body = bodies(ref)["json"]
    figures: dict[str, dict[str, list[float]]] = {k: {"p50": [], "rps": [], "cpu": []} for k in CONFIGS}
    shadows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-shadow-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        servers = {
            config: stack.enter_context(module(ref, None if rate is None else shadow_path, workdir, config, rate))
            for config, rate in CONFIGS.items()
        }
        url_path = f"/v2/models/{ref.name}/infer"
        for srv in servers.values():
            warm_up(srv.url + url_path, body, 200)
        for round_ in range(args.rounds):
            order = list(CONFIGS) if round_ % 2 == 0 else list(reversed(list(CONFIGS)))
            for config in order:
                srv = servers[config]
                c1 = run_wrk(wrk, srv.url + url_path, body, 1, args.duration, srv.process.pid, workdir, LOAD_CORE)
                c32 = run_wrk(wrk, srv.url + url_path, body, 32, args.duration, srv.process.pid, workdir, LOAD_CORE)
                _check(c1, c32, config)
                figures[config]["p50"].append(c1.p50_ms)
                figures[config]["rps"].append(c32.rps)
                figures[config]["cpu"].append(c32.server_cpu_us)
                print(
                    f"round {round_} shadow {config:12}: c=1 p50 {c1.p50_ms * 1000:6.0f} µs, "
                    f"c=32 {c32.rps:7.0f} req/s, {c32.server_cpu_us:5.0f} µs CPU/request (module + shadow worker)",
                    flush=True,
                )
        for config in list(CONFIGS)[1:]:
            shadows[config] = shadow_figures(servers[config].url, ref.name) or {}
    median = {k: {m: statistics.median(v) for m, v in f.items()} for k, f in figures.items()}
    off = median["off"]
    print(
        f"shadow off: c=1 p50 {off['p50'] * 1000:.0f} µs, c=32 {off['rps']:.0f} req/s, {off['cpu']:.0f} µs CPU/request"
    )
    for config in list(CONFIGS)[1:]:
        on, shadow = median[config], shadows[config]
        p50_ratio, rps_ratio = on["p50"] / off["p50"], on["rps"] / off["rps"]
        print(
            f"shadow {config}: mirrored {shadow.get('mirrored')}, compared"
            f" {shadow.get('compared')}, dropped {shadow.get('dropped')}, agreement {_fmt(shadow.get('agreement'))},"
            f" shadow p99 {_fmt(shadow.get('shadowP99Ms'))} ms, active p99 {_fmt(shadow.get('activeP99Ms'))} ms"
        )
        print(
            f"  c=1 p50 {on['p50'] * 1000:.0f} µs, ratio {p50_ratio:.3f} (bar <= {C1_BAR}):"
            f" {'MET' if p50_ratio <= C1_BAR else 'MISS'}"
        )
        print(
            f"  c=32 {on['rps']:.0f} req/s, ratio {rps_ratio:.3f} (bar >= {C32_BAR}):"
            f" {'MET' if rps_ratio >= C32_BAR else 'MISS'}; {on['cpu']:.0f} µs CPU/request"
        )
    return 0


def _check(c1: LoadResult, c32: LoadResult, config: str) -> None:
    if c1.errors or c32.errors:
        raise RuntimeError(f"shadow {config}: {c1.errors + c32.errors} failed requests")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(np.round(value, 4))}"


if __name__ == "__main__":
    raise SystemExit(main())
