"""The test harness's own guard: a module whose picked port was taken meanwhile is started on another one."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

import tests.support.server as server
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow


def test_a_port_taken_before_the_module_binds_it_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = int(squatter.getsockname()[1])
        picks = iter([taken])
        real_free_port = server.free_port
        # The first pick is the squatted port, as when another process binds it between pick and start.
        monkeypatch.setattr(server, "free_port", lambda: next(picks, None) or real_free_port())
        with ModuleProcess(tmp_path / "store") as module:
            assert module.port != taken
            assert httpx.get(f"{module.url}/v2/health/ready", timeout=10).status_code == 200
    assert "address already in use" in (tmp_path / f"module-{taken}.log").read_text()


def test_a_port_taken_by_another_module_is_not_mistaken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet test's race: two modules pick the same free port; the other one answers health checks."""
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    with ModuleProcess(tmp_path / "a" / "store") as first:
        picks = iter([first.port])
        real_free_port = server.free_port
        monkeypatch.setattr(server, "free_port", lambda: next(picks, None) or real_free_port())
        with ModuleProcess(tmp_path / "b" / "store") as second:
            assert second.port != first.port
            assert second.process is not None and second.process.poll() is None
            assert httpx.get(f"{second.url}/v2/health/ready", timeout=10).status_code == 200
    assert "address already in use" in (tmp_path / "b" / f"module-{first.port}.log").read_text()
