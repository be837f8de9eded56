from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_module.errors import InvalidRequest, StoreError
from edge_module.store import ModelStore


def _store(root: Path, keep: int = 2) -> ModelStore:
    store = ModelStore(root, keep_versions=keep)
    store.open()
    return store


def test_blobs_are_content_addressed_and_verified(model_dir: Path) -> None:
    store = _store(model_dir)
    sha = store.put_bytes(b"model-one")
    assert sha == hashlib.sha256(b"model-one").hexdigest()
    assert store.read_blob(sha) == b"model-one"
    store.blob_path(sha).write_bytes(b"rotten")
    with pytest.raises(StoreError, match="corrupt"):
        store.read_blob(sha)


def test_activate_keeps_last_known_good_and_rolls_back(model_dir: Path) -> None:
    store = _store(model_dir)
    one, two = store.put_bytes(b"v1"), store.put_bytes(b"v2")
    store.activate("m", "1", one)
    record = store.activate("m", "2", two)
    assert (record.active.version, record.previous and record.previous.version) == ("2", "1")
    rolled = store.rollback("m")
    assert (rolled.active.version, rolled.previous and rolled.previous.version) == ("1", "2")
    # The pointer survives a fresh store object, as it would a restart.
    again = ModelStore(model_dir)
    again.open()
    record_after = again.get("m")
    assert record_after is not None and record_after.active.sha256 == one


def test_old_versions_are_pruned_and_their_blobs_collected(model_dir: Path) -> None:
    store = _store(model_dir, keep=2)
    shas = [store.put_bytes(f"v{i}".encode()) for i in range(4)]
    for i, sha in enumerate(shas):
        store.activate("m", str(i), sha)
    record = store.get("m")
    assert record is not None
    assert [v.version for v in record.versions] == ["2", "3"]
    assert not store.has_blob(shas[0]) and not store.has_blob(shas[1])
    assert store.has_blob(shas[2]) and store.has_blob(shas[3])


def test_reactivating_the_active_version_keeps_the_previous_one(model_dir: Path) -> None:
    store = _store(model_dir)
    one, two = store.put_bytes(b"v1"), store.put_bytes(b"v2")
    store.activate("m", "1", one)
    store.activate("m", "2", two)
    record = store.activate("m", "2", two)
    assert record.previous is not None and record.previous.version == "1"


def test_remove_deletes_pointer_and_blobs(model_dir: Path) -> None:
    store = _store(model_dir)
    sha = store.put_bytes(b"v1")
    store.activate("m", "1", sha)
    assert store.remove("m") is True
    assert store.get("m") is None and not store.has_blob(sha)
    assert store.remove("m") is False


def test_unreferenced_blobs_and_temp_files_are_collected_at_open(model_dir: Path) -> None:
    store = _store(model_dir)
    orphan = store.put_bytes(b"never activated")
    (model_dir / "tmp" / "part-leftover").write_bytes(b"half a model")
    reopened = _store(model_dir)
    assert not reopened.has_blob(orphan)
    assert list((model_dir / "tmp").iterdir()) == []


def test_a_partial_download_outlives_failures_and_restarts_until_committed(model_dir: Path) -> None:
    data = b"model bytes " * 1000
    digest = hashlib.sha256(data).hexdigest()
    store = ModelStore(model_dir)
    store.open()
    with pytest.raises(ConnectionError), store.resumable_file(digest) as (_, handle):
        handle.write(data[:5000])
        raise ConnectionError("the link dropped")
    restarted = ModelStore(model_dir)
    restarted.open()
    with restarted.resumable_file(digest) as (path, handle):
        assert handle.tell() == 5000  # resumes at the end of what is there
        handle.write(data[5000:])
        handle.flush()
        assert restarted.commit_temp(path, digest) == digest
    assert restarted.read_blob(digest) == data
    assert list((model_dir / "partial").iterdir()) == []


