"""The wall clock jumping under the running module: libfaketime (Debian's ``faketime``) steps CLOCK_REALTIME
of the module process backwards by 50 minutes, then forwards by a day, as a bad RTC or an NTP step would.

CLOCK_MONOTONIC is left alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as it is in a real step: the module's
timeouts, retries and backoff run on monotonic clocks (asyncio, httpx, the SDK's timers), so updates still
converge and serving goes on; the twin's ``updatedAt`` follows the wall clock, which shows the jump happened.
Both jumps stay inside the test certificates' validity window: TLS to edgeHub needs a sane clock, as it does
for IoT Edge itself.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.support.models import iris_classifier
from tests.support.system import require_binary
from tests.twin.conftest import EdgeFactory
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow
CACHE_S = 1  # libfaketime re-reads the offset file this often


def _write_atomically(path: Path, text: str) -> None:
    """libfaketime re-reads the file on its own schedule: a plain rewrite can be read while it is empty (it
    then keeps the old offset for another cache period, and the update under test finishes inside it)."""
    staging = path.with_suffix(".new")
    staging.write_text(text)
    os.replace(staging, path)


def _wait_for_module_clock(url: str, expected_shift: float, timeout: float = 60.0) -> None:
    """Until the module's own clock (``/status.json``'s ``time``) shows the jump: libfaketime re-reads the
    offset file only once its cache has run out, which a loaded machine can delay."""
    deadline = time.monotonic() + timeout
    while True:
        module_now = _parse(httpx.get(f"{url}/status.json", timeout=10).json()["time"])
        shift = (module_now - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        if abs(shift - expected_shift) < 120:
            return
        assert time.monotonic() < deadline, f"the module's clock never showed the jump ({shift:.0f} s)"
        time.sleep(0.2)


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def _reported_at(block: dict[str, str]) -> datetime.datetime:
    return datetime.datetime.strptime(block["updatedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def test_wall_clock_jumps_do_not_stall_updates_or_serving(
    start_edge: EdgeFactory, releases: ReleaseServer, tmp_path: Path
) -> None:
    require_binary("faketime")
    library = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)
    assert library is not None, "the faketime package ships libfaketime.so.1 under /usr/lib/<triplet>/faketime"
    offset = tmp_path / "faketime"
    _write_atomically(offset, "+0\n")
    env = {
        "LD_PRELOAD": str(library),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_CACHE_DURATION": str(CACHE_S),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # libfaketime 0.9.10 (Debian 12) makes time.sleep() fail with EINVAL when monotonic time is not
        # faked; subprocess.run(timeout=...), which vets models in a child process, polls with it. That is
        # the tool's bug, not a clock jump: vetting is off here (it is covered in tests/test_hostile_models.py).
        "EDGE_VET_MODELS": "false",
    }
    models = {v: iris_classifier(str(v), n_estimators=v + 2) for v in (1, 2, 3)}
    rows = models[1].x_test
    edge = start_edge(desired={"models": {"iris": releases.release("iris", "1", models[1].onnx)}}, env=env)
    edge.hub.wait_model_state("iris", "active", activeVersion="1")

    for version, jump, expected_shift in ((2, "-50m", -50 * 60), (3, "+1d", 86400)):
        _write_atomically(offset, f"{jump}\n")
        _wait_for_module_clock(edge.module.url, expected_shift)
        data = models[version].onnx
        # A reset mid-body: the download resumes after a backoff, timed by the monotonic clock.
        release = releases.release("iris", str(version), data, reset_first_at=len(data) // 2)
        real_now = datetime.datetime.now(datetime.timezone.utc)
        edge.hub.patch_desired({"models": {"iris": release}})
        block = edge.hub.wait_model_state("iris", "active", activeVersion=str(version), timeout=60)
        shift = (_reported_at(block) - real_now).total_seconds()
        assert abs(shift - expected_shift) < 120, f"updatedAt {block['updatedAt']} does not show the {jump} jump"
        assert len(releases.files[f"/models/iris/{version}/model.onnx"].requests) >= 2  # it did retry
        assert edge.infer_version("iris", rows) == str(version)
    logs = edge.module.logs()
    assert "Traceback" not in logs and "Invalid argument" not in logs, logs[-3000:]
