"""The module's ASGI app in-process, with an httpx client: the right depth for most HTTP tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from edge_module.module import EdgeModule, build_module
from edge_module.settings import Settings

ADMIN_TOKEN = "test-admin-token-0123456789"


@asynccontextmanager
async def running_module(
    model_dir: Path, extra_models: dict[str, Path] | None = None, **settings: Any
) -> AsyncIterator[tuple[EdgeModule, httpx.AsyncClient]]:
    options: dict[str, Any] = {"model_dir": model_dir, "admin_token": ADMIN_TOKEN, **settings}
    module = build_module(Settings(**options), extra_models)
    await module.start()
    transport = httpx.ASGITransport(app=module.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            yield module, client
    finally:
        module.close()
