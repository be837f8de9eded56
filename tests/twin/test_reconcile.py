"""The reconciler and update pipeline in-process, over a real module (store, onnxruntime) and real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_module.module import EdgeModule
from edge_module.twin.fetch import FetchPolicy
from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from edge_module.twin.reported import ReportedState
from tests.support.inprocess import running_module
from tests.support.models import diabetes_regressor, iris_classifier
from tests.twin.release_server import ReleaseServer

POLICY = FetchPolicy(allow_insecure=True, max_bytes=10_000_000, timeout=10, attempts=2, backoff=0.05)


@dataclass
class Twin:
    module: EdgeModule
    reported: ReportedState
    reconciler: Reconciler

    async def wait(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        async def changes() -> None:
            while not check():
                self.reported.changed.clear()
                await self.reported.changed.wait()

        await asyncio.wait_for(changes(), timeout)

    async def wait_state(self, name: str, state: str, **fields: Any) -> dict[str, Any]:
        def matches() -> bool:
            block = self.reported.model(name) or {}
            return block.get("state") == state and all(block.get(k) == v for k, v in fields.items())

        await self.wait(matches)
        block = self.reported.model(name)
        assert block is not None
        return block

    def served_version(self, name: str) -> str | None:
        served = self.module.repository.served(name)
        return served.active.version if served else None


@pytest.fixture
async def twin(model_dir: Path) -> AsyncIterator[Twin]:
    async with running_module(model_dir, serve_default_model=False) as (module, _):
        reported = ReportedState()
        reconciler = Reconciler(ModelUpdater(module.manager, POLICY, [], reported), reported, retry_interval=60)
        yield Twin(module, reported, reconciler)
        await reconciler.close()


@pytest.fixture
def releases() -> Iterator[ReleaseServer]:
    server = ReleaseServer().start()
    yield server
    server.close()


async def test_a_patch_mid_download_supersedes_the_older_target(twin: Twin, releases: ReleaseServer) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})
    await twin.wait_state("iris", "active", activeVersion="1")

    slow = iris_classifier("2").onnx
    v2 = releases.release("iris", "2", slow, stall_first_at=len(slow) // 2)
    twin.reconciler.apply_patch({"models": {"iris": v2}, "$version": 2})
    assert await asyncio.to_thread(releases.stalled.wait, 30)
    v3 = releases.release("iris", "3", iris_classifier("3").onnx)
    twin.reconciler.apply_patch({"models": {"iris": v3}, "$version": 3})

    await twin.wait_state("iris", "active", activeVersion="3", desiredVersion="3")
    releases.release_stall.set()
    assert twin.served_version("iris") == "3"
    assert twin.reported.take()["lastDesiredVersion"] == 3
    served = twin.module.repository.served("iris")
    assert served is not None and "2" not in served.versions


async def test_same_release_twice_downloads_once_and_stale_patches_are_ignored(
    twin: Twin, releases: ReleaseServer
) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 4}})
    await twin.wait_state("iris", "active", activeVersion="1")
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 4}})
    twin.reconciler.apply_patch({"models": {"iris": dict(v1)}, "$version": 5})
    # An older patch (delivered late) must not roll the model back.
    old = releases.release("iris", "0", iris_classifier("0").onnx)
    twin.reconciler.apply_patch({"models": {"iris": old}, "$version": 3})
    await twin.wait(lambda: twin.reconciler.desired_version == 5)
    assert len(releases.files["/models/iris/1/model.onnx"].requests) == 1
    assert releases.files["/models/iris/0/model.onnx"].requests == []
    assert twin.served_version("iris") == "1"


async def test_full_twin_removes_models_no_longer_desired_and_null_removes(twin: Twin, releases: ReleaseServer) -> None:
    iris = releases.release("iris", "1", iris_classifier("1").onnx)
    diabetes = releases.release("diabetes", "1", diabetes_regressor("1").onnx)
    twin.reconciler.apply_twin({"desired": {"models": {"iris": iris, "diabetes": diabetes}, "$version": 1}})
    await twin.wait_state("iris", "active")
    await twin.wait_state("diabetes", "active")

    twin.reconciler.apply_patch({"models": {"diabetes": None}, "$version": 2})
    await twin.wait_state("diabetes", "removed")
    assert twin.served_version("diabetes") is None
    assert twin.module.store.get("diabetes") is None

    # A fresh start reads a twin whose desired lacks iris (deleted while offline) but whose reported has it.
    reported = {"models": {"iris": {"state": "active", "activeVersion": "1"}, "gone": {"state": "removed"}}}
    fresh = Reconciler(twin.reconciler.updater, twin.reported, retry_interval=60)
    fresh.apply_twin({"desired": {"$version": 3}, "reported": reported})
    await twin.wait_state("iris", "removed")
    assert twin.served_version("iris") is None
    await fresh.close()


async def test_invalid_release_fails_alone_and_transient_failures_retry_on_reconnect(
    twin: Twin, releases: ReleaseServer
) -> None:
    good = releases.release("iris", "1", iris_classifier("1").onnx)
    invalid = {"version": "1", "uri": "https://example.invalid/x.onnx", "sha256": "not-hex"}
    desired = {"desired": {"models": {"iris": good, "broken": invalid}, "$version": 1}}
    releases.down = True
    twin.reconciler.apply_twin(desired)
    broken = await twin.wait_state("broken", "failed")
    assert "sha256" in broken["error"]
    failed = await twin.wait_state("iris", "failed", desiredVersion="1")
    assert "failed after 2 attempt(s)" in failed["error"]
    status = twin.reported.take()["lastDesiredStatus"]
    assert status["code"] == 400 and "broken" in status["description"] and "iris" in status["description"]

    # The network is back; the next connect reads the same twin and retries the same release at once.
    releases.down = False
    twin.reconciler.apply_twin(desired)
    await twin.wait_state("iris", "active", activeVersion="1")
    assert twin.reported.take()["lastDesiredStatus"]["code"] == 400  # "broken" still is


async def test_https_is_required_unless_insecure_uris_are_allowed(twin: Twin, releases: ReleaseServer) -> None:
    strict = FetchPolicy(allow_insecure=False, max_bytes=10_000_000, timeout=5, attempts=1, backoff=0)
    reconciler = Reconciler(ModelUpdater(twin.module.manager, strict, [], twin.reported), twin.reported, 60)
    release = releases.release("iris", "1", iris_classifier("1").onnx)
    reconciler.apply_twin({"desired": {"models": {"iris": release}, "$version": 1}})
    failed = await twin.wait_state("iris", "failed")
    assert "scheme 'http' is not allowed" in failed["error"]
    assert "sig=" not in failed["error"]
    assert releases.files["/models/iris/1/model.onnx"].requests == []
    await reconciler.close()


async def test_file_uris_and_size_cap(twin: Twin, tmp_path: Path) -> None:
    import hashlib

    data = iris_classifier("1").onnx
    path = tmp_path / "iris.onnx"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    release = {"version": "1", "uri": path.as_uri(), "sha256": sha, "size": len(data)}
    twin.reconciler.apply_twin({"desired": {"models": {"iris": release}, "$version": 1}})
    await twin.wait_state("iris", "active", activeVersion="1")

    bigger = iris_classifier("2").onnx
    path.write_bytes(bigger)
    tiny = FetchPolicy(allow_insecure=True, max_bytes=1000, timeout=5, attempts=1, backoff=0)
    reconciler = Reconciler(ModelUpdater(twin.module.manager, tiny, [], twin.reported), twin.reported, 60)
    capped = {"version": "2", "uri": path.as_uri(), "sha256": hashlib.sha256(bigger).hexdigest()}
    reconciler.apply_twin({"desired": {"models": {"iris": capped}, "$version": 2}})
    failed = await twin.wait_state("iris", "failed", desiredVersion="2")
    assert "larger than 1000 bytes" in failed["error"]
    assert twin.served_version("iris") == "1"
    await reconciler.close()


async def test_a_patch_carrying_only_the_changed_fields_merges_into_the_release(
    twin: Twin, releases: ReleaseServer
) -> None:
    """IoT Hub sends desired patches as JSON merge patches: a new release may arrive as only the fields that
    changed (version, uri, sha256, size). Found by the fleet test (docs/fleet-scale.md)."""
    one = releases.release("iris", "1", iris_classifier("1").onnx)
    twin.reconciler.apply_twin({"desired": {"$version": 1, "models": {"iris": one}}})
    await twin.wait_state("iris", "active", activeVersion="1")
    # The same file released again as version 2 (re-tagged): sha256 and size stay, version and uri change.
    two = releases.release("iris", "2", iris_classifier("1").onnx)
    changed = {key: value for key, value in two.items() if one.get(key) != value}
    assert set(changed) == {"version", "uri"}, changed
    twin.reconciler.apply_patch({"$version": 2, "models": {"iris": changed}})
    block = await twin.wait_state("iris", "active", activeVersion="2")
    assert block["sha256"] == one["sha256"] == two["sha256"]
    # A field set to null is deleted from the release, as IoT Hub deletes it from the twin.
    twin.reconciler.apply_patch({"$version": 3, "models": {"iris": {"sha256": None}}})
    failed = await twin.wait_state("iris", "failed")
    assert "sha256" in (failed["error"] or "") and twin.served_version("iris") == "2"
