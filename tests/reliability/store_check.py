"""What "nothing lost or corrupted in the store" means, checked from outside the module."""

from __future__ import annotations

from pathlib import Path

from edge_module.store import ModelStore


def assert_store_intact(root: Path, active: dict[str, str], settled: bool = True) -> None:
    """Every pointer names blobs whose bytes hash to their names; ``active`` maps model -> active version.

    ``settled`` (no update in progress): no partial files in tmp/ or partial/ and no blob that no pointer names.
    """
    store = ModelStore(root)  # not open(): that would clean up the very leftovers we look for
    records = store.records()
    assert {name: record.active.version for name, record in records.items()} == active
    named: set[str] = set()
    for record in records.values():
        for entry in [record.active, *record.versions, *([record.previous] if record.previous else [])]:
            store.read_blob(entry.sha256)  # raises StoreError when missing or corrupt
            named.add(entry.sha256)
    if settled:
        assert sorted(p.name for p in (root / "tmp").iterdir()) == []
        partial = root / "partial"
        assert not partial.exists() or sorted(p.name for p in partial.iterdir()) == []
        assert {p.name for p in (root / "blobs").iterdir()} == named
