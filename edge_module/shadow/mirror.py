"""Mirroring: after the active version answered, its inputs and outputs go to the shadow worker process.

The hot path pickles the request into one frame and writes it to a non-blocking pipe (``pipe_bytes``
deep): a full pipe drops the mirror (counted), it never waits. The worker (``worker.py``) runs at idle
CPU priority in its own process, so a busy module starves the shadow, never the other way round, and a
candidate that crashes takes only the worker down (its shadows are reported failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import random
import subprocess
import sys
import termios
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_module.errors import EdgeError
from edge_module.runtime import OnnxModel
from edge_module.shadow.frames import FrameReader, WorkerGone, encode, pack, unpack, write_all
from edge_module.shadow.stats import utc_now

log = logging.getLogger(__name__)
PIPE_BYTES = 1 << 20
PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is all or nothing
PENDING_CAPTURES = 256


class ShadowFailed(EdgeError):
    """The shadow could not be installed, or its worker process ended."""


@dataclass
class Shadow:
    name: str
    version: str
    since: str = field(default_factory=utc_now)
    mirrored: int = 0
    dropped: int = 0
    figures: dict[str, Any] = field(default_factory=dict)  # the worker's latest comparison figures
    failure: str | None = None

    def report(self) -> dict[str, Any]:
        return {**self.figures, "mirrored": self.mirrored, "dropped": self.dropped, "since": self.since}


class ShadowMirror:
    """The module's side of the shadows: the worker process, the pipe, and the figures it sends back."""

    def __init__(
        self, intra_op_threads: int = 1, sample_rate: float = 1.0, pipe_bytes: int = PIPE_BYTES, seed: int | None = None
    ) -> None:
        self.intra_op_threads = intra_op_threads
        self.sample_rate = sample_rate
        self._random = random.Random(seed).random
        self.pipe_bytes = pipe_bytes
        self.shadows: dict[str, Shadow] = {}  # installed: mirrored on the hot path
        self.ended: dict[str, Shadow] = {}  # stopped by the worker's end, until reported
        self.priority: str | None = None  # the worker's scheduling, once it said
        # DataCapture.complete: a captured request waits for the shadow's outputs of the same rows.
        self.complete_capture: Callable[[Any, dict[str, np.ndarray] | None], None] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._capacity = 0
        self._write = threading.Lock()
        self._answers: dict[tuple[str, str], asyncio.Future[tuple[Any, ...]]] = {}
        self._captures: OrderedDict[int, Any] = OrderedDict()
        self._capture_ids = itertools.count(1)
        self._taken: object | None = None
        self._state = threading.Lock()

    # -- the worker process ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def _start(self) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_module.shadow.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert process.stdin is not None and process.stdout is not None
        fd = process.stdin.fileno()
        with contextlib.suppress(OSError):  # past /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, self.pipe_bytes)
        self._capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        os.set_blocking(fd, False)
        self._process, self._fd = process, fd
        threading.Thread(target=self._read, args=(process,), name="shadow-reader", daemon=True).start()

    def _stop(self) -> None:
        process, self._process, self._fd = self._process, None, -1
        if process is None:
            return
        # A frame being finished off the hot path waits for a worker that may be stopped: do not wait long.
        acquired = self._write.acquire(timeout=5)
        try:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
        finally:
            if acquired:
                self._write.release()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        reader = FrameReader(process.stdout.fileno())
        try:
            while True:
                self._dispatch(reader.read())
        except WorkerGone:
            pass
        finally:
            process.stdout.close()
        code = process.wait()
        if process is self._process:  # not stopped by us
            with self._write:
                self._process, self._fd = None, -1
                with contextlib.suppress(OSError):
                    assert process.stdin is not None
                    process.stdin.close()
            self._worker_ended(f"the shadow worker process ended ({_exit_reason(code)})")

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "stats":
            for name, (version, figures) in message[1].items():
                shadow = self.shadows.get(name)
                if shadow is not None and shadow.version == version:
                    shadow.figures = figures
        elif kind == "captured":
            self._complete(message[1], None if message[2] is None else unpack(message[2]))
        elif kind in ("installed", "failed"):
            future = self._answers.pop((message[1], message[2]), None)
            if future is not None:
                future.get_loop().call_soon_threadsafe(_settle, future, message)
        elif kind == "ready":
            self.priority = message[1]

    def _worker_ended(self, reason: str) -> None:
        log.error("%s; %d shadow(s) stopped", reason, len(self.shadows))
        for shadow in self.shadows.values():
            shadow.failure = reason
        self.ended.update(self.shadows)
        self.shadows = {}
        for key, future in list(self._answers.items()):
            self._answers.pop(key, None)
            future.get_loop().call_soon_threadsafe(_settle, future, ("failed", *key, reason))
        with self._state:
            pending = list(self._captures)
        for capture_id in pending:
            self._complete(capture_id, None)

    # -- installing and removing -----------------------------------------------------------------

    async def install(self, name: str, version: str, sha256: str, path: str) -> list[dict[str, Any]]:
        """Load the shadow in the worker; returns its input specs. Raises ``ShadowFailed``."""
        self.shadows.pop(name, None)
        if self._process is None or self._process.poll() is not None:
            await asyncio.to_thread(self._start)
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._answers[(name, version)] = future
        try:
            await self._send_control(("install", name, version, sha256, path, self.intra_op_threads))
            answer = await future
        finally:
            self._answers.pop((name, version), None)
        if answer[0] == "failed":
            raise ShadowFailed(answer[3])
        self.shadows[name] = Shadow(name, version)  # one reference swap: the hot path sees it or not
        inputs: list[dict[str, Any]] = answer[3]
        return inputs

    async def remove(self, name: str) -> Shadow | None:
        """Stop mirroring ``name``; the worker process ends with its last shadow, freeing its memory."""
        shadow = self.shadows.pop(name, None)
        if self._process is None:
            return shadow
        if self.shadows or self._answers:
            await self._send_control(("remove", name))
        else:
            await asyncio.to_thread(self._stop)
        return shadow

    async def _send_control(self, message: tuple[Any, ...]) -> None:
        frame = encode(message)
        try:
            await asyncio.to_thread(self._write_blocking, frame)
        except WorkerGone as exc:
            raise ShadowFailed(f"the shadow worker process is gone: {exc}") from exc

    def _write_blocking(self, frame: bytes) -> None:
        with self._write:
            if self._fd < 0:
                raise WorkerGone("not running")
            write_all(self._fd, frame)

    def close(self) -> None:
        self.shadows = {}
        self._stop()

    # -- the hot path -----------------------------------------------------------------------------

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
        """A data-plane observer: O(request size), never raises, never blocks."""
        if self._taken is inputs:  # the capture observer already mirrored this request
            self._taken = None
            return
        shadow = self.shadows.get(model.name)
        if shadow is not None and (self.sample_rate >= 1.0 or self._random() < self.sample_rate):
            self._mirror(shadow, inputs, results, total_ns, None)

    def take_capture(self, sample: Any, total_ns: int) -> bool:
        """DataCapture's hook for a sampled request: mirror it now, asking the worker for its outputs, and
        hold the record until they come. False: no shadow, or the mirror was dropped (record it as is).
        A captured request is always mirrored, whatever the sample rate: captures are rare, and their rows are
        the ones the cloud can study side by side."""
        shadow = self.shadows.get(sample.model)
        if shadow is None:
            return False
        self._taken = sample.inputs
        capture_id = next(self._capture_ids)
        with self._state:
            self._captures[capture_id] = sample
            evicted = self._captures.popitem(last=False) if len(self._captures) > PENDING_CAPTURES else None
        if evicted is not None:
            self._complete(evicted[0], None, evicted[1])
        if self._mirror(shadow, sample.inputs, sample.results, total_ns, capture_id):
            return True
        with self._state:
            self._captures.pop(capture_id, None)
        return False

    def _mirror(
        self,
        shadow: Shadow,
        inputs: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        total_ns: int,
        capture_id: int | None,
    ) -> bool:
        if not self._write.acquire(blocking=False):  # a control message or a long frame is being written
            shadow.dropped += 1
            return False
        handed_off = False
        try:
            job = ("job", shadow.name, shadow.version, pack(inputs), pack(results), total_ns / 1e6, capture_id)
            frame = encode(job)
            if len(frame) > PIPE_BUF and _unread(self._fd) + len(frame) > self._capacity:
                shadow.dropped += 1
                return False
            written = os.write(self._fd, frame)
            shadow.mirrored += 1
            if written < len(frame):  # a long frame only partly fitted: finish it off the hot path
                threading.Thread(target=self._finish, args=(frame[written:],), daemon=True).start()
                handed_off = True
            return True
        except OSError:  # full (BlockingIOError), or the worker is gone: its reader reports that
            shadow.dropped += 1
            return False
        finally:
            if not handed_off:
                self._write.release()

    def _finish(self, rest: bytes) -> None:
        try:
            with contextlib.suppress(WorkerGone):
                write_all(self._fd, rest)
        finally:
            self._write.release()

    def _complete(self, capture_id: int, outputs: dict[str, np.ndarray] | None, sample: Any = None) -> None:
        if sample is None:
            with self._state:
                sample = self._captures.pop(capture_id, None)
        if sample is not None and self.complete_capture is not None:
            self.complete_capture(sample, outputs)

    # -- figures -----------------------------------------------------------------------------------

    def report(self, name: str) -> dict[str, Any] | None:
        shadow = self.shadows.get(name)
        return None if shadow is None else shadow.report()


def _unread(fd: int) -> int:
    buffer = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buffer)
    return int.from_bytes(buffer, sys.byteorder)


def _settle(future: asyncio.Future[tuple[Any, ...]], message: tuple[Any, ...]) -> None:
    if not future.done():
        future.set_result(message)


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            import signal

            return f"killed by {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"
