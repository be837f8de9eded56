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
    out = tmp_path / "grpc.json"
    command = [sys.executable, "-m", "benchmarks.grpc_compare", "--duration", "1", "--rounds", "1"]
    command += ["--cache", str(tmp_path / "models"), "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| transport | conns |" in completed.stdout

    report = json.loads(out.read_text())
    rows = {(row["transport"], row["connections"]): row for row in report["summary"]}
    assert set(rows) == {(t, c) for t in ("http binary", "grpc raw", "grpc floor") for c in (1, 32)}
    for row in rows.values():
        assert row["rps"] > 0 and row["server_cpu_us"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert {t["target"] for t in report["targets"]} == {
        f"wide c{c}: gRPC raw {what} vs HTTP binary" for c in (1, 32) for what in ("req/s", "server CPU/req")
    }
    assert all(0 < share <= 1.5 for share in report["grpc_client_cpu_share"].values())