def test_wrong_stale_or_finished_partials_are_dropped(model_dir: Path) -> None:
    store = ModelStore(model_dir)
    store.open()
    done = store.put_bytes(b"already here")
    wrong, stale, fresh = (hashlib.sha256(text).hexdigest() for text in (b"wrong", b"stale", b"fresh"))
    for digest in (wrong, stale, fresh, done):
        with store.resumable_file(digest) as (_, handle):
            handle.write(b"some bytes")
    assert sorted(p.name for p in (model_dir / "partial").iterdir()) == sorted([wrong, stale, fresh])
    store.discard_partial(wrong)
    old = time.time() - 8 * 24 * 3600
    os.utime(model_dir / "partial" / stale, (old, old))
    (model_dir / "partial" / "not-a-digest").write_bytes(b"junk")
    ModelStore(model_dir).open()
    assert [p.name for p in (model_dir / "partial").iterdir()] == [fresh]


def test_a_second_download_of_the_same_content_gets_its_own_file(model_dir: Path) -> None:
    store = ModelStore(model_dir)
    store.open()
    digest = hashlib.sha256(b"x").hexdigest()
    with store.resumable_file(digest) as (first, _), store.resumable_file(digest) as (second, _):
        assert first.parent.name == "partial" and second.parent.name == "tmp"
    with store.resumable_file(digest) as (again, _):
        assert again == first  # free again once the first closed


def test_opening_a_store_writes_no_partial_dir(model_dir: Path) -> None:
    """An Azure ML model mount is read-only, and blob storage keeps no empty folders: open() must not need one."""
    store = ModelStore(model_dir)
    store.open()
    store.activate("iris", "1", store.put_bytes(b"model"))
    ModelStore(model_dir).open()
    assert not (model_dir / "partial").exists()


def test_activating_a_missing_blob_or_bad_names_fails(model_dir: Path) -> None:
    store = _store(model_dir)
    with pytest.raises(StoreError, match="not in the store"):
        store.activate("m", "1", "0" * 64)
    with pytest.raises(InvalidRequest):
        store.activate("../etc", "1", store.put_bytes(b"x"))
    with pytest.raises(InvalidRequest):
        store.activate("m", "../1", store.put_bytes(b"y"))


def test_unreadable_pointer_does_not_hide_other_models(model_dir: Path) -> None:
    store = _store(model_dir)
    store.activate("good", "1", store.put_bytes(b"g"))
    (model_dir / "models" / "bad.json").write_text("{not json")
    assert set(store.records()) == {"good"}


_WRITER = """
import sys, time
from pathlib import Path
from edge_module.store import ModelStore
store = ModelStore(Path(sys.argv[1]))
store.open()
with store.temp_file() as (path, handle):
    handle.write(b"new-version-" * 1000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_old_version_active(model_dir: Path) -> None:
    store = _store(model_dir)
    old = store.put_bytes(b"old-version")
    store.activate("m", "1", old)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(model_dir)], stdout=subprocess.PIPE, env={**os.environ}
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == b"writing"
    assert any((model_dir / "tmp").iterdir())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    restarted = _store(model_dir)
    record = restarted.get("m")
    assert record is not None and record.active.version == "1"
    assert restarted.read_blob(record.active.sha256) == b"old-version"
    assert list((model_dir / "tmp").iterdir()) == []


_POINTER_HAMMER = """
import sys
from pathlib import Path
from edge_module.store import ModelStore
store = ModelStore(Path(sys.argv[1]))
store.open()
a, b = store.put_bytes(b"A" * 4096), store.put_bytes(b"B" * 4096)
print("ready", flush=True)
i = 0
while True:
    store.activate("m", str(i % 2), a if i % 2 == 0 else b)
    i += 1
"""


@pytest.mark.slow
def test_kill_during_pointer_updates_never_leaves_a_broken_pointer(model_dir: Path) -> None:
    for attempt in range(5):
        writer = subprocess.Popen([sys.executable, "-c", _POINTER_HAMMER, str(model_dir)], stdout=subprocess.PIPE)
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + attempt * 0.03)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        store = _store(model_dir)
        record = store.get("m")
        assert record is not None, "the pointer must always exist after the first activation"
        assert store.read_blob(record.active.sha256) in (b"A" * 4096, b"B" * 4096)
