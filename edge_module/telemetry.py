"""Telemetry upstream: a compact periodic summary for edgeHub output ``metrics``, within IoT Hub's size limit.

The twin service provides the ``Sender`` (it owns the IoT Hub client); without one (standalone mode)
summaries are still built, for the status page, and nothing is sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

import orjson

from edge_module.metrics import Metrics, _resident_bytes, histogram_delta, latency_percentiles

# IoT Hub caps a device-to-cloud message at 256 KB; keep a wide margin for properties and encoding.
MAX_MESSAGE_BYTES = 256 * 1024
TARGET_BYTES = 192 * 1024
TOP_FEATURES = 5
OUTPUT_METRICS = "metrics"
OUTPUT_CAPTURE = "capture"


class Sender(Protocol):
    """Sends a UTF-8 JSON body to an output (``contentType`` application/json, ``contentEncoding`` utf-8), with
    optional application properties and message id; returns once edgeHub acknowledged it, raises otherwise."""

    def __call__(
        self, output: str, body: bytes, properties: Mapping[str, str] | None = None, message_id: str | None = None
    ) -> Awaitable[None]: ...


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TelemetryBuilder:
    """Builds summaries of what happened since the previous one (counts and latency percentiles)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._counts: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._histograms: dict[tuple[str, str], list[int]] = {}
        self._last = time.monotonic()
        self._next: tuple[dict[tuple[str, str], tuple[int, int, int]], dict[tuple[str, str], list[int]], float] | None
        self._next = None

    def build(
        self, drift: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None, advance: bool = True
    ) -> dict[str, Any]:
        now = time.monotonic()
        models: dict[str, dict[str, Any]] = {}
        for name, served in sorted(self.metrics.repository.snapshot().items()):
            models[name] = {"activeVersion": served.active.version, "sha256": served.active.sha256, "versions": {}}
        counts: dict[tuple[str, str], tuple[int, int, int]] = {}
        histograms: dict[tuple[str, str], list[int]] = {}
        for key, stats in self.metrics.stats.items():
            current = (stats.counts["success"], stats.counts["fail"], stats.inference_count)
            before = self._counts.get(key, (0, 0, 0))
            child = self.metrics.request_seconds.children.get(key)
            buckets = child.snapshot()[0] if child else []
            delta = histogram_delta(buckets, self._histograms.get(key)) if buckets else []
            counts[key], histograms[key] = current, buckets
            entry = models.setdefault(key[0], {"activeVersion": None, "versions": {}})
            entry["versions"][key[1]] = {
                "requests": current[0] - before[0],
                "failures": current[1] - before[1],
                "inferences": current[2] - before[2],
                "latencyMs": latency_percentiles(delta) if delta else {"p50": None, "p95": None, "p99": None},
            }
        for name, summary in drift.items():
            if name in models:
                features = sorted(summary["features"].items(), key=lambda item: -item[1]["psi"])[:TOP_FEATURES]
                models[name]["drift"] = {
                    "version": summary["version"],
                    "psiMax": summary["psi_max"],
                    "feature": summary["feature"],
                    "outOfRangeMax": summary["out_of_range_max"],
                    "drifted": summary["drifted"],
                    "rows": summary["rows"],
                    "top": {k: v["psi"] for k, v in features},
                }
        times = os.times()
        body: dict[str, Any] = {
            "type": "edge-metrics",
            "time": utc_now(),
            "periodSeconds": round(now - self._last, 3),
            "uptimeSeconds": round(self.metrics.uptime_seconds, 1),
            "process": {"cpuSeconds": round(times.user + times.system, 3), "rssBytes": _resident_bytes()},
            "models": models,
            **(extra or {}),
        }
        self._next = (counts, histograms, now)
        if advance:
            self.commit()
        return body

    def commit(self) -> None:
        """The last summary was delivered: the next one starts where it ended (else it covers both periods)."""
        if self._next is not None:
            self._counts, self._histograms, self._last = self._next
            self._next = None


def encode_bounded(summary: dict[str, Any], limit: int = TARGET_BYTES) -> bytes:
    """JSON within ``limit`` bytes: drop per-feature detail first, then the quietest models."""
    payload = orjson.dumps(summary)
    if len(payload) <= limit:
        return payload
    models: dict[str, dict[str, Any]] = summary["models"]
    for entry in models.values():
        if "drift" in entry:
            entry["drift"].pop("top", None)
    payload = orjson.dumps(summary)
    if len(payload) <= limit:
        return payload
    ranked = sorted(models, key=lambda n: -sum(v["requests"] for v in models[n]["versions"].values()))
    kept = dict(models)
    while len(payload) > limit and kept:
        kept.pop(ranked.pop())
        summary = {**summary, "models": kept, "truncatedModels": len(models) - len(kept)}
        payload = orjson.dumps(summary)
    return payload
