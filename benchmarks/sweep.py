"""``python -m benchmarks.sweep [--quick]``: the floor server across versions of each hot-path dependency.

A newer version can be slower (uvloop 0.23.0 served the same floor at about half the rate of 0.22.1), so the
edge lock's hot-path pins are chosen by this measurement. Each candidate version is installed once, without its
dependencies, into its own directory under ``bench-results/sweep/`` that goes first on ``PYTHONPATH`` over the
project's environment: everything else stays at the edge lock's pins, so one package varies at a time. The
floor server (``benchmarks/floor.py``) is pinned to core 0 and wrk to core 1; the versions of one package take
turns, round after round, and the table gives the median of the rounds.

``best_overlay()`` puts the fastest version of every package together: ``benchmarks/run.py`` runs its floor
from it, so a dependency regression in the module's own environment shows up as a ratio below target instead
of hiding in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import LoadResult, free_port, run_wrk, wait_until, warm_up
from benchmarks.models import reference

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench-results" / "sweep"
SERVER_CORE, LOAD_CORE = 0, 1
# Candidates: the edge lock's pin first, then earlier releases. Bounded so a sweep stays within minutes.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "uvloop": ("0.23.0", "0.22.1", "0.21.0"),
    "httptools": ("0.9.0", "0.7.1", "0.6.4"),
    "uvicorn": ("0.54.0", "0.50.2", "0.45.0"),
    "orjson": ("3.13.0", "3.11.9", "3.10.18"),
    "numpy": ("2.4.6", "2.3.5", "2.2.6"),
    "onnxruntime": ("1.32.0", "1.31.1", "1.30.0"),
}
# The fastest of each, from the last full sweep (docs/performance.md#hot-path-dependency-versions).
BEST: dict[str, str] = {
    "uvloop": "0.22.1",
    "httptools": "0.9.0",
    "uvicorn": "0.54.0",
    "orjson": "3.13.0",
    "numpy": "2.4.6",
    "onnxruntime": "1.32.0",
}


def overlay(package: str, version: str) -> Path:
    """A directory holding ``package==version`` alone (installed once, from the package registry)."""
    target = CACHE / f"{package}-{version}"
    marker = target / ".complete"
    if not marker.exists():
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(target),
                f"{package}=={version}",
            ],
            check=True,
            timeout=600,
        )
        marker.write_text(version)
    return target


def best_overlay() -> list[Path]:
    """PYTHONPATH entries giving the floor the fastest version of every hot-path package (none for a package
    the environment already has at that version, so a run with the lock's pins installs nothing)."""
    import importlib.metadata

    return [
        overlay(package, version) for package, version in BEST.items() if importlib.metadata.version(package) != version
    ]


def python_path(entries: list[Path]) -> str:
    return os.pathsep.join([*(str(entry) for entry in entries), str(ROOT)])


@dataclass
class Run:
    package: str
    version: str
    result: LoadResult


def measure(entries: list[Path], model: Path, body: object, seconds: float, workdir: Path) -> LoadResult:
    import benchmarks.load as load

    port = free_port()
    env = {**os.environ, "PYTHONPATH": python_path(entries)}
    command = load.pinned([sys.executable, "-m", "benchmarks.floor", str(port), f"small={model}"], SERVER_CORE)
    with (workdir / "floor.log").open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}/v2/models/small/infer"
        wait_until(url, body, process, timeout=120)  # type: ignore[arg-type]
        warm_up(url, body, 200)  # type: ignore[arg-type]
        wrk = shutil.which("wrk")
        if wrk is None:
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        return run_wrk(wrk, url, body, 32, seconds, process.pid, workdir, LOAD_CORE)  # type: ignore[arg-type]
    finally:
        process.terminate()
        process.wait(10)


def installed_versions(entries: list[Path]) -> dict[str, str]:
    """What the floor actually imports with ``entries`` first on the path (so the table cannot lie)."""
    packages = list(CANDIDATES)
    code = f"import json, importlib.metadata as m; print(json.dumps({{p: m.version(p) for p in {packages!r}}}))"
    env = {**os.environ, "PYTHONPATH": python_path(entries)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 round (a smoke run; noisy)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--packages", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "sweep.json")
    args = parser.parse_args(argv)
    seconds, rounds = (2.0, 1) if args.quick else (args.seconds, args.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="sweep-"))
    ref = reference("small", ROOT / "bench-results" / "models")
    from benchmarks.run import bodies

    body = bodies(ref)["json"]
    runs: list[Run] = []
    for package in args.packages:
        for round_ in range(rounds):
            for version in CANDIDATES[package]:
                entries = [overlay(package, version)]
                found = installed_versions(entries)[package]
                if found != version:
                    raise SystemExit(f"{package}: the overlay imports {found}, not {version}")
                result = measure(entries, ref.path, body, seconds, workdir)
                runs.append(Run(package, version, result))
                rps, cpu = result.rps, result.server_cpu_us
                print(f"{package} {version} round {round_ + 1}: {rps:,.0f} req/s, {cpu:.0f} µs CPU/req", flush=True)
    lines = [
        "| package | version | req/s (median) | server CPU µs/req | vs the lock's pin |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for package in args.packages:
        pinned_rps = None
        for version in CANDIDATES[package]:
            mine = [r.result for r in runs if r.package == package and r.version == version]
            rps = statistics.median(r.rps for r in mine)
            cpu = statistics.median(r.server_cpu_us for r in mine)
            pinned_rps = pinned_rps or rps
            table.setdefault(package, {})[version] = {"rps": round(rps, 1), "cpu_us": round(cpu, 1)}
            lines.append(f"| {package} | {version} | {rps:,.0f} | {cpu:.0f} | {rps / pinned_rps:.2f}x |")
        fastest = max(table[package], key=lambda v: table[package][v]["rps"])
        lines.append(f"| {package} | **fastest: {fastest}** | | | |")
    print("\n".join(lines))
    load_average = os.getloadavg()
    print(f"load average during the sweep: {load_average[0]:.1f} (1 min)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"seconds": seconds, "rounds": rounds, "load_average": load_average, "table": table}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
