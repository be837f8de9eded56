"""How much memory the module may still use: its cgroup's limit minus its working set, else the host's.

A container's memory limit is its cgroup's: cgroup v2 ``memory.max`` and ``memory.current``, or v1
``memory.limit_in_bytes`` and ``memory.usage_in_bytes``. Usage counts page cache the kernel reclaims before it
OOM-kills anyone, so the working set is usage minus ``inactive_file`` (what ``docker stats`` and the kubelet
show). Every limited ancestor up to the mount root counts, and never more than the host's ``MemAvailable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # v1 reports "no limit" as a page-rounded LONG_MAX
MIB = 1024 * 1024


@dataclass(frozen=True)
class Headroom:
    available: int  # bytes the module may still allocate
    limit: int | None  # the binding limit, None when only the host bounds it
    used: int  # the working set under that limit (0 when only the host bounds it)
    source: str  # "cgroup v2 <path>", "cgroup v1 <path>" or "host"

    def describe(self) -> str:
        if self.limit is None:
            return f"{self.available / MIB:.0f} MiB available on the host"
        used, limit = self.used / MIB, self.limit / MIB
        return f"{self.available / MIB:.0f} MiB available ({used:.0f} of {limit:.0f} MiB used, {self.source})"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= NO_LIMIT else value


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def host_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and v1 memory-controller path, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _levels(mount: Path, path: str) -> list[Path]:
    """The cgroup directory and its ancestors up to the mount root (inside a container: its namespace root)."""
    levels = []
    current = mount / path.lstrip("/")
    while True:
        if current.is_dir():
            levels.append(current)
        if current == mount or mount not in current.parents:
            break
        current = current.parent
    return levels


def headroom(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup"), meminfo: Path = Path("/proc/meminfo")
) -> Headroom:
    host = host_available(meminfo)
    best = Headroom(host, None, 0, "host")
    v2, v1 = _own_cgroups(proc_cgroup)
    candidates: list[tuple[Path, str, str, str, str]] = []
    if v2 is not None and (root / "cgroup.controllers").exists() and "memory" in _controllers(root):
        candidates += [
            (level, "memory.max", "memory.current", "inactive_file", "cgroup v2") for level in _levels(root, v2)
        ]
    if v1 is not None:
        mount = root / "memory"
        candidates += [
            (level, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file", "cgroup v1")
            for level in _levels(mount, v1)
        ]
    for level, limit_file, usage_file, inactive_key, kind in candidates:
        limit = _read_int(level / limit_file)
        usage = _read_int(level / usage_file)
        if limit is None or usage is None:
            continue
        working_set = max(usage - _stat(level / "memory.stat", inactive_key), 0)
        available = max(limit - working_set, 0)
        if available < best.available:
            best = Headroom(available, limit, working_set, f"{kind} {level}")
    return best


def _controllers(root: Path) -> list[str]:
    try:
        return (root / "cgroup.controllers").read_text().split()
    except OSError:
        return []
