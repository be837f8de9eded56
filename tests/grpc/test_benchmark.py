"""The gRPC-next-to-HTTP benchmark works: a short real run produces sane figures (no timing targets here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.system import require_binary

pytestmark = pytest.mark.slow


def test_grpc_comparison_produces_a_table_and_json(tmp_path: Path) -> None:
    require_binary("wrk")
    require_binary("h2load", "nghttp2-client")
    out = tmp_path / "grpc.json"
    command = [sys.executable, "-m", "benchmarks.grpc_compare", "--duration", "1", "--rounds", "1"]
    command += ["--cache", str(tmp_path / "models"), "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| transport | load |" in completed.stdout

    report = json.loads(out.read_text())
    rows = {(row["transport"], row["load"]): row for row in report["summary"]}
    loads = ("c1", "c32", "c32 mux")
    expected = {(t, load) for t in ("grpc raw", "grpcio floor") for load in loads}
    assert set(rows) == expected | {("http binary", "c1"), ("http binary", "c32")}
    for row in rows.values():
        assert row["rps"] > 0 and row["server_cpu_us"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert {t["target"] for t in report["targets"]} == {
        f"wide {load}: gRPC raw {what} vs HTTP binary{' c32' if load == 'c32 mux' else ''}"
        for load in loads
        for what in ("req/s", "server CPU/req")
    }
    assert all(0 < share <= 1.5 for share in report["h2load_cpu_share"].values())
