"""Fleet rollout benchmark: N simulated devices converge on layered deployments, measured.

The devices (``benchmarks/fleet_device.py``, many per process) run the module's own twin code against the
stand-in IoT Hub: its REST side (``tests/pipeline/local_hub.py``: configurations, priorities, queries,
paging) and its MQTT side (``tests/support/fleet_hub.py``, here on one shared mosquitto). Release files come
from Azurite over SAS URLs, through a counting proxy (``benchmarks/blob_proxy.py``). Each scenario is one
rollout started by ``deploy layered --apply``:

- ``rollout``: release 1, no download spreading;
- ``spread``: release 2 with ``--spread-seconds`` (the release's ``spreadSeconds``);
- ``hub-restart``: release 3 with spreading; once a quarter of the fleet is active on it, the hub's MQTT
  side and its broker restart (every device loses its connection, the hub keeps its twins).

Measured per scenario: time from ``deploy layered --apply`` to 50 %, 95 % and 100 % of targeted devices
reporting ``active`` (as the hub receives the reports), failures, the blob endpoint's requests, bytes,
peak requests in flight and per second, twin patches sent and received, CPU and peak memory of the hub
side (this process: both hub sides, the CLI calls) and of one device process, and how long
``fleet status`` takes over the whole fleet.

``--compare-real N`` also runs N real modules (``python -m edge_module``, the SDK over TLS, one broker
each) in the same rollouts and prints both groups side by side.

    .venv/bin/python -m benchmarks.fleet --devices 1000 --plot docs/images/fleet-1000.png
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load import rss_mb

REPO = Path(__file__).resolve().parents[1]
MODULE = "edge-inference"
MODEL = "iris"


# -- parts -----------------------------------------------------------------------------------------


class SharedBroker:
    """One mosquitto on 127.0.0.1 (plain MQTT) for every simulated device and the hub; restartable, keeping
    its persistent sessions (the hub side's)."""

    def __init__(self, directory: Path) -> None:
        from tests.support.server import free_port
        from tests.support.system import require_binary

        self.binary = require_binary("mosquitto")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SharedBroker:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        # Persistent sessions survive a restart, as the hub's do: the hub side's subscriptions hold, and what
        # devices send while it reconnects waits for it instead of going nowhere.
        lines = ["allow_anonymous true", "persistence true", f"persistence_location {self.directory}/"]
        lines += ["autosave_interval 5", f"listener {self.port} 127.0.0.1", "max_keepalive 60"]
        lines += [f"log_dest file {self.directory / 'mosquitto.log'}", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([self.binary, "-c", str(config)], stderr=subprocess.DEVNULL)
        _wait_port(self.port, open_=True)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        _wait_port(self.port, open_=False)

    def restart(self) -> None:
        self.stop()
        self.start()


def _wait_port(port: int, open_: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if (sock.connect_ex(("127.0.0.1", port)) == 0) == open_:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not {'open' if open_ else 'close'}")


class BlobProxy:
    def __init__(self, upstream: str, log: Path) -> None:
        from tests.support.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.blob_proxy", "--upstream", upstream, "--port", str(self.port)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port, open_=True)

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/__proxy/{path}", method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            stats: dict[str, Any] = json.loads(response.read())
        return stats

    def reset(self) -> None:
        self._call("reset", "POST")

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


class Timeline:
    """What the hub receives: per device, when it first reported ``active`` (or ``failed``) on a version, and
    the states it reported on the way (after the device's coalescing)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.version: str | None = None
        self.started = 0.0
        self.active: dict[str, float] = {}
        self.failed: dict[str, tuple[float, str]] = {}
        self.states: dict[str, list[str]] = {}
        self.reports: Counter[str] = Counter()

    def begin(self, version: str) -> None:
        with self.lock:
            self.version = version
            self.started = time.monotonic()
            self.active, self.failed, self.states, self.reports = {}, {}, {}, Counter()

    def record(self, device: str, models: dict[str, Any]) -> None:
        now = time.monotonic()
        block = models.get(MODEL) or {}
        with self.lock:
            self.seen.add(device)
            if self.version is None or block.get("desiredVersion") != self.version:
                return
            self.reports[device] += 1
            state = str(block.get("state"))
            states = self.states.setdefault(device, [])
            if not states or states[-1] != state:
                states.append(state)
            if state == "active" and block.get("activeVersion") == self.version:
                self.active.setdefault(device, now - self.started)
            elif state == "failed":
                self.failed.setdefault(device, (now - self.started, str(block.get("error"))))


class Sampler:
    """Peak RSS and CPU seconds of some processes, sampled every 0.2 s."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes  # name -> pid
        self.peak_rss: dict[str, float] = dict.fromkeys(processes, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.processes.items():
            with contextlib.suppress(OSError):
                self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), rss_mb(pid))

    def reset(self) -> None:
        self.peak_rss = dict.fromkeys(self.processes, 0.0)
        self.sample()

    def cpu(self) -> dict[str, float]:
        seconds = {}
        for name, pid in self.processes.items():
            with contextlib.suppress(OSError):
                seconds[name] = process_cpu_seconds(pid)
        return seconds

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def process_cpu_seconds(pid: int) -> float:
    """User + system time of the whole process, threads that ended included (the hub restart ends some)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Scenario:
    name: str
    version: str
    spread: int = 0
    restart_at: float | None = None  # fraction of the fleet active when the hub restarts


@dataclass
class Result:
    scenario: Scenario
    groups: dict[str, dict[str, Any]]
    blob: dict[str, Any]
    hub_counts: dict[str, int]
    cpu_s: dict[str, float]
    peak_rss_mib: dict[str, float]
    fleet_status_s: float
    fleet_status_summary: dict[str, Any]
    restart: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)


# -- the run ---------------------------------------------------------------------------------------


def percentile_time(times: list[float], targeted: int, fraction: float) -> float | None:
    needed = max(1, int(-(-targeted * fraction // 1)))  # ceil
    return times[needed - 1] if len(times) >= needed else None


def publish(work: Path, connection_string: str, private_key: Any, version: str, trees: int) -> Path:
    from cloud.releases.publish import publisher_for
    from cloud.releases.signing import make_release, models_block
    from tests.support.models import iris_classifier

    model = work / f"{MODEL}-{version}.onnx"
    model.write_bytes(iris_classifier(version, n_estimators=trees).onnx)
    publisher = publisher_for("az://models", connection_string=connection_string)
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    release = make_release(MODEL, version, model, sha256, publisher, private_key)
    path = work / f"release-{version}.json"
    path.write_text(json.dumps(models_block([release])))
    return path


def cli(args: list[str]) -> tuple[int, str]:
    from cloud.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(args)
    return code, out.getvalue()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        from cloud.releases.keys import generate_key_pair, load_private_key
        from edge_module.release import load_public_keys
        from tests.pipeline.local_hub import StandInHub
        from tests.release.azurite import Azurite
        from tests.release.hub_server import HubServer
        from tests.support.fleet_hub import FleetHub

        self.args = args
        self.work = work
        self.sim = [f"sim-{n:04d}" for n in range(args.devices)]
        self.real = [f"gw-{n:03d}" for n in range(args.compare_real)]
        tags = {device: {"environment": "prod"} for device in self.sim + self.real}
        self.keys = generate_key_pair(work / "keys", "release")
        self.private_key = load_private_key(self.keys.private_path)

        self.azurite = Azurite(work / "azurite").start()
        stack.callback(self.azurite.stop)
        self.proxy = BlobProxy(f"http://127.0.0.1:{self.azurite.port}", work / "proxy.log")
        stack.callback(self.proxy.stop)
        # Publishing through the proxy makes the SAS URLs point at it; its counters are reset before each rollout.
        self.connection_string = self.azurite.connection_string.replace(
            f"127.0.0.1:{self.azurite.port}", f"127.0.0.1:{self.proxy.port}"
        )
        self.broker = SharedBroker(work / "broker").start()
        stack.callback(self.broker.stop)
        self.stand_in = StandInHub(
            work / "hub" / "state.json",
            load_public_keys(self.keys.public_path.read_text()),
            devices=tags,
            simulate_devices=False,
        )
        os.environ["IOTHUB_CONNECTION_STRING"] = self.stand_in.connection_string
        self.timeline = Timeline()
        self.hub = FleetHub(
            self.stand_in, None, self.sim, shared=("127.0.0.1", self.broker.port), on_reported=self.timeline.record
        )
        stack.enter_context(self.hub)
        self.rest = stack.enter_context(HubServer(self.stand_in.respond))
        self.real_hub: Any = None
        self.real_brokers: Any = None
        if self.real:
            self._start_real(stack)
        self.workers = self._start_workers(stack)
        pids = {"hub": os.getpid(), "device process": self.workers[0].pid}
        if self.real:
            pids["real module"] = self.real_modules[0].process.pid
        self.sampler = Sampler(pids)
        self.sampler.start()
        stack.callback(self.sampler.stop)

    def _start_real(self, stack: contextlib.ExitStack) -> None:
        from tests.fleet.test_fleet_rollout import start_modules
        from tests.support.fleet_brokers import DeviceBrokers
        from tests.support.fleet_hub import FleetHub
        from tests.support.iothub import WorkloadAPI

        self.real_brokers = stack.enter_context(DeviceBrokers(self.work / "brokers", len(self.real)))
        workload = stack.enter_context(WorkloadAPI(self.real_brokers.ca_pem))
        self.real_hub = FleetHub(self.stand_in, self.real_brokers, self.real, on_reported=self.timeline.record)
        stack.enter_context(self.real_hub)
        self.real_modules: list[Any] = []
        stack.callback(lambda: [module.stop() for module in self.real_modules])
        start_modules(self.real_modules, self.real, self.work, self.real_brokers, workload, self.keys.public_path)

    def _start_workers(self, stack: contextlib.ExitStack) -> list[subprocess.Popen[bytes]]:
        per = self.args.per_process
        workers = []
        for index in range(0, len(self.sim), per):
            config = {
                "devices": self.sim[index : index + per],
                "broker": ["127.0.0.1", self.broker.port],
                "store_root": str(self.work / "devices"),
                "trusted_keys": str(self.keys.public_path),
            }
            path = self.work / f"worker-{index // per}.json"
            path.write_text(json.dumps(config))
            log = (self.work / f"worker-{index // per}.log").open("wb")
            worker = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_device", str(path)], cwd=REPO, stdout=log, stderr=log
            )
            workers.append(worker)
            stack.callback(_stop_worker, worker, log)
        return workers

    def wait_connected(self, timeout: float) -> float:
        """Until every device has read its twin and reported (its first lastDesiredStatus)."""
        started = time.monotonic()
        everyone = set(self.sim + self.real)
        while time.monotonic() - started < timeout:
            with self.timeline.lock:
                if everyone <= self.timeline.seen:
                    return time.monotonic() - started
            for worker in self.workers:
                if worker.poll() is not None:
                    raise RuntimeError(f"a device process exited with {worker.returncode}: see {self.work}")
            time.sleep(0.2)
        with self.timeline.lock:
            missing = sorted(everyone - self.timeline.seen)
        raise TimeoutError(f"{len(missing)} devices never connected, e.g. {missing[:5]}")

    def run(self, scenario: Scenario, priority: int) -> Result:
        release = publish(self.work, self.connection_string, self.private_key, scenario.version, self.args.trees)
        self.proxy.reset()
        counts = Counter(self.hub.counts) + Counter(self.real_hub.counts if self.real_hub else {})
        self.sampler.reset()
        cpu = self.sampler.cpu()
        groups = {"simulated": self.sim, **({"real": self.real} if self.real else {})}
        everyone = self.sim + self.real
        command = ["deploy", "layered", "--release", str(release), "--id", f"models-{MODEL}-{scenario.version}"]
        command += ["--target-condition", "tags.environment='prod'", "--priority", str(priority)]
        command += ["--out", str(self.work / f"layered-{scenario.version}.json"), "--apply"]
        command += ["--hub-endpoint", self.rest.url]
        if scenario.spread:
            command += ["--spread-seconds", str(scenario.spread)]
        self.timeline.begin(scenario.version)
        code, _ = cli(command)
        if code != 0:
            raise RuntimeError(f"deploy layered exited with {code}")
        restart: dict[str, float] = {}
        deadline = time.monotonic() + self.args.timeout + scenario.spread
        while time.monotonic() < deadline:
            with self.timeline.lock:
                done = len(self.timeline.active) + len(self.timeline.failed)
                active = len(self.timeline.active)
            if done >= len(everyone):
                break
            if scenario.restart_at is not None and not restart and active >= scenario.restart_at * len(everyone):
                restart = self._restart_hub()
            time.sleep(0.1)
        elapsed = time.monotonic() - self.timeline.started
        cpu_after = self.sampler.cpu()
        self.sampler.sample()
        blob = self.proxy.stats()
        counts_after = Counter(self.hub.counts) + Counter(self.real_hub.counts if self.real_hub else {})
        started = time.monotonic()
        code, out = cli(["fleet", "status", "--json", "--hub-endpoint", self.rest.url])
        status_s = time.monotonic() - started
        summary = json.loads(out)["summary"].get(MODEL, {}) if code == 0 else {"exit": code}
        with self.timeline.lock:
            result_groups = {name: self._group(members, elapsed) for name, members in groups.items()}
            curves = {name: sorted(self.timeline.active[d] for d in members if d in self.timeline.active)
                      for name, members in groups.items()}  # fmt: skip
        return Result(
            scenario=scenario,
            groups=result_groups,
            blob=blob,
            hub_counts=dict(counts_after - counts),
            cpu_s={name: cpu_after.get(name, 0.0) - cpu.get(name, 0.0) for name in cpu},
            peak_rss_mib=dict(self.sampler.peak_rss),
            fleet_status_s=status_s,
            fleet_status_summary=summary,
            restart=restart,
            curves=curves,
        )

    def _group(self, members: list[str], elapsed: float) -> dict[str, Any]:
        times = sorted(self.timeline.active[d] for d in members if d in self.timeline.active)
        sequences = Counter(" > ".join(self.timeline.states.get(d, [])) for d in members)
        reports = [self.timeline.reports.get(d, 0) for d in members]
        return {
            "targeted": len(members),
            "active": len(times),
            "failed": {d: self.timeline.failed[d][1] for d in members if d in self.timeline.failed},
            "missing": [d for d in members if d not in self.timeline.active and d not in self.timeline.failed],
            "t50": percentile_time(times, len(members), 0.50),
            "t95": percentile_time(times, len(members), 0.95),
            "t100": percentile_time(times, len(members), 1.0),
            "elapsed": elapsed,
            "state_sequences": dict(sequences.most_common(5)),
            "reports_per_device": sum(reports) / max(1, len(reports)),
        }

    def _restart_hub(self) -> dict[str, float]:
        """The hub's MQTT side and its broker(s) go down and come back; devices reconnect on their own."""
        at = time.monotonic() - self.timeline.started
        with self.timeline.lock:
            active = len(self.timeline.active)
        began = time.monotonic()

        def brokers_down_and_up() -> None:
            self.broker.restart()
            if self.real_brokers is not None:
                for index in range(len(self.real)):
                    self.real_brokers.stop_one(index)
                for index in range(len(self.real)):
                    self.real_brokers.start_one(index, wait=True)

        hubs = [self.hub, *([self.real_hub] if self.real_hub else [])]
        for hub in hubs[1:]:
            hub.restart()  # its connections drop too; its brokers restart below, with the first hub's
        hubs[0].restart(brokers_down_and_up)
        return {"at_s": at, "active_before": active, "down_s": time.monotonic() - began}


def _stop_worker(worker: subprocess.Popen[bytes], log: Any) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    log.close()


# -- output ----------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def table(results: list[Result], devices: int, per_process: int) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: list[str]) -> None:
        rows.append((label, values))

    for group in results[0].groups:
        prefix = f"{group}: " if len(results[0].groups) > 1 else ""
        row(f"{prefix}targeted devices", [str(r.groups[group]["targeted"]) for r in results])
        row(f"{prefix}50 % active", [_seconds(r.groups[group]["t50"]) for r in results])
        row(f"{prefix}95 % active", [_seconds(r.groups[group]["t95"]) for r in results])
        row(f"{prefix}100 % active", [_seconds(r.groups[group]["t100"]) for r in results])
        row(
            f"{prefix}failed / never finished",
            [f"{len(r.groups[group]['failed'])} / {len(r.groups[group]['missing'])}" for r in results],
        )
    row("blob endpoint: GET requests", [str(r.blob["requests"].get("GET", 0)) for r in results])
    row("blob endpoint: bytes served", [f"{r.blob['bytes_out'] / 2**20:.1f} MiB" for r in results])
    row("blob endpoint: peak downloads in flight", [str(r.blob["peak_in_flight"]) for r in results])
    row("blob endpoint: peak requests per second", [str(r.blob["peak_requests_per_second"]) for r in results])
    row("desired patches sent", [str(r.hub_counts.get("desired patches", 0)) for r in results])
    row("reported patches received", [str(r.hub_counts.get("reported patches", 0)) for r in results])
    row("twin GETs", [str(r.hub_counts.get("twin GETs", 0)) for r in results])
    row("hub side: CPU / peak RSS", [f"{r.cpu_s['hub']:.1f} s / {r.peak_rss_mib['hub']:.0f} MiB" for r in results])
    row(
        f"one device process ({per_process} devices): CPU / peak RSS",
        [f"{r.cpu_s['device process']:.1f} s / {r.peak_rss_mib['device process']:.0f} MiB" for r in results],
    )
    if "real module" in results[0].cpu_s:
        row(
            "one real module: CPU / peak RSS",
            [f"{r.cpu_s['real module']:.2f} s / {r.peak_rss_mib['real module']:.0f} MiB" for r in results],
        )
    row(f"`fleet status` over {devices} devices", [f"{r.fleet_status_s:.2f} s" for r in results])
    row(
        "hub restart: at / devices active then / down for",
        [
            f"{r.restart['at_s']:.1f} s / {r.restart['active_before']:.0f} / {r.restart['down_s']:.1f} s"
            if r.restart
            else "-"
            for r in results
        ],
    )
    header = "| | " + " | ".join(_label(r.scenario) for r in results) + " |"
    lines = [header, "| --- |" + " --- |" * len(results)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    return "\n".join(lines)


def _label(scenario: Scenario) -> str:
    spread = f", spread {scenario.spread} s" if scenario.spread else ", no spread"
    return f"{scenario.name} (release {scenario.version}{spread})"


def plot(results: list[Result], path: Path, devices: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for result in results:
        for group, times in result.curves.items():
            targeted = result.groups[group]["targeted"]
            xs = [0.0, *times]
            ys = [0.0, *[100 * (k + 1) / targeted for k in range(len(times))]]
            label = _label(result.scenario) + (f" [{group}]" if len(result.curves) > 1 else "")
            top.step(xs, ys, where="post", label=label)
        if result.restart:
            top.axvline(result.restart["at_s"], linestyle=":", color="grey")
        buckets = result.blob["buckets"]  # seconds since the proxy's reset, just before the deploy
        bottom.plot([b[0] for b in buckets], [b[2] for b in buckets], label=_label(result.scenario))
    top.set_ylabel("devices active on the release (%)")
    top.set_title(f"Rollout of a layered deployment to {devices} simulated devices")
    top.legend(fontsize="small", loc="lower right")
    top.grid(alpha=0.3)
    bottom.set_ylabel("blob downloads in flight")
    bottom.set_xlabel("seconds since deploy layered --apply")
    bottom.legend(fontsize="small")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (default: %(default)s)")
    parser.add_argument("--per-process", type=int, default=100, help="devices per process (default: %(default)s)")
    parser.add_argument(
        "--spread", type=int, default=10, help="spreadSeconds of the spread runs (default: %(default)s)"
    )
    parser.add_argument(
        "--scenarios",
        default="rollout,spread,hub-restart",
        help="comma-separated, from rollout, spread, hub-restart (default: %(default)s)",
    )
    parser.add_argument("--trees", type=int, default=200, help="trees of the iris forest released (size of the file)")
    parser.add_argument("--compare-real", type=int, default=0, metavar="N", help="also run N real modules")
    parser.add_argument(
        "--timeout", type=float, default=600, help="per rollout, plus its spread (default: %(default)s)"
    )
    parser.add_argument("--connect-timeout", type=float, default=600)
    parser.add_argument("--plot", type=Path, help="write the convergence plot (PNG) here")
    parser.add_argument("--json", type=Path, help="write every figure (JSON) here")
    parser.add_argument("--work-dir", type=Path, help="keep logs and stores here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.per_process < 1:
        parser.error("--devices and --per-process must be at least 1")
    return args


SCENARIOS = {
    "rollout": lambda spread: Scenario("rollout", "1"),
    "spread": lambda spread: Scenario("spread", "2", spread=spread),
    "hub-restart": lambda spread: Scenario("hub-restart", "3", spread=spread, restart_at=0.25),
}


@contextlib.contextmanager
def _work_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as folder:
        yield Path(folder)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        sys.stderr.write(f"unknown scenario(s): {', '.join(unknown)}\n")
        return 2
    scenarios = [SCENARIOS[name](args.spread) for name in names]
    # A SIGTERM stops the run like Ctrl-C: the exit stack stops the device processes, brokers and Azurite.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with _work_dir(args.work_dir) as work, contextlib.ExitStack() as stack:
        started = time.monotonic()
        bench = Bench(args, work, stack)
        connected = bench.wait_connected(args.connect_timeout)
        sys.stderr.write(f"{args.devices + args.compare_real} devices connected in {time.monotonic() - started:.1f}s"
                         f" ({connected:.1f}s after the last process started)\n")  # fmt: skip
        results = []
        for priority, scenario in enumerate(scenarios, start=1):
            result = bench.run(scenario, priority * 10)
            results.append(result)
            sys.stderr.write(f"{scenario.name}: done in {result.groups['simulated']['elapsed']:.1f}s\n")
    print(table(results, args.devices + args.compare_real, args.per_process))
    if args.plot:
        plot(results, args.plot, args.devices)
    if args.json:
        document = [{**result.__dict__, "scenario": result.scenario.__dict__} for result in results]
        args.json.write_text(json.dumps(document, indent=2, default=str))
    failed = sum(len(g["failed"]) + len(g["missing"]) for r in results for g in r.groups.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
