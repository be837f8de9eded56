"""A release server with field faults, against the in-process reconciler over a real store and onnxruntime.

Each case ends with the right version serving, a reported state that says what happened, and an intact store.
Covered elsewhere (docs/reliability.md): truncation and an unreachable host in tests/twin/test_twin_e2e.py,
a network drop mid-download there too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from edge_module.twin.fetch import FetchPolicy
from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from tests.reliability.store_check import assert_store_intact
from tests.support.models import iris_classifier
from tests.twin.release_server import ReleaseServer
from tests.twin.test_reconcile import Twin

# A short read timeout turns a stalled server into a retry quickly; 3 s, not less, so that a loaded machine
# pausing a healthy transfer is not taken for a stall (the case below with one attempt would then fail).
READ_TIMEOUT_S = 3.0
POLICY = FetchPolicy(allow_insecure=True, max_bytes=10_000_000, timeout=READ_TIMEOUT_S, attempts=3, backoff=0.05)


@pytest.fixture
def reconciler(twin: Twin) -> Reconciler:
    return Reconciler(ModelUpdater(twin.module.manager, POLICY, [], twin.reported), twin.reported, retry_interval=60)


async def _serving_v1(twin: Twin, reconciler: Reconciler, releases: ReleaseServer) -> None:
    v1 = releases.release("iris", "1", iris_classifier("1", n_estimators=3).onnx)
    reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})
    await twin.wait_state("iris", "active", activeVersion="1")


@pytest.mark.parametrize("fault", ["stall", "reset"])
async def test_a_stalled_or_reset_download_resumes_and_activates(
    fault: str, twin: Twin, reconciler: Reconciler, releases: ReleaseServer
) -> None:
    await _serving_v1(twin, reconciler, releases)
    data = iris_classifier("2", n_estimators=7).onnx
    half = len(data) // 2
    faults: dict[str, Any] = {"stall_first_at": half} if fault == "stall" else {"reset_first_at": half}
    v2 = releases.release("iris", "2", data, **faults)
    reconciler.apply_patch({"models": {"iris": v2}, "$version": 2})

    block = await twin.wait_state("iris", "active", activeVersion="2")
    assert block["sha256"] == hashlib.sha256(data).hexdigest() and block["error"] is None
    ranges = releases.files["/models/iris/2/model.onnx"].requests
    assert ranges[0] is None and any(r == f"bytes={half}-" for r in ranges[1:]), ranges  # resumed, not restarted
    assert twin.served_version("iris") == "2"
    await reconciler.close()
    assert_store_intact(twin.module.store.root, {"iris": "2"})


async def test_a_release_reissued_with_a_fresh_sas_resumes_the_interrupted_download(
    twin: Twin, releases: ReleaseServer
) -> None:
    # One attempt per try, and the next try only in a minute: the operator's new URL comes first.
    policy = FetchPolicy(allow_insecure=True, max_bytes=10_000_000, timeout=READ_TIMEOUT_S, attempts=1, backoff=0.05)
    reconciler = Reconciler(ModelUpdater(twin.module.manager, policy, [], twin.reported), twin.reported, 60)
    await _serving_v1(twin, reconciler, releases)
    data = iris_classifier("2", n_estimators=7).onnx
    half = len(data) // 2
    v2 = releases.release("iris", "2", data, reset_first_at=half)
    reconciler.apply_patch({"models": {"iris": v2}, "$version": 2})
    failed = await twin.wait_state("iris", "failed", desiredVersion="2")
    assert f"at {half} bytes" in failed["error"]

    fresh = {**v2, "uri": v2["uri"].replace("sig=SECRET-SAS-SIGNATURE", "sig=FRESH")}
    reconciler.apply_patch({"models": {"iris": fresh}, "$version": 3})
    await twin.wait_state("iris", "active", activeVersion="2")
    assert releases.files["/models/iris/2/model.onnx"].requests == [None, f"bytes={half}-"]
    await reconciler.close()
    assert_store_intact(twin.module.store.root, {"iris": "2"})


@pytest.mark.parametrize("status", [403, 404])
async def test_an_expired_or_missing_sas_url_fails_without_retrying_until_a_new_url_comes(
    status: int, twin: Twin, reconciler: Reconciler, releases: ReleaseServer
) -> None:
    await _serving_v1(twin, reconciler, releases)
    data = iris_classifier("2", n_estimators=7).onnx
    expired = releases.release("iris", "2", data, status=status)
    reconciler.apply_patch({"models": {"iris": expired}, "$version": 2})

    failed = await twin.wait_state("iris", "failed", desiredVersion="2")
    assert f"HTTP {status}" in failed["error"] and "sig=" not in failed["error"]
    assert failed["activeVersion"] == "1"
    assert len(releases.files["/models/iris/2/model.onnx"].requests) == 1  # a 4xx is not worth retrying
    assert twin.served_version("iris") == "1"
    assert_store_intact(twin.module.store.root, {"iris": "1"})

    # The operator re-issues the release with a fresh SAS: same version, new URI.
    releases.files["/models/iris/2/model.onnx"].status = None
    fresh = {**expired, "uri": expired["uri"].replace("sig=SECRET-SAS-SIGNATURE", "sig=FRESH")}
    reconciler.apply_patch({"models": {"iris": fresh}, "$version": 3})
    await twin.wait_state("iris", "active", activeVersion="2")
    assert twin.reported.take()["lastDesiredStatus"]["code"] == 200
    await reconciler.close()
    assert_store_intact(twin.module.store.root, {"iris": "2"})


async def test_wrong_bytes_of_the_right_size_are_refused_and_not_kept(
    twin: Twin, reconciler: Reconciler, releases: ReleaseServer
) -> None:
    await _serving_v1(twin, reconciler, releases)
    real = iris_classifier("2", n_estimators=7).onnx
    wrong = bytes(reversed(real))  # same size, other content: a proxy or disk that mangles bytes
    release = releases.release("iris", "2", wrong, sha256=hashlib.sha256(real).hexdigest(), size=len(real))
    reconciler.apply_patch({"models": {"iris": release}, "$version": 2})

    failed = await twin.wait_state("iris", "failed", desiredVersion="2")
    assert "sha256 mismatch" in failed["error"] and failed["activeVersion"] == "1"
    assert twin.served_version("iris") == "1"
    assert twin.reported.take()["lastDesiredStatus"]["code"] == 400
    await reconciler.close()
    assert_store_intact(twin.module.store.root, {"iris": "1"})
    assert not twin.module.store.has_blob(hashlib.sha256(wrong).hexdigest())
