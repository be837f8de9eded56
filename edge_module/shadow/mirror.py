"""Mirroring: after the active version answered, its inputs go to the shadow through a bounded queue.

The hot path only does ``put_nowait``; a full queue drops the mirror (counted), never waits. One worker
thread runs the shadows and compares, so a slow shadow costs dropped mirrors, not client latency.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edge_module.runtime import OnnxModel
from edge_module.shadow.stats import ShadowStats

log = logging.getLogger(__name__)
DEFAULT_QUEUE = 256


@dataclass
class Shadow:
    model: OnnxModel
    stats: ShadowStats = field(default_factory=ShadowStats)


_Job = tuple[Shadow, dict[str, np.ndarray], dict[str, np.ndarray], int]


class ShadowMirror:
    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self.shadows: dict[str, Shadow] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._worker: threading.Thread | None = None

    def install(self, name: str, model: OnnxModel) -> Shadow:
        shadow = Shadow(model)
        self.shadows[name] = shadow  # one reference swap: the hot path sees the old or the new one
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="shadow-mirror", daemon=True)
            self._worker.start()
        return shadow

    def remove(self, name: str) -> Shadow | None:
        return self.shadows.pop(name, None)

    def observe(
        self,
        model: OnnxModel,
        inputs: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        queue_ns: int,
        compute_ns: int,
        total_ns: int,
        correlation_id: str,
    ) -> None:
        """A data-plane observer: O(1), never raises, never blocks."""
        shadow = self.shadows.get(model.name)
        if shadow is None:
            return
        try:
            self._queue.put_nowait((shadow, inputs, results, total_ns))
        except queue.Full:
            shadow.stats.count_dropped()
            return
        shadow.stats.count_mirrored()

    def close(self) -> None:
        if self._worker is not None:
            # A full queue: the daemon thread ends with the process.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def wait_idle(self, timeout: float) -> bool:
        """True once every mirrored request was compared (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._compare(*job)
            finally:
                self._queue.task_done()

    def _compare(
        self, shadow: Shadow, inputs: dict[str, np.ndarray], active: dict[str, np.ndarray], active_ns: int
    ) -> None:
        started = time.perf_counter_ns()
        try:
            outputs = shadow.model.run(inputs, [name for name in active if name in shadow.model.output_names])
        except Exception as exc:  # the shadow's failure is a figure, never the client's problem
            shadow.stats.record_error()
            log.debug("shadow %s version %s failed: %s", shadow.model.name, shadow.model.version, exc)
            return
        elapsed = time.perf_counter_ns() - started
        shadow.stats.record(active, outputs, active_ns / 1e6, elapsed / 1e6)
