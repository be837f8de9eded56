"""Run an arm64 image on an amd64 host under qemu-user, with the one kernel file emulation gets wrong.

qemu-user translates an arm64 program's instructions and system calls, but the files the kernel writes are the
host's: inside the container `/proc/cpuinfo` is the x86 text ("vendor_id : AuthenticAMD", no "CPU part").
onnxruntime's CPU detection (the pytorch/cpuinfo library, run by the binding's static initialisers) reads the
processor lists in `/sys/devices/system/cpu/{possible,present}`, then each processor's MIDR from `/proc/cpuinfo`.
With both mounted, as `buildah run` mounts them, and the x86 text in `/proc/cpuinfo`, `import onnxruntime` dies
with SIGSEGV inside `dlopen` (measured with 1.28.0, 1.31.1 and 1.32.0 under Debian bookworm's qemu-user 7.2; see
docs/images.md#onnxruntime-under-qemu-user). With an arm64 `/proc/cpuinfo` it imports and infers.

A real arm64 device needs none of this: its kernel writes `/proc/cpuinfo` in the arm64 form (from the CPUs'
MIDR registers) and sysfs lists its processors, so the image ships nothing for it. Here the container is given
what such a kernel shows for the CPU qemu emulates: qemu is pinned to a Cortex-A72 (`QEMU_CPU`, the Raspberry
Pi 4's core) and that CPU's `/proc/cpuinfo` is bind-mounted over the host's. `buildah run --isolation chroot`
mounts `/proc` after the volumes, so a volume cannot cover `/proc/cpuinfo`: the command starts as root in a
mount namespace of its own, binds the file, then drops to the image's user (and its HOME) and the default
capability bounding set (`setpriv`, util-linux) before it execs the image's command: the same uid, gids,
capabilities, HOME and working directory as a plain `buildah run`, with QEMU_CPU added to the environment.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

QEMU_CPU = "cortex-a72"
# What Linux shows for one Cortex-A72 core (MIDR 0x410fd083) with the hardware capabilities qemu 7.2 gives its
# cortex-a72 model (AT_HWCAP 0x8fb); BogoMIPS is the generic timer's rate, which cpuinfo does not read.
CORTEX_A72 = (
    "BogoMIPS\t: 108.00\n"
    "Features\t: fp asimd aes pmull sha1 sha2 crc32 cpuid\n"
    "CPU implementer\t: 0x41\n"
    "CPU architecture: 8\n"
    "CPU variant\t: 0x0\n"
    "CPU part\t: 0xd08\n"
    "CPU revision\t: 3\n"
)
CPUINFO_IN_CONTAINER = "/run/emulated-cpuinfo"
# HOME as `buildah run` sets it for the image's user, which it would otherwise set for root.
BIND_THEN_DROP = (
    'mount --bind "$1" /proc/cpuinfo && user=$2 && shift 2'
    ' && home=$(getent passwd "${user%:*}" | cut -d: -f6) && export HOME="${home:-/}"'
    ' && exec setpriv --reuid "${user%:*}" --regid "${user#*:}" --clear-groups --bounding-set -sys_admin -- "$@"'
)
# Deadlines under instruction translation: the arm64 module took 7 to 9 s to be ready against 1.3 to 4.3 s for
# the amd64 one natively (same 2-core host); 10x leaves room for a loaded machine.
EMULATED_PATIENCE = 10.0
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class RunSetup:
    """How `buildah run` starts a command in the image: extra options, a command prefix, and a time factor."""

    options: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    patience: float = 1.0

    @property
    def emulated(self) -> bool:
        return self.patience > 1.0


NATIVE = RunSetup()


def cpuinfo(processors: int) -> str:
    """`/proc/cpuinfo` of an arm64 Linux kernel on `processors` Cortex-A72 cores."""
    return "".join(f"processor\t: {index}\n{CORTEX_A72}\n" for index in range(processors))


def possible_processors(sysfs_list: str) -> int:
    """How many processors a kernel cpulist such as "0-1" or "0,2-5" numbers (the highest index plus one)."""
    highest = max(int(part.split("-")[-1]) for part in sysfs_list.strip().split(","))
    return highest + 1


def emulated_user(image_user: str) -> str:
    uid, _, gid = image_user.partition(":")
    if not (uid.isdigit() and gid.isdigit()):
        raise ValueError(f"the image user must be numeric uid:gid to run under emulation, got {image_user!r}")
    return f"{uid}:{gid}"


@contextmanager
def run_setup(architecture: str, image_user: str) -> Iterator[RunSetup]:
    """NATIVE when the host runs `architecture` itself; for arm64 on another host, the qemu-user setup above."""
    if MACHINES.get(architecture) == platform.machine():
        yield NATIVE
        return
    if architecture != "arm64":
        raise ValueError(f"no emulation setup for {architecture} images on a {platform.machine()} host")
    user = emulated_user(image_user)
    processors = possible_processors(Path("/sys/devices/system/cpu/possible").read_text())
    with tempfile.TemporaryDirectory(prefix="emulated-cpuinfo-") as directory:
        path = Path(directory) / "cpuinfo"
        path.write_text(cpuinfo(processors))
        path.chmod(0o444)
        yield RunSetup(
            options=(
                *("--user", "0:0", "--cap-add", "CAP_SYS_ADMIN"),
                *("--volume", f"{path}:{CPUINFO_IN_CONTAINER}:ro", "--env", f"QEMU_CPU={QEMU_CPU}"),
            ),
            prefix=("unshare", "--mount", "--", "sh", "-c", BIND_THEN_DROP, "sh", CPUINFO_IN_CONTAINER, user),
            patience=EMULATED_PATIENCE,
        )
