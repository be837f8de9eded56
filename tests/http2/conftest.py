"""Fixtures shared by the HTTP/2 tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_module.grpc.server import GrpcServer
from edge_module.module import build_module
from edge_module.settings import Settings
from tests.support.misbehaving_models import slow_iris


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    """A model that runs in the thread pool: its calls really wait."""
    model = tmp_path / "slow.onnx"
    model.write_bytes(slow_iris("1"))
    settings = Settings(model_dir=tmp_path / "store", host="127.0.0.1", serve_default_model=False, grpc_port=0)
    module = build_module(settings, {"iris": model})
    await module.start()
    assert not module.dataplane.repository.get("iris", None).runs_inline
    server = await GrpcServer.start(module)
    try:
        yield server
    finally:
        await server.stop(0)
        module.close()
