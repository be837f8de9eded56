from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.system import require_binary

pytestmark = pytest.mark.slow


def test_soak_script_runs_bounded_and_reports(tmp_path: Path) -> None:
    require_binary("wrk")
    out = tmp_path / "soak.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--duration",
            "3",
            "--interval",
            "1",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(out.read_text())
    assert result["errors"] == 0, completed.stdout
    assert len(result["intervals"]) >= 3
    assert result["requests"] > 0 and all(i["p99_ms"] >= i["p50_ms"] > 0 for i in result["intervals"])
    assert result["rss_after_warmup_mb"] > 0
    # Exit status says whether the run met its bounds (no errors, RSS growth under 5%).
    assert completed.returncode == (0 if result["rss_growth_pct"] < 5 else 1)
