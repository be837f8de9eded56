"""Random and adversarial desired-property patches into the in-process reconciler (real store, onnxruntime,
HTTP release server): it never crashes, and every model ends in a reported state that tells the truth."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_module.module import EdgeModule
from edge_module.twin.fetch import FetchPolicy
from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from edge_module.twin.reported import ReportedState
from tests.support.inprocess import running_module
from tests.support.models import iris_classifier
from tests.twin.release_server import ReleaseServer

POLICY = FetchPolicy(allow_insecure=True, max_bytes=200_000, timeout=2, attempts=1, backoff=0)
TERMINAL = {"active", "failed", "removed"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# IoT Hub twin keys cannot hold '.', '$', spaces or control characters; anything else may arrive.
twin_keys = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs"), blacklist_characters=".$"), min_size=1, max_size=70
)
valid_names = st.sampled_from(["iris", "other", "a" * 64, "-"])
# Mostly names the module accepts, so most examples reach the download, verify and load paths.
model_names = st.one_of(valid_names, valid_names, valid_names, st.sampled_from(["a" * 65, "é"]), twin_keys)
HOSTILE_URIS = [
    "",
    "https://[::1",
    "http://127.0.0.1:99999/x",
    "http://127.0.0.1:9/unreachable.onnx?sig=SECRET",
    "file:///etc/passwd",
    "file:///dev/zero",
    "file://remote-host/share/model.onnx",
    "ftp://example.com/model.onnx",
    "javascript:alert(1)",
    "http://user:pass@127.0.0.1:9/x",
]
hostile_uris = st.sampled_from(HOSTILE_URIS)


def release_blocks(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Blocks near the contract: the valid release with one field replaced, or hostile URIs, or junk."""
    field_values = {
        "version": st.sampled_from(["1", "2", "..", ".", "a/b", "x" * 65, ""]) | json_values,
        "uri": hostile_uris | json_values,
        "sha256": st.sampled_from(["0" * 64, "A" * 64, valid["sha256"][:-1], valid["sha256"] + "0"]) | json_values,
        "size": st.sampled_from([0, -1, True, 10**30, 1.5, valid["size"] - 1, valid["size"] + 1]) | json_values,
        "signature": json_values,
        "extra": json_values,
    }
    mutated = st.sampled_from(sorted(field_values)).flatmap(
        lambda key: field_values[key].map(lambda value: {**valid, key: value})
    )
    hostile = hostile_uris.map(lambda uri: {**valid, "uri": uri})
    return st.one_of(st.just(valid), st.just(valid), hostile, hostile, mutated, mutated, st.none(), json_values)


@pytest.fixture(scope="module")
def releases() -> Iterator[ReleaseServer]:
    server = ReleaseServer().start()
    yield server
    server.close()


def _settled(reconciler: Reconciler) -> bool:
    # Internal view, read-only: an update is settled when its task ended or parked until its retry time.
    for name, task in reconciler._tasks.items():
        outcome = reconciler._outcomes.get(name)
        if not task.done() and (outcome is None or outcome[0] != reconciler._targets.get(name)):
            return False
    return True


async def _until_settled(reconciler: Reconciler) -> None:
    while not _settled(reconciler):
        await asyncio.sleep(0.01)


def _check_truthful(module: EdgeModule, reported: ReportedState, reconciler: Reconciler) -> None:
    for task in reconciler._tasks.values():
        if task.done() and not task.cancelled():
            assert task.exception() is None, repr(task.exception())  # an update task that crashed
    names = set(reconciler._tasks) | set(module.repository.snapshot())
    for name in names:
        block = reported.model(name)
        served = module.repository.served(name)
        assert block is not None, f"model {name!r} was never reported"
        assert block["state"] in TERMINAL, block
        assert block["activeVersion"] == (served.active.version if served else None), (name, block)
        assert block["sha256"] == (served.active.sha256 if served else None), (name, block)
        if block["state"] == "failed":
            assert block["error"], block
            assert "SECRET" not in block["error"]
        if block["state"] == "removed":
            assert served is None


async def _scenario(
    model_dir: Path, patches: list[dict[str, Any]], twin: dict[str, Any] | None = None
) -> ReportedState:
    async with running_module(model_dir, serve_default_model=False, vet_models=False) as (module, _):
        reported = ReportedState()
        reconciler = Reconciler(ModelUpdater(module.manager, POLICY, [], reported), reported, retry_interval=60)
        try:
            if twin is not None:  # what a (re)connect reads first
                reconciler.apply_twin(twin)
            for patch in patches:
                reconciler.apply_patch(patch)
                await asyncio.sleep(0)  # let an update start, so later patches can supersede it
            await asyncio.wait_for(_until_settled(reconciler), 30)
            _check_truthful(module, reported, reconciler)
            if reported.model("iris") or reported.model("other"):
                assert "lastDesiredStatus" in reported.take()
            return reported
        finally:
            await reconciler.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_and_adversarial_twins_and_patches_never_crash_or_leave_a_model_unreported(
    data: st.DataObject, releases: ReleaseServer
) -> None:
    valid = releases.release("iris", "1", iris_classifier("1", n_estimators=3).onnx)
    models = st.dictionaries(model_names, release_blocks(valid), min_size=1, max_size=3)
    release_patch = st.fixed_dictionaries(
        {"models": st.one_of(models, models, models, models, st.none(), json_values)},
        optional={"$version": st.integers(-2, 10) | json_values, "observability": json_values},
    )
    # Mostly patches that carry releases (they reach download, verify, load); some plain junk.
    patch = st.one_of(release_patch, release_patch, release_patch, st.dictionaries(st.text(max_size=8), json_values))
    previous = st.fixed_dictionaries({}, optional={"models": st.dictionaries(model_names, json_values) | json_values})
    twin = st.none() | st.fixed_dictionaries({"desired": patch}, optional={"reported": previous})
    first = data.draw(twin)
    patches = data.draw(st.lists(patch, min_size=0 if first else 1, max_size=4))
    with tempfile.TemporaryDirectory() as tmp:
        reported = asyncio.run(_scenario(Path(tmp), patches, first))
    for name in ("iris", "other", "-"):  # coverage, shown by --hypothesis-show-statistics
        block = reported.model(name)
        event(f"{name}: {block['state'] if block else 'not reported'}")


@pytest.mark.parametrize("uri", HOSTILE_URIS)
def test_each_hostile_uri_ends_in_a_truthful_failed_state(uri: str, releases: ReleaseServer, tmp_path: Path) -> None:
    valid = releases.release("iris", "1", iris_classifier("1", n_estimators=3).onnx)
    reported = asyncio.run(_scenario(tmp_path, [{"models": {"iris": {**valid, "uri": uri}}, "$version": 2}]))
    block = reported.model("iris")
    assert block is not None and block["state"] == "failed", block
    if uri in ("https://[::1", "http://127.0.0.1:99999/x"):  # once crashed the update task (fixed)
        assert "not a valid URL" in block["error"], block
