"""kill -9 of the module process during download, verification and activation of a twin update, then restart.

After each kill the store still names a whole, verified version; the restarted module serves the old or
the new version (never nothing, never a broken one), converges to the desired version and reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from edge_module.store import ModelStore
from tests.reliability.store_check import assert_store_intact
from tests.support.models import TrainedModel, iris_classifier
from tests.support.server import ModuleProcess
from tests.twin.conftest import Edge, EdgeFactory, v2_request
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow

OLD, NEW = iris_classifier("1", n_estimators=3), iris_classifier("2", n_estimators=7)
ROWS = OLD.x_test
PADDING_BYTES = 96 * 1024 * 1024


def padded(model: TrainedModel, extra: int = 0) -> bytes:
    """The model with ~96 MiB of metadata: hashing, fsync and loading it take long enough to be hit by a kill."""
    proto = onnx.load_from_string(model.onnx)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "padding", "x" * (PADDING_BYTES + extra)
    data: bytes = proto.SerializeToString()
    return data


def assert_serves_a_whole_version(module: ModuleProcess) -> str:
    response = httpx.post(f"{module.url}/v2/models/iris/infer", json=v2_request(ROWS), timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    model = OLD if body["model_version"] == "1" else NEW  # every later version is NEW, maybe padded
    labels = next(o for o in body["outputs"] if o["name"] == "label")["data"]
    assert np.array_equal(labels, model.estimator.predict(ROWS))
    version: str = body["model_version"]
    return version


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll)


def kill_restart_and_converge(
    edge: Edge,
    model_dir: Path,
    active_after_kill: set[str],
    target: str = "2",
    after_kill: Callable[[], None] = lambda: None,
) -> None:
    code = edge.module.kill()
    assert code == -9
    after_kill()
    pointer = ModelStore(model_dir).get("iris")
    assert pointer is not None and pointer.active.version in active_after_kill
    assert_store_intact(model_dir, {"iris": pointer.active.version}, settled=False)

    env = {k: v for k, v in edge.module.env.items() if k != "EDGE_PORT"}
    restarted = ModuleProcess(model_dir, env=env)
    restarted.start(wait_ready=True, timeout=60)
    try:
        assert assert_serves_a_whole_version(restarted) in {*active_after_kill, target}
        block = edge.hub.wait_model_state("iris", "active", activeVersion=target, timeout=120)
        assert block["desiredVersion"] == target and "error" not in block
        assert edge.hub.wait_reported(lambda r: r.get("lastDesiredStatus", {}).get("code") == 200)
        assert assert_serves_a_whole_version(restarted) == target
    finally:
        code = restarted.stop()
    assert code == 0, restarted.logs()[-3000:]
    assert_store_intact(model_dir, {"iris": target})


def start_on_v1(start_edge: EdgeFactory, releases: ReleaseServer) -> Edge:
    edge = start_edge(desired={"models": {"iris": releases.release("iris", "1", OLD.onnx)}})
    edge.hub.wait_model_state("iris", "active", activeVersion="1")
    return edge


def test_kill_during_download_resumes_after_restart(
    start_edge: EdgeFactory, releases: ReleaseServer, model_dir: Path
) -> None:
    edge = start_on_v1(start_edge, releases)
    data = NEW.onnx
    half = len(data) // 2
    release = releases.release("iris", "2", data, stall_first_at=half)
    edge.hub.patch_desired({"models": {"iris": release}})
    assert releases.stalled.wait(60), "the download never started"
    edge.hub.wait_model_state("iris", "downloading", desiredVersion="2")
    partial = model_dir / "partial" / release["sha256"]
    wait_for(lambda: partial.exists() and partial.stat().st_size > 0, 30, "a partial download in partial/")
    kept: list[int] = []
    kill_restart_and_converge(
        edge, model_dir, active_after_kill={"1"}, after_kill=lambda: kept.append(partial.stat().st_size)
    )
    releases.release_stall.set()
    # The restarted module asked only for what the partial file lacked, by content hash whatever the URL.
    # (Before the kill the first module may already have retried the stalled request with a Range itself.)
    requests = releases.files["/models/iris/2/model.onnx"].requests
    assert 0 < kept[0] <= len(data)
    assert requests[0] is None and None not in requests[1:] and requests[-1] == f"bytes={kept[0]}-", requests


def test_kill_during_verification(start_edge: EdgeFactory, releases: ReleaseServer, model_dir: Path) -> None:
    edge = start_on_v1(start_edge, releases)
    # The window (hash, fsync, hash, rename of 96 MiB) is a few hundred ms; on a busy machine the poller can
    # wake too late. Then that version activates and the next one is tried: at most three.
    for version in ("2", "3", "4"):
        data = padded(NEW, extra=int(version))
        release = releases.release("iris", version, data)
        blob = model_dir / "blobs" / release["sha256"]

        def downloaded(data: bytes = data, blob: Path = blob) -> bool:
            # The whole file is in partial/ and not yet committed: hashing and fsync are under way.
            partial = model_dir / "partial"
            return (partial.is_dir() and _has_file_of_size(partial, len(data))) or blob.exists()

        edge.hub.patch_desired({"models": {"iris": release}})
        wait_for(downloaded, 60, "the download to complete")
        previous = str(int(version) - 1)
        if not blob.exists():
            assert edge.module.process is not None
            edge.module.process.kill()  # at once; kill_restart_and_converge reaps it
            landed = not blob.exists()
            kill_restart_and_converge(edge, model_dir, active_after_kill={previous, version}, target=version)
            assert landed, "the kill came after the commit (during activation): it missed the verification window"
            return
        edge.hub.wait_model_state("iris", "active", activeVersion=version, timeout=60)
    pytest.fail("three tries, and the poller never woke between download and commit")


def _has_file_of_size(directory: Path, size: int) -> bool:
    for path in directory.iterdir():
        try:
            if path.stat().st_size == size:
                return True
        except FileNotFoundError:  # committed (renamed) or removed meanwhile
            continue
    return False


def test_kill_during_activation(start_edge: EdgeFactory, releases: ReleaseServer, model_dir: Path) -> None:
    edge = start_on_v1(start_edge, releases)
    release = releases.release("iris", "2", padded(NEW))
    edge.hub.patch_desired({"models": {"iris": release}})
    # "loading": the blob is verified and committed; the child-process check, load and warm-up run.
    edge.hub.wait_model_state("iris", "loading", desiredVersion="2", timeout=60)
    assert (model_dir / "blobs" / release["sha256"]).exists()
    kill_restart_and_converge(edge, model_dir, active_after_kill={"1", "2"})
