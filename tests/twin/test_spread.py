"""Download spreading with the real twin code: reconciler, update pipeline, store, onnxruntime, real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cloud.releases.keys import generate_key_pair, load_private_key
from edge_module.release import MAX_SPREAD_SECONDS, ReleaseError, load_public_keys, parse_release, verify_signature
from edge_module.settings import Settings
from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from edge_module.twin.reported import ReportedState
from edge_module.twin.spread import DownloadSpread
from tests.support.inprocess import running_module
from tests.support.models import iris_classifier
from tests.twin.release_server import ReleaseServer
from tests.twin.test_reconcile import POLICY, Twin

# The longest window: with a fraction of 0.999 the device waits ~an hour, i.e. until something cancels it.
FOREVER = DownloadSpread(MAX_SPREAD_SECONDS, fraction=lambda: 0.999)


@pytest.fixture
def releases() -> Iterator[ReleaseServer]:
    server = ReleaseServer().start()
    yield server
    server.close()


async def start_twin(model_dir: Path, spread: DownloadSpread) -> AsyncIterator[Twin]:
    async with running_module(model_dir, serve_default_model=False) as (module, _):
        reported = ReportedState()
        updater = ModelUpdater(module.manager, POLICY, [], reported, spread=spread)
        reconciler = Reconciler(updater, reported, retry_interval=60)
        yield Twin(module, reported, reconciler)
        await reconciler.close()


@pytest.fixture
async def waiting_twin(model_dir: Path) -> AsyncIterator[Twin]:
    async for twin in start_twin(model_dir, FOREVER):
        yield twin


def requests(releases: ReleaseServer, version: str) -> int:
    return len(releases.files[f"/models/iris/{version}/model.onnx"].requests)


class RecordingState(ReportedState):
    """The module's reported state, keeping every model block it was given, when, and how many requests the
    release server had seen by then."""

    def __init__(self, requests_so_far: Callable[[], int]) -> None:
        super().__init__()
        self.requests_so_far = requests_so_far
        self.history: list[tuple[float, datetime, dict[str, Any], int]] = []

    def set_model(self, name: str, state: str, *args: Any, **kwargs: Any) -> None:
        super().set_model(name, state, *args, **kwargs)
        block = self.model(name) or {}
        self.history.append((time.monotonic(), datetime.now(timezone.utc), block, self.requests_so_far()))


async def test_the_device_reports_when_its_download_starts_then_downloads(
    model_dir: Path, releases: ReleaseServer
) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    reported = RecordingState(lambda: requests(releases, "1"))
    spread = DownloadSpread(0.0, fraction=lambda: 0.5)  # the release's 2 s window: a 1 s delay
    async with running_module(model_dir, serve_default_model=False) as (module, _):
        updater = ModelUpdater(module.manager, POLICY, [], reported, spread=spread)
        twin = Twin(module, reported, Reconciler(updater, reported, retry_interval=60))
        twin.reconciler.apply_twin({"desired": {"models": {"iris": {**v1, "spreadSeconds": 2}}, "$version": 1}})
        active = await twin.wait_state("iris", "active", activeVersion="1")
        await twin.reconciler.close()

    announced_at, announced_wall, waiting, requests_then = reported.history[0]
    assert waiting["state"] == "downloading" and waiting["desiredVersion"] == "1" and requests_then == 0
    starts_at = datetime.strptime(waiting["downloadStartsAt"], "%Y-%m-%dT%H:%M:%S%z")
    # Announced as now + 1 s, truncated to the second: between now and now + 1 s.
    assert -0.1 < (starts_at - announced_wall).total_seconds() <= 1.0
    began_at, _, downloading, requests_then = reported.history[1]
    assert downloading["state"] == "downloading" and downloading["downloadStartsAt"] is None
    assert requests_then == 0 and began_at - announced_at >= 0.95  # nothing fetched during the wait
    assert requests(releases, "1") == 1
    assert "downloadStartsAt" not in active  # cleared once, then no longer sent


async def test_a_newer_release_during_the_wait_cancels_it(waiting_twin: Twin, releases: ReleaseServer) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    twin = waiting_twin
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})  # the setting: ~1 h
    await twin.wait_state("iris", "downloading", desiredVersion="1")
    v2 = releases.release("iris", "2", iris_classifier("2").onnx)
    twin.reconciler.apply_patch({"models": {"iris": {**v2, "spreadSeconds": 0}}, "$version": 2})  # the release wins
    await twin.wait_state("iris", "active", activeVersion="2", desiredVersion="2")
    assert requests(releases, "1") == 0 and requests(releases, "2") == 1
    assert twin.served_version("iris") == "2"


async def test_null_during_the_wait_cancels_it(waiting_twin: Twin, releases: ReleaseServer) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    twin = waiting_twin
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})
    await twin.wait_state("iris", "downloading", desiredVersion="1")
    twin.reconciler.apply_patch({"models": {"iris": None}, "$version": 2})
    removed = await twin.wait_state("iris", "removed")
    assert removed.get("downloadStartsAt") is None
    assert requests(releases, "1") == 0
    assert twin.served_version("iris") is None


async def test_the_same_release_on_reconnect_keeps_waiting(waiting_twin: Twin, releases: ReleaseServer) -> None:
    """A full twin read (reconnect) with the release already waiting neither restarts nor skips the wait."""
    v1 = releases.release("iris", "1", iris_classifier("1").onnx)
    twin = waiting_twin
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})
    first = await twin.wait_state("iris", "downloading", desiredVersion="1")
    waiting = [task for task in asyncio.all_tasks() if task.get_name() == "update-iris"]
    twin.reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})
    assert [task for task in asyncio.all_tasks() if task.get_name() == "update-iris"] == waiting
    assert len(waiting) == 1 and not waiting[0].done()
    assert twin.reported.model("iris") == first
    assert requests(releases, "1") == 0


async def test_a_file_already_in_the_store_does_not_wait(model_dir: Path, releases: ReleaseServer) -> None:
    async for twin in start_twin(model_dir, FOREVER):
        data = iris_classifier("1").onnx
        v1 = releases.release("iris", "1", data)
        twin.reconciler.apply_twin({"desired": {"models": {"iris": {**v1, "spreadSeconds": 0}}, "$version": 1}})
        await twin.wait_state("iris", "active", activeVersion="1")
        again = releases.release("iris", "1b", data)  # another version, the same bytes
        twin.reconciler.apply_patch({"models": {"iris": again}, "$version": 2})
        await twin.wait_state("iris", "active", activeVersion="1b")
        assert requests(releases, "1b") == 0


def test_spread_is_off_by_default_and_bounded() -> None:
    assert Settings().download_spread_s == 0
    assert Settings(download_spread_s=600).download_spread_s == 600
    with pytest.raises(ValueError):
        Settings(download_spread_s=MAX_SPREAD_SECONDS + 1)
    release = parse_release("iris", {"version": "1", "uri": "https://x/m.onnx", "sha256": "a" * 64})
    assert DownloadSpread().delay(release) == 0
    assert DownloadSpread(100, fraction=lambda: 0.25).delay(release) == 25
    off = parse_release("iris", {**release.as_desired(), "spreadSeconds": 0})
    assert DownloadSpread(100, fraction=lambda: 0.25).delay(off) == 0


@pytest.mark.parametrize("value", [-1, MAX_SPREAD_SECONDS + 1, True, "60", 1.5])
def test_an_invalid_spread_is_refused(value: Any) -> None:
    block = {"version": "1", "uri": "https://x/m.onnx", "sha256": "a" * 64, "spreadSeconds": value}
    with pytest.raises(ReleaseError, match="spreadSeconds"):
        parse_release("iris", block)


def test_the_signature_does_not_cover_the_spread(tmp_path: Path, releases: ReleaseServer) -> None:
    """Existing signed releases verify unchanged with or without spreadSeconds: it is not signed."""
    keys = generate_key_pair(tmp_path / "keys", "release")
    signed = releases.release("iris", "1", b"model", key=load_private_key(keys.private_path))
    trusted = load_public_keys(keys.public_path.read_text())
    verify_signature(parse_release("iris", signed), trusted)
    with_spread = parse_release("iris", {**signed, "spreadSeconds": 900})
    verify_signature(with_spread, trusted)
    assert with_spread.as_desired()["spreadSeconds"] == 900
