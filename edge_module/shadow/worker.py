"""The shadow worker: a child process that runs shadow versions on mirrored requests and compares them.

It runs at the ``SCHED_IDLE`` scheduling class, so it only gets CPU time no serving thread wants, and in a
process of its own, so a shadow never holds the module's GIL and a crashing candidate never takes the
active version with it. Messages (``frames``), module -> worker:

- ``("install", name, version, sha256, path, intra_op_threads)``: load and warm up; answered with
  ``("installed", name, version, inputs)`` or ``("failed", name, version, message)``;
- ``("remove", name)``;
- ``("job", name, version, inputs, active_outputs, active_ms, capture_id)``: run and compare; a job with
  a ``capture_id`` is answered with ``("captured", capture_id, outputs or None)``.

Worker -> module, besides the answers: ``("stats", {name: (version, figures)})`` at most every
``STATS_SECONDS`` while figures change.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from edge_module.shadow.frames import FrameBuffer, Packed, WorkerGone, encode, pack, unpack, write_all

log = logging.getLogger("edge_module.shadow.worker")
STATS_SECONDS = 0.5
IDLE_MIN_SECONDS = 0.002
IDLE_MAX_SECONDS = 0.05
READ_BYTES = 1 << 20


def lower_priority() -> str:
    """Run only on CPU time nothing else wants (threads started later inherit it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        try:
            os.nice(19)
            return "nice 19"
        except OSError:
            return "normal"


@dataclass
class _Running:
    model: Any  # edge_module.runtime.OnnxModel, imported after the priority is lowered
    stats: Any  # edge_module.shadow.stats.ShadowStats
    changed: bool = True


class Worker:
    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.shadows: dict[str, _Running] = {}
        self._stats_sent = 0.0

    def send(self, *message: Any) -> None:
        write_all(self.out_fd, encode(message))

    def serve(self) -> None:
        """Poll the pipe rather than block on it: a reader blocked on a pipe is woken by every write, and
        that wake-up is paid by the module's serving thread, once per mirrored request. Polling, the module
        only copies bytes; the worker gulps whatever arrived every few milliseconds."""
        frames = FrameBuffer()
        idle = IDLE_MIN_SECONDS
        while True:
            try:
                chunk = os.read(self.in_fd, READ_BYTES)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                raise WorkerGone("end of stream")
            if chunk:
                for message in frames.feed(chunk):
                    self.handle(message)
                idle = IDLE_MIN_SECONDS
            else:
                time.sleep(idle)
                idle = min(idle * 2, IDLE_MAX_SECONDS)
            if time.monotonic() - self._stats_sent >= STATS_SECONDS:
                self.send_stats()

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "job":
            self.job(*message[1:])
        elif kind == "install":
            self.install(*message[1:])
        elif kind == "remove":
            self.shadows.pop(message[1], None)

    def install(self, name: str, version: str, sha256: str, path: str, intra_op_threads: int) -> None:
        from edge_module.errors import EdgeError
        from edge_module.runtime import OnnxModel, SessionConfig
        from edge_module.shadow.stats import ShadowStats

        self.shadows.pop(name, None)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            model = OnnxModel(name, version, sha256, data, SessionConfig(intra_op_threads=intra_op_threads))
            model.warm_up()
        except (EdgeError, OSError) as exc:
            self.send("failed", name, version, exc.message if isinstance(exc, EdgeError) else f"i/o error: {exc}")
            return
        self.shadows[name] = _Running(model, ShadowStats())
        self.send("installed", name, version, [spec.as_dict() for spec in model.inputs])

    def job(
        self,
        name: str,
        version: str,
        packed_inputs: Packed,
        packed_active: Packed,
        active_ms: float,
        capture_id: int | None,
    ) -> None:
        inputs, active = unpack(packed_inputs), unpack(packed_active)
        running = self.shadows.get(name)
        if running is None or running.model.version != version:  # removed or replaced since it was sent
            if capture_id is not None:
                self.send("captured", capture_id, None)
            return
        outputs = None
        started = time.perf_counter_ns()
        try:
            wanted = [output for output in active if output in running.model.output_names]
            outputs = running.model.run(inputs, wanted)
        except Exception as exc:  # the shadow's failure is a figure, never the client's problem
            running.stats.record_error()
            log.debug("shadow %s version %s failed: %s", name, version, exc)
        else:
            running.stats.record(active, outputs, active_ms, (time.perf_counter_ns() - started) / 1e6)
        running.changed = True
        if capture_id is not None:
            self.send("captured", capture_id, None if outputs is None else pack(outputs))

    def send_stats(self) -> None:
        changed = {name: running for name, running in self.shadows.items() if running.changed}
        self._stats_sent = time.monotonic()
        if not changed:
            return
        for running in changed.values():
            running.changed = False
        self.send("stats", {name: (running.model.version, running.stats.report()) for name, running in changed.items()})


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="shadow worker: %(message)s")
    # Frames go out on a private copy of stdout; anything else that prints goes to stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    priority = lower_priority()
    log.info("running at %s priority", priority)
    os.set_blocking(0, False)
    worker = Worker(0, out_fd)
    worker.send("ready", priority)
    try:
        worker.serve()
    except WorkerGone:  # the module closed the pipe: it is done with the shadows, or gone
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
