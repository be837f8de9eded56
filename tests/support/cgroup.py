"""A real memory cgroup for a test's processes: cgroup v2 where the memory controller is on the unified
hierarchy, else v1's memory controller. Needs root; elsewhere the tests skip (and fail under CI)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")


def _skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)


class MemoryCgroup:
    """Create with ``MemoryCgroup.create()``; ``enter_command`` runs a command inside it."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @classmethod
    def create(cls) -> MemoryCgroup:
        if os.geteuid() != 0:
            _skip("memory cgroup tests need root (CI runs as root)")
        name = f"edge-test-{uuid.uuid4().hex[:8]}"
        controllers = ROOT / "cgroup.controllers"
        try:
            if controllers.exists() and "memory" in controllers.read_text().split():
                (ROOT / "cgroup.subtree_control").write_text("+memory")
                path = ROOT / name
                path.mkdir()
                return cls(path, 2)
            v1 = ROOT / "memory"
            if (v1 / "memory.limit_in_bytes").exists():
                path = v1 / name
                path.mkdir()
                return cls(path, 1)
        except OSError as exc:
            _skip(f"cannot create a memory cgroup here: {exc}")
        _skip("no memory cgroup controller is mounted under /sys/fs/cgroup")
        raise AssertionError("unreachable")

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def enter_command(self) -> list[str]:
        """A prefix that moves the process into this cgroup, then execs the rest of the command line."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs)]

    def set_limit(self, limit: int) -> None:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        (self.path / name).write_text(str(limit))

    def working_set(self) -> int:
        usage = int((self.path / ("memory.current" if self.version == 2 else "memory.usage_in_bytes")).read_text())
        key = "inactive_file" if self.version == 2 else "total_inactive_file"
        stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        return usage - int(stat.get(key, 0))

    def oom_kills(self) -> int:
        events = self.path / ("memory.events" if self.version == 2 else "memory.oom_control")
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def close(self) -> None:
        parent = self.path.parent / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in self.procs.read_text().split():
                with contextlib.suppress(OSError):
                    parent.write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()
