"""``benchmarks/fleet.py`` at a tiny size, so it cannot rot: every scenario runs and its figures add up.

Not timed: the benchmark's figures are its output, not this test's assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.release.azurite import require_azurite
from tests.support.system import require_binary

REPO = Path(__file__).resolve().parents[2]
DEVICES = 6


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_fleet_benchmark_runs_every_scenario_at_a_tiny_size(tmp_path: Path) -> None:
    require_binary("mosquitto")
    require_azurite()
    out, png = tmp_path / "fleet.json", tmp_path / "fleet.png"
    command = [sys.executable, "-m", "benchmarks.fleet", "--devices", str(DEVICES), "--per-process", "3"]
    # A 10 s window keeps most of the 6 devices waiting when a quarter is active: the restart is mid-rollout.
    command += ["--spread", "10", "--trees", "10", "--json", str(out), "--plot", str(png)]
    command += ["--work-dir", str(tmp_path / "work"), "--timeout", "240"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:]

    results = {result["scenario"]["name"]: result for result in json.loads(out.read_text())}
    assert list(results) == ["rollout", "spread", "hub-restart"]
    for name, result in results.items():
        group = result["groups"]["simulated"]
        assert group["targeted"] == DEVICES and group["active"] == DEVICES, (name, group)
        assert group["failed"] == {} and group["missing"] == []
        assert 0 < group["t50"] <= group["t95"] <= group["t100"]
        # Each device downloaded the release once, through the counting proxy.
        assert result["blob"]["requests"].get("GET") == DEVICES
        size = Path(tmp_path / "work" / f"iris-{result['scenario']['version']}.onnx").stat().st_size
        assert result["blob"]["bytes_out"] == DEVICES * size
        assert result["hub_counts"]["desired patches"] == DEVICES
        assert result["hub_counts"]["reported patches"] >= DEVICES
        assert result["fleet_status_summary"]["active"] == {result["scenario"]["version"]: DEVICES}
    assert results["spread"]["scenario"]["spread"] == 10
    restart = results["hub-restart"]
    assert restart["restart"], "the hub did not restart: every device was active first"
    assert restart["restart"]["active_before"] < DEVICES  # it restarted mid-rollout
    assert restart["hub_counts"]["twin GETs"] >= DEVICES  # every device read its twin again
    assert "| 100 % active |" in completed.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
