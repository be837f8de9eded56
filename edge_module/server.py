"""One event loop runs everything: HTTP, and (later) twin sync and telemetry. It owns the signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from edge_module.module import EdgeModule, build_module
from edge_module.settings import Settings
from edge_module.tls import TLSConfigError, start_tls

if TYPE_CHECKING:
    from edge_module.grpc.server import GrpcServer

log = logging.getLogger(__name__)

# Background services started beside HTTP (twin sync, telemetry...). Each runs until cancelled.
Service = Callable[[EdgeModule], Coroutine[Any, Any, None]]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Our loop owns SIGTERM/SIGINT so HTTP and the background services stop together.
        yield


def _uvicorn_config(module: EdgeModule) -> uvicorn.Config:
    settings = module.settings
    config = uvicorn.Config(
        module.app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=settings.access_log,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=64 * 1024,
        # Beyond this many open connections uvicorn answers 503: slow or idle clients stay bounded.
        limit_concurrency=settings.max_connections,
    )
    config.load()
    # Our own live context (edge_module/tls.py), so a renewed certificate is served without a restart.
    config.ssl = module.tls.context if module.tls is not None else None
    return config


async def serve(module: EdgeModule, services: tuple[Service, ...] = (), stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; then stop everything together."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    renewer = await start_tls(module.settings, module.tls) if module.tls is not None else None
    grpc_server = await _start_grpc(module)
    server = _Server(_uvicorn_config(module))
    http_task = asyncio.create_task(server.serve(), name="http")
    # Serving starts before models load: liveness answers at once, readiness follows the first model.
    startup = asyncio.create_task(module.start(), name="startup")
    background = [
        asyncio.create_task(service(module), name=getattr(service, "__name__", "service")) for service in services
    ]
    if renewer is not None:
        background.append(asyncio.create_task(renewer.run(), name="tls-renewal"))
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait({http_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if http_task in done and not stop.is_set():
            http_task.result()  # surfaces a bind failure
    finally:
        server.should_exit = True
        for task in (startup, stopper, *background):
            task.cancel()
        await asyncio.gather(startup, stopper, *background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await http_task
        if grpc_server is not None:
            await grpc_server.stop()
        module.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        log.info("edge module stopped")


async def _start_grpc(module: EdgeModule) -> GrpcServer | None:
    """The gRPC endpoint when EDGE_GRPC_PORT is set; its modules are imported only then."""
    if module.settings.grpc_port is None:
        return None
    from edge_module.grpc.server import GrpcServer

    return await GrpcServer.start(module)


def run(settings: Settings, extra_models: dict[str, Path] | None = None, services: tuple[Service, ...] = ()) -> int:
    """Serve until stopped; the exit code (1 when HTTPS could not get a certificate)."""
    module = build_module(settings, extra_models)
    try:
        import uvloop

        runner: Callable[..., None] = uvloop.run
    except ImportError:  # uvloop has no Windows build
        runner = asyncio.run
    try:
        runner(serve(module, services))
    except TLSConfigError as exc:
        log.error("cannot serve HTTPS: %s", exc)
        module.close()
        return 1
    return 0
