"""Data capture for retraining: sampled inputs and predictions in a bounded on-disk ring.

The request path draws one random number and, when sampled, queues references (O(1)). ``drain`` turns
the queue into JSON lines and is run in a worker thread, off the event loop. The ring is a folder of
segment files ``capture-<seq>.jsonl``; the oldest segments are deleted so the folder never holds more
than ``budget_bytes``.

One record per row: ``{"_model", "_version", "_time", <feature>: value, ..., "prediction": value}``.
``python -m cloud train --data <capture folder> --target prediction`` reads them (cloud/data.py), and so
does anything that reads JSON lines.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge_module.runtime import OnnxModel

log = logging.getLogger(__name__)
PENDING_REQUESTS = 1024
SEGMENT_PATTERN = re.compile(r"^capture-(\d{12})\.jsonl$")
META_KEYS = ("_model", "_version", "_time")


@dataclass(frozen=True)
class _Sample:
    model: str
    version: str
    features: tuple[str, ...]
    inputs: Mapping[str, np.ndarray]
    results: Mapping[str, np.ndarray]
    time: float


def _feature_names(model: OnnxModel) -> tuple[str, ...]:
    return tuple(f.name for f in model.metadata.features)


def _rows(sample: _Sample) -> list[dict[str, Any]]:
    """One dict per row: named features (a single [N, F] tensor is split by the model's feature names)."""
    arrays = sample.inputs
    batch = next(iter(arrays.values())).shape[0] if arrays else 0
    columns: dict[str, np.ndarray] = {}
    if len(arrays) == 1 and sample.features:
        (tensor,) = arrays.values()
        if tensor.ndim == 2 and tensor.shape[1] == len(sample.features):
            columns = {name: tensor[:, i] for i, name in enumerate(sample.features)}
    if not columns:
        for name, array in arrays.items():
            flat = array.reshape(batch, -1)
            if flat.shape[1] == 1:
                columns[name] = flat[:, 0]
            else:
                for j in range(flat.shape[1]):
                    columns[f"{name}_{j}"] = flat[:, j]
    prediction = _prediction(sample.results, batch)
    if prediction is not None:
        columns["prediction"] = prediction
    names = list(columns)
    # tolist() converts a whole column to Python values in C; a per-value loop would cost far more.
    values = [_plain(column) for column in columns.values()]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sample.time))
    meta = {"_model": sample.model, "_version": sample.version, "_time": stamp}
    return [{**meta, **dict(zip(names, row, strict=True))} for row in zip(*values, strict=True)]


def _prediction(results: Mapping[str, np.ndarray], batch: int) -> np.ndarray | None:
    """The first output with one value per row: the label of a classifier, the value of a regressor."""
    for array in results.values():
        if array.shape[:1] == (batch,) and array.reshape(batch, -1).shape[1] == 1:
            return array.reshape(batch)
    return None


def _plain(column: np.ndarray) -> list[Any]:
    """JSON-ready values: numbers as numbers (NaN becomes null in orjson), bytes as text."""
    values: list[Any] = column.tolist()
    if column.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    return values


class CaptureRing:
    """The on-disk ring. Thread-safe: the writer runs in a worker thread, the forwarder reads segments."""

    def __init__(self, directory: Path, budget_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        self.segment_bytes = segment_bytes or max(4096, min(budget_bytes // 8, 192 * 1024))
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        self._current: int | None = None
        self.dropped = 0
        self.written = 0
        self._opened = False

    def _open(self) -> None:
        if self._opened:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.iterdir():
            match = SEGMENT_PATTERN.match(path.name)
            if match:
                self._sizes[int(match.group(1))] = path.stat().st_size
        self._opened = True
        self._evict(0)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def _path(self, seq: int) -> Path:
        return self.directory / f"capture-{seq:012d}.jsonl"

    def _evict(self, incoming: int) -> None:
        while self._sizes and self.total_bytes + incoming > self.budget_bytes:
            oldest = min(self._sizes)
            self._path(oldest).unlink(missing_ok=True)
            del self._sizes[oldest]
            if oldest == self._current:
                self._current = None

    def append(self, lines: list[bytes]) -> None:
        with self._lock:
            self._open()
            for line in lines:
                size = len(line)
                if size > self.segment_bytes:
                    self.dropped += 1
                    continue
                current = self._current
                if current is None or self._sizes[current] + size > self.segment_bytes:
                    current = self._current = (max(self._sizes) + 1) if self._sizes else 1
                    self._sizes[current] = 0
                self._evict(size)
                if self._current is None:  # evicted the segment being written: start a new one
                    current = self._current = (max(self._sizes) + 1) if self._sizes else 1
                    self._sizes[current] = 0
                with self._path(current).open("ab") as segment:
                    segment.write(line)
                self._sizes[current] += size
                self.written += 1

    def closed_segments(self) -> list[Path]:
        """Full segments, oldest first: ready to forward."""
        with self._lock:
            self._open()
            return [self._path(seq) for seq in sorted(self._sizes) if seq != self._current]

    def remove(self, path: Path) -> None:
        with self._lock:
            match = SEGMENT_PATTERN.match(path.name)
            if match:
                self._sizes.pop(int(match.group(1)), None)
            path.unlink(missing_ok=True)


class DataCapture:
    """Samples requests at ``rate`` (0 = off); ``observe`` is the data plane observer."""

    def __init__(self, ring: CaptureRing, rate: float = 0.0, seed: int | None = None) -> None:
        self.ring = ring
        self.rate = rate
        self._random = random.Random(seed).random
        self._pending: deque[_Sample] = deque(maxlen=PENDING_REQUESTS)

    def observe(
        self,
        model: OnnxModel,
        inputs: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        queue_ns: int,
        compute_ns: int,
        total_ns: int,
    ) -> None:
        if self.rate <= 0.0 or self._random() >= self.rate:
            return
        self._pending.append(_Sample(model.name, model.version, _feature_names(model), inputs, results, time.time()))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def drain(self) -> int:
        """Write what was sampled (blocking file I/O: call it in a worker thread). Returns records written."""
        lines: list[bytes] = []
        while self._pending:
            sample = self._pending.popleft()
            try:
                rows = _rows(sample)
            except (ValueError, IndexError) as exc:  # an odd tensor layout is skipped, never fatal
                log.debug("capture skipped a request of %s: %s", sample.model, exc)
                continue
            lines.extend(orjson.dumps(row) + b"\n" for row in rows)
        if lines:
            self.ring.append(lines)
        return len(lines)
