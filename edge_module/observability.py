"""Observability parts of the module: metrics, drift, capture and telemetry, their settings and background task.

The request path reaches these only through the data plane's observers (O(1) each). Everything heavier
(binning drift windows, PSI, disk writes, telemetry) runs in ``run``, a periodic task off the request path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_module.capture import SEGMENT_PATTERN, CaptureRing, DataCapture, device_id
from edge_module.dataplane import DataPlane
from edge_module.drift import DriftMonitor
from edge_module.errors import EdgeError
from edge_module.logs import set_level
from edge_module.manager import LoadReport, ModelManager
from edge_module.metrics import Metrics, expose_gauges, header, sample
from edge_module.runtime import OnnxModel
from edge_module.settings import Settings
from edge_module.shadow import figures as shadow_figures
from edge_module.shadow.mirror import ShadowMirror
from edge_module.telemetry import OUTPUT_CAPTURE, OUTPUT_METRICS, Sender, TelemetryBuilder, encode_bounded, utc_now

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Application property on capture messages, for IoT Hub routing queries (docs/data-loop.md).
CAPTURE_PROPERTIES = {"type": "capture"}
# Desired-property keys of the twin's "observability" block.
DESIRED_KEYS = ("telemetryIntervalSeconds", "driftThreshold", "captureRate", "logLevel")


class ConfigError(ValueError):
    pass


@dataclass
class ObservabilityConfig:
    telemetry_interval: float
    drift_threshold: float
    capture_rate: float
    log_level: str

    def validated(self, desired: Mapping[str, Any]) -> ObservabilityConfig:
        """A copy with the desired values (twin keys, see DESIRED_KEYS); raises ConfigError on a bad value."""
        unknown = sorted(set(desired) - set(DESIRED_KEYS) - {"$version"})
        if unknown:
            raise ConfigError(f"unknown observability setting(s): {', '.join(unknown)}")
        config = dataclasses.replace(self)
        interval = desired.get("telemetryIntervalSeconds")
        if interval is not None:
            config.telemetry_interval = _number(interval, "telemetryIntervalSeconds", 1.0, 86400.0)
        threshold = desired.get("driftThreshold")
        if threshold is not None:
            config.drift_threshold = _number(threshold, "driftThreshold", 1e-6, 1e6)
        rate = desired.get("captureRate")
        if rate is not None:
            config.capture_rate = _number(rate, "captureRate", 0.0, 1.0)
        level = desired.get("logLevel")
        if level is not None:
            if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
                raise ConfigError(f"logLevel must be one of {', '.join(LOG_LEVELS)}")
            config.log_level = level.upper()
        return config


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


@dataclass
class UpdateRecord:
    version: str | None
    result: str  # "ok" or "failed"
    time: str
    seconds: float
    error: str | None = None


class ObservedModelManager(ModelManager):
    """The model manager, timing loads and activations and keeping each model's last update for the status page."""

    metrics: Metrics | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.updates: dict[str, UpdateRecord] = {}

    def _load_bytes(self, name: str, version: str | None, sha256: str, data: bytes) -> OnnxModel:
        started = time.perf_counter()
        model = super()._load_bytes(name, version, sha256, data)
        if self.metrics is not None:  # a rare event; the histogram's slots are plain ints under the GIL
            self.metrics.observe_load(name, time.perf_counter() - started)
        return model

    def _record(self, name: str, version: str | None, started: float, error: EdgeError | None = None) -> None:
        seconds = time.perf_counter() - started
        result = "failed" if error else "ok"
        self.updates[name] = UpdateRecord(
            version, result, utc_now(), round(seconds, 3), error.message if error else None
        )
        if self.metrics is not None:
            if error:
                self.metrics.count_update_failure(name)
            else:
                self.metrics.observe_swap(name, seconds)

    async def activate_blob(self, name: str, version: str, sha256: str) -> LoadReport:
        started = time.perf_counter()
        try:
            report = await super().activate_blob(name, version, sha256)
        except EdgeError as exc:
            self._record(name, version, started, exc)
            raise
        self._record(name, version, started)
        return report

    async def rollback(self, name: str) -> LoadReport:
        started = time.perf_counter()
        report = await super().rollback(name)
        self._record(name, report.version, started)
        return report

    async def serve_file(self, name: str, path: Path, source: str = "file") -> LoadReport:
        started = time.perf_counter()
        try:
            report = await super().serve_file(name, path, source)
        except EdgeError as exc:
            self._record(name, None, started, exc)
            raise
        self._record(name, report.version, started)
        return report


