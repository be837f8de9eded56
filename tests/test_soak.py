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
    baseline, final = result["rss_after_warmup_mb"], result["rss_final_mb"]
    assert baseline > 0 and final == result["intervals"][-1]["rss_mb"]
    # The bound itself: resident memory grew by less than 5 % after warm-up, recomputed from the samples.
    growth_pct = (final - baseline) / baseline * 100
    assert abs(growth_pct - result["rss_growth_pct"]) < 0.05  # both from values rounded to 0.01
    assert growth_pct < 5, f"RSS grew {growth_pct:.2f} % ({baseline} MB -> {final} MB)"
    # And the script's own verdict agrees: exit 0 means no errors and growth under 5 %.
    assert completed.returncode == 0, completed.stdout + completed.stderr
