"""Prometheus text exposition: a minimal registry with O(1) updates on the hot path.

Request counts come from the Triton-style counters the data plane keeps anyway (``InferenceStats``) and
are read only when ``/metrics`` is scraped; the hot path adds three histogram observations per request.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from edge_module.repository import ModelRepository
from edge_module.runtime import OnnxModel
from edge_module.stats import InferenceStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. Edge models answer in tens of microseconds to a few hundred milliseconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_NS = 1e-9

Labels = tuple[str, ...]
Collector = Callable[[], Iterable[str]]


class Histogram:
    """Cumulative buckets are computed at exposition; an observation increments one slot."""

    __slots__ = ("bounds", "bounds_ns", "counts", "sum", "sum_ns")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # Integer nanosecond bounds: request timings are observed without a float conversion.
        self.bounds_ns = tuple(round(bound * 1e9) for bound in self.bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.sum_ns = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_ns(self, nanoseconds: int) -> None:
        self.counts[bisect_left(self.bounds_ns, nanoseconds)] += 1
        self.sum_ns += nanoseconds

    def snapshot(self) -> tuple[list[int], float, int]:
        counts = list(self.counts)
        return counts, self.sum + self.sum_ns * _NS, sum(counts)


def quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """Linear interpolation inside the bucket holding the q-quantile (what PromQL's histogram_quantile does)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if cumulative + count >= rank and count:
            lower = bounds[index - 1] if index > 0 else 0.0
            upper = bounds[index] if index < len(bounds) else bounds[-1]
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return bounds[-1]


class HistogramFamily:
    def __init__(self, name: str, help_text: str, label_names: Labels, bounds: Sequence[float]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = label_names
        self.bounds = tuple(bounds)
        self.children: dict[Labels, Histogram] = {}

    def labels(self, *values: str) -> Histogram:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Histogram(self.bounds)
        return child

    def expose(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for values, child in sorted(self.children.items()):
            counts, total, count = child.snapshot()
            base = _label_text(self.label_names, values)
            prefix = base[:-1] + "," if base else "{"
            cumulative = 0
            for bound, bucket in zip(self.bounds, counts, strict=False):
                cumulative += bucket
                yield f'{self.name}_bucket{prefix}le="{_number(bound)}"}} {cumulative}'
            yield f'{self.name}_bucket{prefix}le="+Inf"}} {count}'
            yield f"{self.name}_sum{base} {_number(total)}"
            yield f"{self.name}_count{base} {count}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)) + "}"


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def sample(name: str, value: float, names: Sequence[str] = (), values: Sequence[str] = ()) -> str:
    return f"{name}{_label_text(names, values)} {_number(value)}"


def header(name: str, kind: str, help_text: str) -> Iterable[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


class Metrics:
    """The module's metrics. ``observe_inference`` is the data plane observer; the rest runs at scrape time."""

    def __init__(self, stats: InferenceStats, repository: ModelRepository) -> None:
        self.stats = stats
        self.repository = repository
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        model_version = ("model", "version")
        self.request_seconds = HistogramFamily(
            "edge_inference_request_duration_seconds",
            "End-to-end duration of successful inference requests (decode, queue, run, encode).",
            model_version,
            LATENCY_BUCKETS,
        )
        self.queue_seconds = HistogramFamily(
            "edge_inference_queue_duration_seconds",
            "Time successful requests waited for a dynamic batch.",
            model_version,
            LATENCY_BUCKETS,
        )
        self.compute_seconds = HistogramFamily(
            "edge_inference_compute_duration_seconds",
            "onnxruntime time of successful requests.",
            model_version,
            LATENCY_BUCKETS,
        )
        self.load_seconds = HistogramFamily(
            "edge_model_load_duration_seconds",
            "Reading, loading and warming up one model version.",
            ("model",),
            LOAD_BUCKETS,
        )
        self.swap_seconds = HistogramFamily(
            "edge_model_swap_duration_seconds",
            "From an activation request to the new version serving (vetting, load, warm-up, persist, swap).",
            ("model",),
            LOAD_BUCKETS,
        )
        # One lookup per request for the three histograms of a model version.
        self._timings: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}
        self.update_failures: dict[str, int] = {}
        self.collectors: list[Collector] = []

    @property
    def uptime_seconds(self) -> float:
        """Monotonic, so a wall-clock step (NTP, a dead RTC battery) cannot make it negative."""
        return time.monotonic() - self._started_monotonic

    # -- hot path ----------------------------------------------------------------------------------

    def observe_inference(
        self,
        model: OnnxModel,
        inputs: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        queue_ns: int,
        compute_ns: int,
        total_ns: int,
        correlation_id: str = "",
    ) -> None:
        timings = self._timings.get((model.name, model.version))
        if timings is None:
            timings = self._timings_for(model.name, model.version)
        request, queue, compute = timings
        request.observe_ns(total_ns)
        queue.observe_ns(queue_ns)
        compute.observe_ns(compute_ns)

    def _timings_for(self, name: str, version: str) -> tuple[Histogram, Histogram, Histogram]:
        timings = (
            self.request_seconds.labels(name, version),
            self.queue_seconds.labels(name, version),
            self.compute_seconds.labels(name, version),
        )
        self._timings[(name, version)] = timings
        return timings

    # -- model lifecycle -----------------------------------------------------------------------------

    def observe_load(self, name: str, seconds: float) -> None:
        self.load_seconds.labels(name).observe(seconds)

    def observe_swap(self, name: str, seconds: float) -> None:
        self.swap_seconds.labels(name).observe(seconds)

    def count_update_failure(self, name: str) -> None:
        self.update_failures[name] = self.update_failures.get(name, 0) + 1

    # -- exposition ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        lines: list[str] = []
        lines.extend(self._inference_counters())
        for family in (self.request_seconds, self.queue_seconds, self.compute_seconds):
            lines.extend(family.expose())
        lines.extend(self._models())
        for family in (self.load_seconds, self.swap_seconds):
            lines.extend(family.expose())
        for collect in self.collectors:
            lines.extend(collect())
        lines.extend(self._process())
        lines.append("")
        return "\n".join(lines).encode()

    def _inference_counters(self) -> Iterable[str]:
        items = sorted(self.stats.items())
        labels = ("model", "version", "outcome")
        yield from header("edge_inference_requests_total", "counter", "Inference requests by outcome.")
        for (name, version), stats in items:
            yield sample("edge_inference_requests_total", stats.counts["success"], labels, (name, version, "success"))
            yield sample("edge_inference_requests_total", stats.counts["fail"], labels, (name, version, "failure"))
        yield from header("edge_inference_count_total", "counter", "Inferences (rows across all requests' batches).")
        for (name, version), stats in items:
            yield sample("edge_inference_count_total", stats.inference_count, ("model", "version"), (name, version))
        yield from header(
            "edge_inference_executions_total", "counter", "Model executions (a merged dynamic batch counts once)."
        )
        for (name, version), stats in items:
            yield sample(
                "edge_inference_executions_total", stats.execution_count, ("model", "version"), (name, version)
            )

    def _models(self) -> Iterable[str]:
        served = sorted(self.repository.snapshot().items())
        yield from header("edge_model_info", "gauge", "The active version of each served model (always 1).")
        for name, entry in served:
            active = entry.active
            yield sample(
                "edge_model_info",
                1,
                ("model", "version", "sha256", "source"),
                (name, active.version, active.sha256, entry.source),
            )
        yield from header("edge_model_versions_loaded", "gauge", "Versions of each model held in memory.")
        for name, entry in served:
            yield sample("edge_model_versions_loaded", len(entry.versions), ("model",), (name,))
        yield from header("edge_model_update_failures_total", "counter", "Model activations that failed.")
        for name, count in sorted(self.update_failures.items()):
            yield sample("edge_model_update_failures_total", count, ("model",), (name,))

    def _process(self) -> Iterable[str]:
        times = os.times()
        yield from header("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.")
        yield sample("process_cpu_seconds_total", round(times.user + times.system, 6))
        yield from header("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
        yield sample("process_resident_memory_bytes", _resident_bytes())
        yield from header("process_start_time_seconds", "gauge", "Start time of the process since the epoch.")
        yield sample("process_start_time_seconds", round(self.started, 3))

    def percentiles(self, name: str, version: str) -> dict[str, float | None]:
        """Request latency percentiles in milliseconds since start, for the status page and telemetry."""
        child = self.request_seconds.children.get((name, version))
        return latency_percentiles(child.snapshot()[0] if child else [])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def histogram_delta(now: Sequence[int], before: Sequence[int] | None) -> list[int]:
    if before is None:
        return list(now)
    return [a - b for a, b in zip(now, before, strict=True)]


def latency_percentiles(counts: Sequence[int]) -> dict[str, float | None]:
    return {f"p{int(q * 100)}": _ms(quantile(counts, LATENCY_BUCKETS, q)) for q in (0.5, 0.95, 0.99)}


def expose_gauges(name: str, help_text: str, label_names: Labels, rows: Iterable[tuple[Labels, float]]) -> list[str]:
    return [*header(name, "gauge", help_text), *(sample(name, value, label_names, values) for values, value in rows)]
