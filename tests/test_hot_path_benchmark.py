"""The benchmark itself works: a short real run produces sane figures (no timing targets here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.system import require_binary

pytestmark = pytest.mark.slow


def test_quick_benchmark_produces_a_table_and_json(tmp_path: Path) -> None:
    require_binary("wrk")
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--models", "small"]
    command += ["--cache", str(tmp_path / "models"), "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| server | model | mode |" in completed.stdout

    report = json.loads(out.read_text())
    rows = {(m["server"], m["mode"], m["connections"]): m for m in report["measurements"]}
    expected = {
        (server, mode, conns) for server in ("floor", "module") for mode in ("json", "binary") for conns in (1, 32)
    }
    assert set(rows) == expected
    for row in rows.values():
        assert row["requests"] > 0 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["rps"] > 0 and row["server_cpu_us"] > 0
    assert {(row["server"], row["mode"], row["connections"]) for row in report["summary"]} == expected
    assert report["in_process_us"]["small"] > 0
    assert report["cold_start"]["ready_seconds"] > 0 and report["cold_start"]["rss_mb"] > 10
    assert {t["target"] for t in report["targets"]} >= {"small json c32: req/s vs floor", "small json c1: p50 vs floor"}
