"""Swaps that fit in memory, in a real memory cgroup: the real module process, large real ONNX models loaded
through the repository API while a client keeps inferring, a limit set from the measured working set."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.cgroup import MemoryCgroup
from tests.support.iothub import EmulatedHub, MosquittoBroker, WorkloadAPI
from tests.support.server import ModuleProcess
from tests.twin.conftest import FAST_SETTINGS
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
MIB = 1024 * 1024
ROW = [[5.1, 3.5, 1.4, 0.2]]


@functools.cache
def large_model(rows: int, seed: int) -> bytes:
    """A valid model whose answer reads one row of a ``rows`` x 4 float table picked by the input: the table
    cannot be folded away, so the whole of it stays in memory (16 bytes a row)."""
    table = np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Slice", ["input", "zero", "one", "one"], ["first"]),
        helper.make_node("Abs", ["first"], ["magnitude"]),
        helper.make_node("Cast", ["magnitude"], ["index_2d"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["index_2d", "flat"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
        helper.make_node("Add", ["input", "picked"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    serialized: bytes = model.SerializeToString()
    return serialized


@pytest.fixture
def cgroup() -> Iterator[MemoryCgroup]:
    group = MemoryCgroup.create()
    yield group
    group.close()


class Client:
    """Keeps inferring on the active version from a thread; every answer must be a 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW[0]}]}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set() and len(self.statuses) < 200_000:
                self.statuses.append(client.post("/v2/models/big/infer", json=body).status_code)
                self.stop.wait(0.01)

    def __enter__(self) -> Client:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def _loaded_versions(module: ModuleProcess) -> list[str]:
    index = httpx.post(f"{module.url}/v2/repository/index", timeout=30).json()
    return sorted(entry["version"] for entry in index if entry["name"] == "big")


def test_releases_fit_the_cgroup_limit_or_are_refused_and_nothing_is_oom_killed(
    tmp_path: Path, model_dir: Path, cgroup: MemoryCgroup, releases: ReleaseServer
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    workload = WorkloadAPI(broker.ca_pem).start()
    v1, v2, v3 = (releases.release("big", str(n), large_model(5_000_000, n)) for n in (1, 2, 3))
    hub = EmulatedHub(broker, desired={"models": {"big": v1}})
    broker.start()
    hub.start()
    env = {
        **FAST_SETTINGS,
        **workload.module_env(hub.device_id, hub.module_id),
        "EDGE_KEEP_LOADED": "2",
        "EDGE_PROBATION_REQUESTS": "0",
        "EDGE_PROBATION_SECONDS": "0",
    }
    module = ModuleProcess(model_dir, env=env, prefix=cgroup.enter_command())
    try:
        module.start(timeout=120)
        assert module.process is not None and str(module.process.pid) in cgroup.procs.read_text()
        events = cgroup.path / ("memory.events" if cgroup.version == 2 else "memory.oom_control")
        assert "oom_kill" in events.read_text()
        # 80 MB of table each: v1 and v2 load without a limit, so both stay loaded (active + last-known-good).
        hub.patch_desired({"models": {"big": v2}})
        hub.wait_model_state("big", "active", timeout=180, activeVersion="2")
        assert _loaded_versions(module) == ["1", "2"]
        with_two = cgroup.working_set()

        # A budget that holds both and room for a third only once the last-known-good session goes: vetting
        # v3 needs its own interpreter plus ~3.5 times the file.
        limit = with_two + 290 * MIB
        cgroup.set_limit(limit)
        with Client(module.url) as client:
            hub.patch_desired({"models": {"big": v3}})
            hub.wait_model_state("big", "active", timeout=180, activeVersion="3")
            assert _loaded_versions(module) == ["2", "3"], "v1's session was dropped to make room; v2 is the LKG"
            assert "unloaded version(s) 1 (kept on disk) to make room" in module.logs()
            after_swap = cgroup.working_set()

            # A release needing more than the whole budget (a file a third of the limit needs ~3.5 times
            # that): refused with the figures; v3 keeps serving, and it is not tried again.
            huge_model = large_model(int(limit / 3 / 16), 4)
            huge = releases.release("big", "4", huge_model)
            hub.patch_desired({"models": {"big": huge}})
            block = hub.wait_model_state("big", "failed", timeout=180, activeVersion="3")
            message = block["error"]
            assert "needs ~" in message and "MiB available" in message, message
            assert _loaded_versions(module) == ["3"], "the LKG session was tried first, then the release refused"
            downloads = len(releases.files["/models/big/4/model.onnx"].requests)
            later = hub.patch_desired({"unrelated": {"x": 1}})
            hub.wait_reported(lambda r: r.get("lastDesiredVersion") == later)
            assert len(releases.files["/models/big/4/model.onnx"].requests) == downloads

            # The same file as a shadow: refused before its vetting child could take the cgroup down, and it
            # does not unload the last-known-good to make room (a shadow never does).
            hub.patch_desired({"shadows": {"big": releases.release("big", "5", huge_model)}})
            reported = hub.wait_reported(lambda r: (r.get("shadows", {}).get("big") or {}).get("state") == "failed")
            shadow_error = reported["shadows"]["big"]["error"]
            assert "needs ~" in shadow_error and "to vet as a shadow" in shadow_error, shadow_error
            assert _loaded_versions(module) == ["3"]
        assert client.statuses and set(client.statuses) == {200}, set(client.statuses)
        assert cgroup.oom_kills() == 0
        assert module.process.poll() is None
        log.info(
            "memory: limit %.0f MiB (cgroup v%d); working set %.0f MiB with two large versions, %.0f MiB after "
            "the third swapped in; the %.0f MB release refused: %s; %d requests, all 200, 0 OOM kills",
            limit / MIB,
            cgroup.version,
            with_two / MIB,
            after_swap / MIB,
            len(huge_model) / 1e6,
            message,
            len(client.statuses),
        )
    finally:
        code = module.stop()
        hub.close()
        workload.close()
        broker.close()
        assert code == 0, module.logs()[-3000:]
