"""The few buildah operations the image tests need (vfs storage and chroot isolation, as scripts/build-image)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.container.emulation import NATIVE, RunSetup

BUILDAH = ("buildah", "--storage-driver", "vfs")


def buildah(*args: str, timeout: float = 300) -> str:
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class ImageInfo:
    ref: str
    architecture: str
    config: dict[str, Any]
    layer_sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """Uncompressed size: the sum of the layer tarballs' sizes, as a registry or `docker image ls` counts it."""
        return sum(self.layer_sizes)

    @property
    def command(self) -> list[str]:
        return [*(self.config.get("Entrypoint") or []), *(self.config.get("Cmd") or [])]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])


def inspect_image(ref: str) -> ImageInfo:
    data = json.loads(buildah("inspect", "--type", "image", ref))
    manifest = json.loads(data["Manifest"])
    docker = data["Docker"]
    return ImageInfo(
        ref=ref,
        architecture=docker["architecture"],
        config=docker["config"],
        layer_sizes=tuple(int(layer["size"]) for layer in manifest["layers"]),
    )


@dataclass(frozen=True)
class Container:
    name: str
    rootfs: Path
    setup: RunSetup = NATIVE

    def run_args(self, command: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        """`buildah run` of a command inside the container, as the image's user, sharing the host's network."""
        env_args = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        options = [*self.setup.options, *env_args]
        return [*BUILDAH, "run", "--isolation", "chroot", *options, self.name, "--", *self.setup.prefix, *command]

    def run(
        self, command: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_args(command, env), capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def container(ref: str, setup: RunSetup = NATIVE) -> Iterator[Container]:
    name = buildah("from", "--pull=never", ref).strip()
    try:
        yield Container(name, Path(buildah("mount", name).strip()), setup)
    finally:
        buildah("rm", name)
