"""Driving a server with wrk, pinned to its own core, and reading the server's CPU time from /proc."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# wrk calls done() once at the end; latency is in microseconds.
_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
{extra_header}
local f = io.open("{body_path}", "rb")
wrk.body = f:read("*all")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK-JSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,\\"non2xx\\":%d,"
    .. "\\"p50_us\\":%d,\\"p99_us\\":%d,\\"mean_us\\":%.1f}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class Body:
    content: bytes
    header_length: int | None  # Inference-Header-Content-Length for binary requests

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float  # per request, all threads of the server process and its children

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(command: Sequence[str], core: int) -> list[str]:
    """Prefix with taskset when the machine has the core and the tool; else run unpinned."""
    taskset = shutil.which("taskset")
    if taskset and core < cpu_count():
        return [taskset, "-c", str(core), *command]
    return list(command)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (MLServer runs inference in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` (nanosecond schedstat when available, else clock ticks)."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def tree_cpu_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += process_cpu_ns(pid)
        except OSError:  # exited meanwhile
            continue
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(url: str, body: Body | None, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll until ``url`` answers 200 (a POST of ``body`` when given); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        request = urllib.request.Request(url, data=body.content if body else None, method="POST" if body else "GET")
        if body is not None:
            request.add_header("Content-Type", body.content_type)
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def warm_up(url: str, body: Body, requests: int) -> None:
    for _ in range(requests):
        request = urllib.request.Request(url, data=body.content, method="POST")
        request.add_header("Content-Type", body.content_type)
        if body.header_length is not None:
            request.add_header("Inference-Header-Content-Length", str(body.header_length))
        with urllib.request.urlopen(request, timeout=10.0) as response:
            response.read()


def run_wrk(
    wrk: str, url: str, body: Body, connections: int, seconds: float, server_pid: int, workdir: Path, core: int
) -> LoadResult:
    body_path = workdir / f"body-{os.getpid()}-{connections}.bin"
    body_path.write_bytes(body.content)
    extra = ""
    if body.header_length is not None:
        extra = f'wrk.headers["Inference-Header-Content-Length"] = "{body.header_length}"'
    script = workdir / "post.lua"
    script.write_text(_LUA.format(content_type=body.content_type, extra_header=extra, body_path=body_path))
    duration = f"{max(1, round(seconds))}s"  # wrk takes whole seconds
    command = pinned([wrk, "-t1", f"-c{connections}", f"-d{duration}", "--latency", "-s", str(script), url], core)
    pids = process_tree(server_pid)
    cpu_before = tree_cpu_ns(pids)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    cpu_after = tree_cpu_ns(pids)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("WRK-JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout}{completed.stderr}")
    stats = json.loads(line.removeprefix("WRK-JSON "))
    requests = int(stats["requests"])
    return LoadResult(
        requests=requests,
        seconds=stats["duration_us"] / 1e6,
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        errors=int(stats["errors"]) + int(stats["non2xx"]),
        server_cpu_us=(cpu_after - cpu_before) / 1000 / requests if requests else 0.0,
    )
