"""What the arm64 image is given under qemu-user: the kernel's arm64 /proc/cpuinfo, and nothing on a native host."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest

from tests.container.emulation import (
    CPUINFO_IN_CONTAINER,
    NATIVE,
    QEMU_CPU,
    cpuinfo,
    emulated_user,
    possible_processors,
    run_setup,
)

# The fields pytorch/cpuinfo's arm Linux parser reads for each processor, in the kernel's spelling.
MIDR_FIELDS = ("CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision")


def fields(block: str) -> dict[str, str]:
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}


def test_the_cpuinfo_is_what_an_arm64_kernel_shows_for_each_cortex_a72_core() -> None:
    blocks = [block for block in cpuinfo(4).split("\n\n") if block.strip()]

    assert [fields(block)["processor"] for block in blocks] == ["0", "1", "2", "3"]
    for block in blocks:
        found = fields(block)
        midr = (
            int(found["CPU implementer"], 16) << 24
            | int(found["CPU variant"], 16) << 20
            | 0xF << 16  # the architecture field of an Armv8 MIDR
            | int(found["CPU part"], 16) << 4
            | int(found["CPU revision"])
        )
        assert midr == 0x410FD083  # Cortex-A72 r0p3, the model qemu's cortex-a72 CPU reports
        assert found["CPU architecture"] == "8"
        assert set(found["Features"].split()) == {"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"}
        assert all(re.search(rf"^{name}\s*: ", block, re.MULTILINE) for name in MIDR_FIELDS)


@pytest.mark.parametrize(("cpulist", "count"), [("0\n", 1), ("0-1\n", 2), ("0,2-5", 6), ("0-3,8-11\n", 12)])
def test_the_processor_count_follows_the_kernel_cpulist(cpulist: str, count: int) -> None:
    assert possible_processors(cpulist) == count


def test_the_image_user_must_be_numeric_to_drop_to_it() -> None:
    assert emulated_user("10001:10001") == "10001:10001"
    for user in ("edge", "10001", "", "root:root"):
        with pytest.raises(ValueError, match="numeric uid:gid"):
            emulated_user(user)


def test_a_native_host_runs_the_image_as_it_is() -> None:
    native = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())
    if native is None:
        pytest.skip(f"no image architecture for a {platform.machine()} host")
    with run_setup(native, "10001:10001") as setup:
        assert setup == NATIVE
        assert not setup.emulated


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulating arm64 needs a host of another architecture")
def test_an_arm64_image_on_amd64_gets_the_cpuinfo_bind_and_drops_to_the_image_user() -> None:
    with run_setup("arm64", "10001:10001") as setup:
        volume = setup.options[setup.options.index("--volume") + 1]
        source = Path(volume.split(":")[0])
        written = source.read_text()
        assert volume.endswith(f":{CPUINFO_IN_CONTAINER}:ro")
        assert f"QEMU_CPU={QEMU_CPU}" in setup.options
        assert setup.prefix[:2] == ("unshare", "--mount")
        assert setup.prefix[-2:] == (CPUINFO_IN_CONTAINER, "10001:10001")
        assert setup.emulated
    assert written.count("processor\t:") == possible_processors(Path("/sys/devices/system/cpu/possible").read_text())
    assert not source.exists()
    with pytest.raises(ValueError, match="no emulation setup"), run_setup("s390x", "10001:10001"):
        pass
