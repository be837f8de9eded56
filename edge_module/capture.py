"""Data capture: sampled inputs and outputs, one JSON record per row, in a bounded on-disk ring.

The request path draws one random number and, when sampled, queues references (O(1)). ``drain`` turns
the queue into JSON lines and runs in a worker thread, off the event loop. The ring is a folder of
segment files ``capture-<seq>.jsonl``; the oldest segments are deleted so the folder never holds more
than ``budget_bytes``. A segment is due for sending once it is full or its oldest record is older than
the flush interval; it leaves the ring only when the send was acknowledged (``remove``).

One record per row (docs/data-loop.md, "Capture")::

    {"correlationId": "...", "row": 0, "deviceId": "...", "model": "...", "version": "...",
     "time": "2026-12-04T15:30:00.123Z", "inputs": {<feature>: value, ...}, "outputs": {<output>: value, ...}}

``(correlationId, row)`` is the join key for labels: ``row`` is the row's index in its request.
``shadowOutputs`` (same shape as ``outputs``) is added when a shadow model ran on the same row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge_module.runtime import OnnxModel

log = logging.getLogger(__name__)
PENDING_REQUESTS = 1024
SEGMENT_PATTERN = re.compile(r"^capture-(\d{12})\.jsonl$")
# IoT Hub caps a device-to-cloud message at 256 KB; a segment is one message, with room for its properties.
MAX_SEGMENT_BYTES = 192 * 1024
RECORD_KEYS = ("correlationId", "row", "deviceId", "model", "version", "time", "inputs", "outputs")
DROP_REASONS = ("budget", "oversize", "queue")


def device_id(configured: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The device a record comes from: IoT Edge's ``IOTEDGE_DEVICEID``, else the ``DeviceId`` of IoT Edge dev
    mode's connection string, else ``EDGE_DEVICE_ID`` (``configured``), else the host name."""
    env = os.environ if environ is None else environ
    if env.get("IOTEDGE_DEVICEID"):
        return env["IOTEDGE_DEVICEID"]
    for part in env.get("EdgeHubConnectionString", "").split(";"):
        key, _, value = part.partition("=")
        if key.strip() == "DeviceId" and value.strip():
            return value.strip()
    return configured or socket.gethostname()


@dataclass(frozen=True)
class _Sample:
    model: str
    version: str
    features: tuple[str, ...]
    inputs: Mapping[str, np.ndarray]
    results: Mapping[str, np.ndarray]
    time: float
    correlation_id: str
    # Hook for shadow releases: the shadow's outputs for the same rows, when one ran.
    shadow_results: Mapping[str, np.ndarray] | None = None


def _feature_names(model: OnnxModel) -> tuple[str, ...]:
    return tuple(f.name for f in model.metadata.features)


def _batch(arrays: Mapping[str, np.ndarray]) -> int:
    for array in arrays.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _input_columns(sample: _Sample, batch: int) -> dict[str, list[Any]]:
    """Per feature name, one value per row. A single [N, F] tensor is split by the model's feature names;
    other tensors are named by their input (a scalar per row, or the row's values as a list)."""
    arrays = sample.inputs
    if len(arrays) == 1 and sample.features:
        (tensor,) = arrays.values()
        if tensor.ndim == 2 and tensor.shape[1] == len(sample.features):
            # tolist() converts a whole column in C; a per-value loop would cost far more.
            return {name: _plain(tensor[:, i]) for i, name in enumerate(sample.features)}
    return {name: _per_row(array, batch) for name, array in arrays.items()}


def _output_columns(results: Mapping[str, np.ndarray], batch: int) -> dict[str, list[Any]]:
    """Per output name, one value per row; an output without a row per input row (rare) is left out."""
    return {
        name: _per_row(array, batch)
        for name, array in results.items()
        if isinstance(array, np.ndarray) and (array.shape[:1] == (batch,) or (array.ndim == 0 and batch == 1))
    }


def _per_row(array: np.ndarray, batch: int) -> list[Any]:
    """A scalar per row when each row holds one value, else the row's values as (nested) lists."""
    if array.ndim == 0 or array.size == batch:
        return _plain(array.reshape(batch))
    return _plain(array)


