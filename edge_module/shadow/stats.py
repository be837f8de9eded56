"""Comparison figures of one shadow against the active version on the same requests."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

WINDOW = 10_000  # recent samples kept for the percentiles; counts and means cover the whole life


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _percentile(values: deque[float], q: float) -> float | None:
    return float(np.percentile(np.fromiter(values, float), q)) if values else None


class ShadowStats:
    """Comparison counts and distributions, kept in the shadow worker (the module counts what it mirrored
    and dropped: ``mirror.Shadow``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.compared = 0
        self.errors = 0
        self.labelled = 0  # rows whose labels were compared
        self.agreed = 0
        self._diff_sum = 0.0
        self._diff_count = 0
        self._diff_max = 0.0
        self._diffs: deque[float] = deque(maxlen=WINDOW)
        self._shadow_ms: deque[float] = deque(maxlen=WINDOW)
        self._active_ms: deque[float] = deque(maxlen=WINDOW)

    def record_error(self) -> None:
        with self._lock:
            self.errors += 1

    def record(
        self,
        active: Mapping[str, np.ndarray],
        shadow: Mapping[str, np.ndarray],
        active_ms: float,
        shadow_ms: float,
    ) -> None:
        """Compare the outputs both versions produce: labels by equality, numbers by absolute difference."""
        labelled = agreed = 0
        diffs: list[np.ndarray] = []
        for name, ours in active.items():
            theirs = shadow.get(name)
            if theirs is None or theirs.shape != ours.shape:
                continue
            if ours.dtype.kind in "iubUSO":
                rows = ours.reshape(ours.shape[0], -1) if ours.ndim else ours.reshape(1, -1)
                other = theirs.reshape(rows.shape)
                same = np.all(rows == other, axis=1)
                labelled += int(same.size)
                agreed += int(same.sum())
            elif ours.dtype.kind == "f":
                diffs.append(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).ravel())
        flat = np.concatenate(diffs) if diffs else np.empty(0)
        with self._lock:
            self.compared += 1
            self.labelled += labelled
            self.agreed += agreed
            if flat.size:
                self._diff_sum += float(flat.sum())
                self._diff_count += int(flat.size)
                self._diff_max = max(self._diff_max, float(flat.max()))
                self._diffs.extend(flat.tolist()[-WINDOW:])
            self._active_ms.append(active_ms)
            self._shadow_ms.append(shadow_ms)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "compared": self.compared,
                "agreement": self.agreed / self.labelled if self.labelled else None,
                "meanAbsDiff": self._diff_sum / self._diff_count if self._diff_count else None,
                "p99AbsDiff": _percentile(self._diffs, 99),
                "maxAbsDiff": self._diff_max if self._diff_count else None,
                "shadowP50Ms": _percentile(self._shadow_ms, 50),
                "shadowP99Ms": _percentile(self._shadow_ms, 99),
                "activeP50Ms": _percentile(self._active_ms, 50),
                "activeP99Ms": _percentile(self._active_ms, 99),
                "errors": self.errors,
            }
