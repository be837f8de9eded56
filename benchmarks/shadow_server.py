"""``python -m benchmarks.shadow_server --model NAME=PATH [--shadow PATH]``: the module serving one model, with
a shadow of it installed at start (the benchmark's stand-in for a twin's desired ``shadows.<name>``).

Settings come from the environment (``EDGE_*``), as for ``python -m edge_module``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from edge_module.module import EdgeModule, build_module
from edge_module.server import serve
from edge_module.settings import Settings

log = logging.getLogger("benchmarks.shadow_server")


async def _install(module: EdgeModule, name: str, path: Path) -> None:
    await module.started.wait()
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    await module.shadows.install(name, "shadow", sha256, str(path))
    log.warning("shadow of %s installed", name)


async def _main(name: str, model: Path, shadow: Path | None) -> None:
    module = build_module(Settings(), {name: model})
    installing = asyncio.create_task(_install(module, name, shadow)) if shadow is not None else None
    try:
        await serve(module)
    finally:
        if installing is not None:
            installing.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shadow_server", description=__doc__)
    parser.add_argument("--model", required=True, help="NAME=PATH of the active model")
    parser.add_argument("--shadow", type=Path, help="the shadow model's file (same inputs)")
    args = parser.parse_args(argv)
    name, _, path = args.model.partition("=")
    asyncio.run(_main(name, Path(path), args.shadow))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
