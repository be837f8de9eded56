"""The memory headroom reader on cgroup file trees laid out as the kernel lays them out (v2 and v1), and
EDGE_KEEP_LOADED in the real module. The real-limit end-to-end test is tests/reliability/test_memory_budget.py."""

from __future__ import annotations

import base64
from pathlib import Path

from edge_module.memory import MIB, headroom
from tests.support.inprocess import ADMIN_TOKEN, running_module
from tests.support.models import iris_classifier

MEMINFO = "MemTotal:       24683744 kB\nMemFree:        20000000 kB\nMemAvailable:   23000000 kB\n"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_limit_minus_the_working_set(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(
        root,
        {
            "cgroup.controllers": "cpuset cpu io memory pids\n",
            "system.slice/docker-abc.scope/memory.max": f"{512 * MIB}\n",
            "system.slice/docker-abc.scope/memory.current": f"{300 * MIB}\n",
            "system.slice/docker-abc.scope/memory.stat": f"anon 1\ninactive_file {100 * MIB}\nactive_file 5\n",
            "system.slice/memory.max": "max\n",
            "system.slice/memory.current": f"{900 * MIB}\n",
        },
    )
    (tmp_path / "cgroup-self").write_text("0::/system.slice/docker-abc.scope\n")
    (tmp_path / "meminfo").write_text(MEMINFO)
    room = headroom(root, tmp_path / "cgroup-self", tmp_path / "meminfo")
    assert room.limit == 512 * MIB and room.used == 200 * MIB and room.available == 312 * MIB
    assert room.source.startswith("cgroup v2") and "312 MiB available (200 of 512 MiB used" in room.describe()


def test_the_tighter_of_a_nested_limit_and_the_host_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(
        root,
        {
            "cgroup.controllers": "memory\n",
            "a/memory.max": f"{4096 * MIB}\n",
            "a/memory.current": f"{3900 * MIB}\n",
            "a/b/memory.max": "max\n",
            "a/b/memory.current": f"{10 * MIB}\n",
        },
    )
    (tmp_path / "self").write_text("0::/a/b\n")
    (tmp_path / "meminfo").write_text(MEMINFO)
    room = headroom(root, tmp_path / "self", tmp_path / "meminfo")
    assert room.available == 196 * MIB and room.limit == 4096 * MIB  # the parent's limit binds
    (tmp_path / "meminfo").write_text("MemAvailable:   102400 kB\n")
    host_bound = headroom(root, tmp_path / "self", tmp_path / "meminfo")
    assert host_bound.available == 100 * MIB and host_bound.limit is None and host_bound.source == "host"


def test_cgroup_v1_memory_controller_and_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(
        root,
        {
            "memory/docker/abc/memory.limit_in_bytes": f"{256 * MIB}\n",
            "memory/docker/abc/memory.usage_in_bytes": f"{200 * MIB}\n",
            "memory/docker/abc/memory.stat": f"cache 1\ntotal_inactive_file {50 * MIB}\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/memory.usage_in_bytes": f"{5000 * MIB}\n",
        },
    )
    (tmp_path / "self").write_text("5:devices:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    (tmp_path / "meminfo").write_text(MEMINFO)
    room = headroom(root, tmp_path / "self", tmp_path / "meminfo")
    assert room.available == 106 * MIB and room.source.startswith("cgroup v1")
    (root / "memory/docker/abc/memory.limit_in_bytes").write_text("9223372036854771712\n")
    unlimited = headroom(root, tmp_path / "self", tmp_path / "meminfo")
    assert unlimited.source == "host" and unlimited.available == 23_000_000 * 1024


async def test_keep_loaded_bounds_the_versions_in_memory_not_on_disk(model_dir: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with running_module(model_dir, keep_loaded=1, keep_versions=3) as (module, client):
        for version in ("1", "2", "3"):
            body = {
                "parameters": {
                    f"file:{version}/model.onnx": base64.b64encode(
                        iris_classifier(version, 5 + int(version)).onnx
                    ).decode()
                }
            }
            assert (await client.post("/v2/repository/models/iris/load", json=body, headers=admin)).status_code == 200
        served = module.repository.served("iris")
        assert served is not None and list(served.versions) == ["3"]
        record = module.store.get("iris")
        assert record is not None and [v.version for v in record.versions] == ["1", "2", "3"]
        # A rollback reads the last-known-good from disk.
        report = await module.manager.rollback("iris")
        assert report.version == "2" and module.repository.served("iris").active.version == "2"  # type: ignore[union-attr]