class Observability:
    def __init__(
        self, settings: Settings, dataplane: DataPlane, manager: ModelManager, shadows: ShadowMirror | None = None
    ) -> None:
        self.config = ObservabilityConfig(
            telemetry_interval=settings.telemetry_interval,
            drift_threshold=settings.drift_threshold,
            capture_rate=settings.capture_rate,
            log_level=settings.log_level,
        )
        self.metrics = Metrics(dataplane.stats, dataplane.repository)
        self.manager = manager
        if isinstance(manager, ObservedModelManager):
            manager.metrics = self.metrics
        self.drift = DriftMonitor(settings.drift_window, settings.drift_threshold, settings.drift_min_rows)
        capture_dir = settings.capture_dir or settings.model_dir / "capture"
        # Before the ring moved onto the store volume it lived beside the store; see _note_old_ring.
        self._old_capture_dir = None if settings.capture_dir else settings.model_dir.parent / "capture"
        ring = CaptureRing(capture_dir, settings.capture_budget_bytes)
        self.capture = DataCapture(ring, settings.capture_rate, device_id(settings.device_id))
        self.capture_flush_seconds = settings.capture_flush_seconds
        self.capture_sent = {"ok": 0, "failed": 0}
        self.telemetry = TelemetryBuilder(self.metrics)
        self.sender: Sender | None = None  # set by the twin service while connected to edgeHub
        self.sent = {"ok": 0, "failed": 0}
        self.last_telemetry: dict[str, Any] | None = None
        self.config_error: str | None = None
        self.metrics.collectors.append(self._expose)
        self.metrics.collectors.append(manager.guard.expose)
        self.shadows = shadows
        if shadows is not None:
            self.metrics.collectors.append(lambda: shadow_figures.expose(shadows))
            # A captured request waits for the shadow's outputs of the same rows (capture.py, shadowOutputs).
            self.capture.shadow_hook = shadows.take_capture
            shadows.complete_capture = self.capture.complete
        if settings.metrics_enabled:  # off only to measure what per-request observation costs
            dataplane.observers.extend((self.metrics.observe_inference, self.drift.observe, self.capture.observe))
        self._tasks: list[asyncio.Task[None]] = []
        self._raised: dict[str, bool] = {}
        self._ticking = asyncio.Lock()
        self._forwarding = asyncio.Lock()

    # -- configuration (twin desired properties) ----------------------------------------------------

    def apply(self, desired: Mapping[str, Any] | None) -> None:
        """Apply the twin's desired ``observability`` block; a bad block is refused whole and logged."""
        if not desired:
            return
        try:
            config = self.config.validated(desired)
        except ConfigError as exc:
            self.config_error = str(exc)
            log.error("desired observability settings refused: %s", exc)
            return
        self.config, self.config_error = config, None
        self.drift.threshold = config.drift_threshold
        self.capture.rate = config.capture_rate
        set_level(config.log_level)
        log.info("observability settings applied", extra={"observability": self.reported()})

    def reported(self) -> dict[str, Any]:
        """What is in force, in the twin's keys (for reported properties)."""
        return {
            "telemetryIntervalSeconds": self.config.telemetry_interval,
            "driftThreshold": self.config.drift_threshold,
            "captureRate": self.config.capture_rate,
            "logLevel": self.config.log_level,
            "error": self.config_error,
        }

    def drift_summaries(self) -> dict[str, dict[str, Any]]:
        """Per model: drift of its active version (``drifted`` is True past the threshold)."""
        return self.drift.summaries()

    def drift_changes(self) -> dict[str, dict[str, Any]]:
        """Blocks for reported ``models.<name>.drift`` whose raised state changed since the last report."""
        changes = {}
        for name, summary in self.drift.summaries().items():
            if summary["drifted"] != self._raised.get(name, False):
                changes[name] = {
                    "drifted": summary["drifted"],
                    "version": summary["version"],
                    "psiMax": summary["psi_max"],
                    "feature": summary["feature"],
                    "outOfRangeMax": summary["out_of_range_max"],
                    "threshold": summary["threshold"],
                    "rows": summary["rows"],
                    "updatedAt": utc_now(),
                }
        return changes

    def drift_reported(self, blocks: Mapping[str, Mapping[str, Any]]) -> None:
        """The twin delivered these drift blocks: do not report them again until their state changes."""
        for name, block in blocks.items():
            self._raised[name] = bool(block["drifted"])

    # -- background work ----------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            # Sends run apart from draining: a send waiting on an unreachable edgeHub (up to the hub call
            # timeout) must not hold up writing captured records to disk.
            self._tasks = [
                asyncio.create_task(self.run(), name="observability"),
                asyncio.create_task(self._telemetry_loop(), name="telemetry"),
                asyncio.create_task(self._forward_loop(), name="capture-forwarder"),
            ]

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            await self._drain()

    async def _telemetry_loop(self) -> None:
        last_telemetry = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            # Read each tick: the twin may change the interval at any time.
            if time.monotonic() - last_telemetry >= self.config.telemetry_interval:
                last_telemetry = time.monotonic()
                await self.send_telemetry()

    async def tick(self) -> None:
        """The periodic work at once: bin drift windows, write captured records, forward due segments."""
        await self._drain()
        await self.forward_capture()

    async def _drain(self) -> None:
        async with self._ticking:  # one drain at a time, whoever calls
            self.drift.forget(
                {name: served.active.version for name, served in self.metrics.repository.snapshot().items()}
            )
            self.drift.flush()
            if self.capture.pending:
                await asyncio.to_thread(self.capture.drain)

    async def send_telemetry(self) -> bytes:
        extra: dict[str, Any] = {"capture": self._capture_state()}
        if self.shadows is not None and self.shadows.shadows:
            extra["shadows"] = shadow_figures.summaries(self.shadows)
        summary = self.telemetry.build(self.drift_summaries(), extra, advance=False)
        self.last_telemetry = summary
        payload = encode_bounded(summary)
        if self.sender is None:
            self.telemetry.commit()
            return payload
        try:
            await self.sender(OUTPUT_METRICS, payload)
        except Exception as exc:  # edgeHub unreachable: the next summary covers this period too
            self.sent["failed"] += 1
            log.warning("telemetry not delivered: %s", exc)
        else:
            self.sent["ok"] += 1
            self.telemetry.commit()
        return payload

    async def _forward_loop(self) -> None:
        await asyncio.to_thread(self._note_old_ring)
        while True:
            await asyncio.sleep(TICK_SECONDS)
            await self.forward_capture()

    async def forward_capture(self) -> int:
        """Send the due capture segments, oldest first, to output ``capture``; returns how many were delivered.

        A segment is deleted only once edgeHub acknowledged it; a failed send keeps it (and the ones after
        it) for the next round, so delivery is at least once: a segment whose acknowledgement was lost
        (a timeout, a crash) is sent again. The segment's SHA-256 is both the message id and the
        application property ``segment`` (IoT Hub's advice for telling repeats apart: an identifier stamped
        in the application properties at the origin), the same on every resend.
        """
        sender = self.sender
        if sender is None:
            return 0
        delivered = 0
        async with self._forwarding:
            ring = self.capture.ring
            for segment in await asyncio.to_thread(ring.due_segments, self.capture_flush_seconds):
                try:
                    body = await asyncio.to_thread(segment.read_bytes)
                except FileNotFoundError:  # dropped for the budget meanwhile
                    continue
                if body:
                    digest = hashlib.sha256(body).hexdigest()
                    try:
                        await sender(OUTPUT_CAPTURE, body, {**CAPTURE_PROPERTIES, "segment": digest}, digest)
                    except Exception as exc:  # kept on disk; tried again next round
                        self.capture_sent["failed"] += 1
                        log.warning("captured data not forwarded yet: %s", exc)
                        break
                    self.capture_sent["ok"] += 1
                    delivered += 1
                await asyncio.to_thread(ring.remove, segment)
        return delivered

    def _note_old_ring(self) -> None:
        """Segments left where the ring used to live are not read any more: say so once, never fail on it."""
        old = self._old_capture_dir
        try:
            left = [path for path in old.iterdir() if SEGMENT_PATTERN.match(path.name)] if old and old.is_dir() else []
        except OSError:
            return
        if left:
            log.warning(
                "%d capture segment(s) in %s, where the ring lived before it moved onto the store volume (%s), "
                "are not forwarded; move them there to send them",
                len(left),
                old,
                self.capture.ring.directory,
            )

    def _capture_state(self) -> dict[str, Any]:
        ring = self.capture.ring
        return {
            "rate": self.capture.rate,
            "records": ring.written,
            "bytes": ring.total_bytes,
            "segments": ring.segments,
            "dropped": sum(ring.dropped.values()),
            "droppedBy": dict(ring.dropped),
            "messages": dict(self.capture_sent),
        }

    # -- exposition ---------------------------------------------------------------------------------

    def _expose(self) -> list[str]:
        summaries = self.drift.summaries()

        def per_feature(score: str) -> Iterable[tuple[tuple[str, ...], float]]:
            for name, summary in sorted(summaries.items()):
                for feature, scores in sorted(summary["features"].items()):
                    yield (name, summary["version"], feature), scores[score]

        lines = expose_gauges(
            "edge_model_drift_psi",
            "Population stability index of a feature's live window against the training profile.",
            ("model", "version", "feature"),
            per_feature("psi"),
        )
        lines += expose_gauges(
            "edge_model_drift_out_of_range_ratio",
            "Share of a feature's live values outside the training range (or unseen categories).",
            ("model", "version", "feature"),
            per_feature("out_of_range"),
        )
        lines += expose_gauges(
            "edge_model_drift_detected",
            "1 when a feature's PSI is past the drift threshold (with enough rows in the window).",
            ("model", "version"),
            (((name, s["version"]), int(s["drifted"])) for name, s in sorted(summaries.items())),
        )
        lines += expose_gauges(
            "edge_model_drift_window_rows",
            "Rows in the drift window.",
            ("model", "version"),
            (((name, s["version"]), s["rows"]) for name, s in sorted(summaries.items())),
        )
        ring = self.capture.ring
        lines += [*header("edge_capture_records_total", "counter", "Captured records written to the ring.")]
        lines.append(sample("edge_capture_records_total", ring.written))
        lines += [*header("edge_capture_bytes", "gauge", "Bytes held by the capture ring.")]
        lines.append(sample("edge_capture_bytes", ring.total_bytes))
        lines += [*header("edge_capture_segments", "gauge", "Segments in the capture ring, waiting to be sent.")]
        lines.append(sample("edge_capture_segments", ring.segments))
        lines += [
            *header(
                "edge_capture_dropped_records_total",
                "counter",
                "Captured records dropped: budget (oldest segment deleted to keep the ring within its byte "
                "budget), oversize (one record larger than a segment), queue (the writer fell behind).",
            )
        ]
        for reason, count in sorted(ring.dropped.items()):
            lines.append(sample("edge_capture_dropped_records_total", count, ("reason",), (reason,)))
        lines += [*header("edge_capture_messages_total", "counter", "Capture segments sent to output capture.")]
        for outcome, count in sorted(self.capture_sent.items()):
            lines.append(sample("edge_capture_messages_total", count, ("outcome",), (outcome,)))
        lines += [*header("edge_telemetry_messages_total", "counter", "Telemetry summaries sent upstream.")]
        for outcome, count in sorted(self.sent.items()):
            lines.append(sample("edge_telemetry_messages_total", count, ("outcome",), (outcome,)))
        return lines

    def status(self) -> dict[str, Any]:
        """Everything the status page shows, in one JSON document."""
        drift = self.drift.summaries()
        updates = getattr(self.manager, "updates", {})
        shadows = shadow_figures.summaries(self.shadows) if self.shadows is not None else {}
        models = []
        for name, served in sorted(self.metrics.repository.snapshot().items()):
            versions = []
            for version, model in sorted(served.versions.items()):
                stats = self.metrics.stats.for_version(name, version)
                versions.append(
                    {
                        "version": version,
                        "active": model is served.active,
                        "state": "READY",
                        "sha256": model.sha256,
                        "requests": stats.counts["success"],
                        "failures": stats.counts["fail"],
                        "inferences": stats.inference_count,
                        "latency_ms": self.metrics.percentiles(name, version),
                    }
                )
            update = updates.get(name)
            models.append(
                {
                    "name": name,
                    "active_version": served.active.version,
                    "source": served.source,
                    "versions": versions,
                    "last_update": update.__dict__ if update else None,
                    "drift": drift.get(name),
                    "probation": self.manager.guard.status(name),
                    "shadow": shadows.get(name),
                }
            )
        return {
            "time": utc_now(),
            "uptime_seconds": round(self.metrics.uptime_seconds, 1),
            "models": models,
            "config": self.reported(),
            "capture": self._capture_state(),
            "telemetry": {"sent": dict(self.sent), "connected": self.sender is not None},
        }