def _plain(column: np.ndarray) -> list[Any]:
    """JSON-ready values: numbers as numbers (NaN becomes null in orjson), bytes as text."""
    values: list[Any] = column.tolist()
    return _texts(values) if column.dtype == object else values


def _texts(values: Any) -> Any:
    if isinstance(values, list):
        return [_texts(v) for v in values]
    return values.decode("utf-8", "replace") if isinstance(values, bytes) else values


def utc_iso(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds: ``2026-12-04T15:30:00.123Z``."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def records(sample: _Sample, device: str) -> list[dict[str, Any]]:
    """The capture records of one request, one per row (see the module docstring)."""
    batch = _batch(sample.inputs)
    inputs = _input_columns(sample, batch)
    outputs = _output_columns(sample.results, batch)
    shadow = _output_columns(sample.shadow_results, batch) if sample.shadow_results is not None else None
    stamp = utc_iso(sample.time)
    in_names, out_names = list(inputs), list(outputs)
    in_rows = zip(*inputs.values(), strict=True) if inputs else iter([()] * batch)
    out_rows = zip(*outputs.values(), strict=True) if outputs else iter([()] * batch)
    result: list[dict[str, Any]] = []
    for row, (in_row, out_row) in enumerate(zip(in_rows, out_rows, strict=True)):
        record: dict[str, Any] = {
            "correlationId": sample.correlation_id,
            "row": row,
            "deviceId": device,
            "model": sample.model,
            "version": sample.version,
            "time": stamp,
            "inputs": dict(zip(in_names, in_row, strict=True)),
            "outputs": dict(zip(out_names, out_row, strict=True)),
        }
        if shadow is not None:
            record["shadowOutputs"] = {name: values[row] for name, values in shadow.items()}
        result.append(record)
    return result


@dataclass
class _Segment:
    size: int = 0
    records: int = 0
    opened: float = 0.0  # time.monotonic() of its first record (0 for segments found on disk: all closed)


class CaptureRing:
    """The on-disk ring. Thread-safe: the writer runs in a worker thread, the forwarder reads segments."""

    def __init__(self, directory: Path, budget_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        self.segment_bytes = min(segment_bytes or max(4096, budget_bytes // 8), MAX_SEGMENT_BYTES)
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._current: int | None = None
        self._next_seq = 0
        self.written = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._opened = False

    def _open(self) -> None:
        if self._opened:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.iterdir()):
            match = SEGMENT_PATTERN.match(path.name)
            if match:
                self._segments[int(match.group(1))] = _recover(path)
        self._opened = True
        self._evict(0)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total()

    @property
    def segments(self) -> int:
        with self._lock:
            return len(self._segments)

    def _total(self) -> int:
        return sum(segment.size for segment in self._segments.values())

    def _path(self, seq: int) -> Path:
        return self.directory / f"capture-{seq:012d}.jsonl"

    def _evict(self, incoming: int) -> None:
        """Delete the oldest segments until ``incoming`` more bytes fit the budget, counting their records."""
        total = self._total()
        while self._segments and total + incoming > self.budget_bytes:
            oldest = min(self._segments)
            segment = self._segments.pop(oldest)
            self._path(oldest).unlink(missing_ok=True)
            total -= segment.size
            self.dropped["budget"] += segment.records
            if oldest == self._current:
                self._current = None

    def _new_segment(self) -> int:
        # Never reuses a number in this process: a segment being sent is never confused with a newer one.
        seq = self._next_seq = max(self._next_seq, max(self._segments, default=0)) + 1
        self._segments[seq] = _Segment(opened=time.monotonic())
        self._current = seq
        return seq

    def append(self, lines: list[bytes]) -> None:
        """Write records (each one JSON line), starting a new segment whenever the current one is full."""
        with self._lock:
            self._open()
            batch: list[bytes] = []
            for line in lines:
                size = len(line)
                if size > self.segment_bytes:
                    self.dropped["oversize"] += 1
                    continue
                current = self._current
                if current is None or self._segments[current].size + size > self.segment_bytes:
                    self._write(batch)
                    current = self._new_segment()
                self._evict(size)
                if self._current is None:  # evicted the segment being written: start a new one
                    self._write(batch)
                    current = self._new_segment()
                batch.append(line)
                segment = self._segments[current]
                segment.size += size
                segment.records += 1
                self.written += 1
            self._write(batch)

    def _write(self, batch: list[bytes]) -> None:
        """The lines counted into the current segment since the last write, appended in one call."""
        if batch and self._current is not None:
            with self._path(self._current).open("ab") as handle:
                handle.write(b"".join(batch))
        batch.clear()

    def due_segments(self, max_age: float) -> list[Path]:
        """Segments to send, oldest first: every closed one, and the current one once its oldest record is
        ``max_age`` seconds old (it is closed then; the next record starts a new segment)."""
        with self._lock:
            self._open()
            current = self._current
            if current is not None and time.monotonic() - self._segments[current].opened >= max_age:
                self._current = None
            return [self._path(seq) for seq in sorted(self._segments) if seq != self._current]

    def remove(self, path: Path) -> None:
        """The segment was delivered: delete it."""
        with self._lock:
            match = SEGMENT_PATTERN.match(path.name)
            if match:
                self._segments.pop(int(match.group(1)), None)
            path.unlink(missing_ok=True)


def _recover(path: Path) -> _Segment:
    """A segment left by an earlier run: closed, its records counted; a line cut by a crash is cut off."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
        log.warning("capture segment %s ended in a partial record (a crash?): %d bytes cut", path, len(data) - end)
    return _Segment(size=end, records=data.count(b"\n", 0, end))


class DataCapture:
    """Samples requests at ``rate`` (0 = off); ``observe`` is the data plane observer."""

    def __init__(self, ring: CaptureRing, rate: float = 0.0, device: str = "", seed: int | None = None) -> None:
        self.ring = ring
        self.rate = rate
        self.device = device or device_id()
        self._random = random.Random(seed).random
        self._pending: deque[_Sample] = deque()
        # Shadow releases: takes a sampled request to add the shadow's outputs, then calls ``complete``.
        self.shadow_hook: Callable[[_Sample, int], bool] | None = None

    def observe(
        self,
        model: OnnxModel,
        inputs: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        queue_ns: int,
        compute_ns: int,
        total_ns: int,
        correlation_id: str = "",
    ) -> None:
        if self.rate <= 0.0 or self._random() >= self.rate:
            return
        sample = _Sample(model.name, model.version, _feature_names(model), inputs, results, time.time(), correlation_id)
        if self.shadow_hook is not None and self.shadow_hook(sample, total_ns):
            return
        self._queue(sample)

    def complete(self, sample: _Sample, shadow_results: Mapping[str, np.ndarray] | None) -> None:
        """A sample the shadow hook took, with the shadow's outputs (None: the shadow did not run)."""
        self._queue(sample if shadow_results is None else dataclasses.replace(sample, shadow_results=shadow_results))

    def _queue(self, sample: _Sample) -> None:
        pending = self._pending
        if len(pending) >= PENDING_REQUESTS:  # the writer is behind: drop the oldest, counted
            self._drop_oldest()
        pending.append(sample)

    def _drop_oldest(self) -> None:
        with contextlib.suppress(IndexError):  # drain emptied it meanwhile
            self.ring.dropped["queue"] += _batch(self._pending.popleft().inputs)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def drain(self) -> int:
        """Write what was sampled (blocking file I/O: call it in a worker thread). Returns records written."""
        lines: list[bytes] = []
        while self._pending:
            sample = self._pending.popleft()
            try:
                rows = records(sample, self.device)
            except (ValueError, IndexError) as exc:  # an odd tensor layout is skipped, never fatal
                log.debug("capture skipped a request of %s: %s", sample.model, exc)
                continue
            lines.extend(orjson.dumps(row) + b"\n" for row in rows)
        if lines:
            self.ring.append(lines)
        return len(lines)
