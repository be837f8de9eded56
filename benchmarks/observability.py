"""``python -m benchmarks.observability``: what per-request observation costs, in one run.

The same module is started with EDGE_METRICS_ENABLED on (histograms, drift window, capture sampling),
on with 1% capture, and off, serving reference models that carry a training profile (so drift really
runs). Rounds alternate between them back to back; the ratio of the medians is the figure.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import orjson

from benchmarks.load import free_port, run_wrk, warm_up
from benchmarks.models import Reference, reference
from benchmarks.run import LOAD_CORE, bodies, server

CONFIGS = {
    "off": {"EDGE_METRICS_ENABLED": "false"},
    "on": {"EDGE_METRICS_ENABLED": "true"},
    "on+capture1%": {"EDGE_METRICS_ENABLED": "true", "EDGE_CAPTURE_RATE": "0.01"},
}


def profiled(ref: Reference, workdir: Path) -> Reference:
    """The reference model with a training profile of its own dataset in its metadata."""
    import onnx
    from sklearn.datasets import load_breast_cancer, load_digits

    from cloud.export import with_metadata
    from cloud.profile import numeric_profile
    from edge_module.model_contract import ModelMetadata

    x = load_digits().data / 16.0 if ref.features == 64 else load_breast_cancer().data
    model = onnx.load(str(ref.path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    profile = {"rows": len(x), "features": {f.name: numeric_profile(x[:, i]) for i, f in enumerate(meta.features)}}
    path = workdir / f"{ref.name}-profiled.onnx"
    path.write_bytes(with_metadata(model, ModelMetadata(**{**meta.__dict__, "profile": profile})))
    return Reference(ref.name, path, ref.features, ref.batch, ref.rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,32")
    parser.add_argument("--models", default="small,wide")
    parser.add_argument("--cache", type=Path, default=Path("bench-results/models"))
    parser.add_argument("--out", type=Path, default=Path("bench-results/observability.json"))
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found: install the Debian package 'wrk'", file=sys.stderr)
        return 2
    results: dict[tuple[str, str, int], list[float]] = {}
    cpu: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        refs = {name: profiled(reference(name, args.cache), workdir) for name in args.models.split(",")}
        servers = {}
        for config, env in CONFIGS.items():
            port = free_port()
            store = workdir / f"store-{config}"
            store.mkdir()
            full_env = {
                "EDGE_HOST": "127.0.0.1",
                "EDGE_PORT": str(port),
                "EDGE_MODEL_DIR": str(store),
                "EDGE_SERVE_DEFAULT_MODEL": "false",
                "EDGE_LOG_LEVEL": "WARNING",
                "EDGE_CAPTURE_DIR": str(workdir / f"capture-{config}"),
                **env,
            }
            command = [sys.executable, "-m", "edge_module"]
            command += [arg for ref in refs.values() for arg in ("--model", f"{ref.name}={ref.path}")]
            log = workdir / f"{config}.log"
            servers[config] = stack.enter_context(
                server(config, command, full_env, port, None, "/v2/health/ready", log)
            )
        for round_ in range(args.rounds):
            for name, ref in refs.items():
                body = bodies(ref)["json"]
                for conns in (int(c) for c in args.connections.split(",")):
                    order = list(CONFIGS) if round_ % 2 == 0 else list(reversed(CONFIGS))
                    for config in order:
                        srv = servers[config]
                        url = f"{srv.url}/v2/models/{name}/infer"
                        warm_up(url, body, 20)
                        r = run_wrk(wrk, url, body, conns, args.duration, srv.process.pid, workdir, LOAD_CORE)
                        if r.errors or not r.requests:
                            raise RuntimeError(f"{config} {name} c{conns}: {r.errors} errors")
                        results.setdefault((config, name, conns), []).append(r.rps)
                        cpu.setdefault((config, name, conns), []).append(r.server_cpu_us)
                        print(
                            f"  round {round_} {config:13} {name:6} c{conns:<3} {r.rps:9.0f} req/s "
                            f"{r.server_cpu_us:7.1f} µs CPU/req",
                            flush=True,
                        )
    report = []
    for (config, name, conns), rps in sorted(results.items()):
        base = statistics.median(results[("off", name, conns)])
        base_cpu = statistics.median(cpu[("off", name, conns)])
        row = {
            "config": config,
            "model": name,
            "connections": conns,
            "rps": round(statistics.median(rps), 1),
            "throughput_cost_percent": round(100 * (1 - statistics.median(rps) / base), 2),
            "cpu_us_per_request": round(statistics.median(cpu[(config, name, conns)]), 2),
            "cpu_cost_percent": round(100 * (statistics.median(cpu[(config, name, conns)]) / base_cpu - 1), 2),
        }
        report.append(row)
        print(orjson.dumps(row).decode())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
