"""The disk filling up under the model store: a real, small tmpfs mounted over the store (needs root).

Writing a model that does not fit, and writing the pointer on a full disk, both fail with a reported
reason; the version that was serving keeps serving and the store stays intact.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_module.twin.pipeline import ModelUpdater
from edge_module.twin.reconcile import Reconciler
from tests.reliability.store_check import assert_store_intact
from tests.reliability.test_download_faults import POLICY
from tests.support.models import iris_classifier
from tests.twin.release_server import ReleaseServer
from tests.twin.test_reconcile import Twin

STORE_BYTES = 64 * 1024


@pytest.fixture
def model_dir(tmp_path: Path) -> Iterator[Path]:
    """The store on its own 64 KiB tmpfs."""
    path = tmp_path / "store"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs under the store needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={STORE_BYTES},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 1024):
                pass
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_fails_the_update_with_a_reason_and_the_served_version_survives(
    twin: Twin, releases: ReleaseServer, model_dir: Path
) -> None:
    reconciler = Reconciler(ModelUpdater(twin.module.manager, POLICY, [], twin.reported), twin.reported, 1.0)
    small = iris_classifier("1", n_estimators=3).onnx
    v1 = releases.release("iris", "1", small)
    reconciler.apply_twin({"desired": {"models": {"iris": v1}, "$version": 1}})
    await twin.wait_state("iris", "active", activeVersion="1")

    # A model larger than the whole disk: the download's write fails with ENOSPC.
    huge = iris_classifier("2", n_estimators=300).onnx
    assert len(huge) > STORE_BYTES
    reconciler.apply_patch({"models": {"iris": releases.release("iris", "2", huge)}, "$version": 2})
    failed = await twin.wait_state("iris", "failed", desiredVersion="2")
    assert "No space left on device" in failed["error"] and failed["activeVersion"] == "1"
    assert twin.served_version("iris") == "1"
    assert_store_intact(model_dir, {"iris": "1"})

    # A model that fits replaces the one that did not.
    v3 = releases.release("iris", "3", iris_classifier("3", n_estimators=5).onnx)
    reconciler.apply_patch({"models": {"iris": v3}, "$version": 3})
    await twin.wait_state("iris", "active", activeVersion="3")
    assert_store_intact(model_dir, {"iris": "3"})

    # Back to version 1, whose blob the store kept, on a disk now full: only the pointer needs writing.
    filler = _fill(model_dir)
    reconciler.apply_patch({"models": {"iris": v1}, "$version": 4})
    failed = await twin.wait_state("iris", "failed", desiredVersion="1")
    assert "No space left on device" in failed["error"] and failed["activeVersion"] == "3"
    assert twin.served_version("iris") == "3"
    filler.unlink()
    assert_store_intact(model_dir, {"iris": "3"})  # the old pointer is whole, not truncated

    # Space comes back: the transient failure is retried and converges.
    await twin.wait_state("iris", "active", activeVersion="1")
    assert twin.reported.take()["lastDesiredStatus"]["code"] == 200
    await reconciler.close()
    assert_store_intact(model_dir, {"iris": "1"})
