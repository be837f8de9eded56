"""The running shadows' figures where operators look: ``/metrics``, the status page and telemetry."""

from __future__ import annotations

from typing import Any

from edge_module.metrics import expose_gauges, header, sample
from edge_module.shadow.mirror import ShadowMirror

SUMMARY_FIELDS = (
    "version",
    "sampleRate",
    "mirrored",
    "compared",
    "dropped",
    "errors",
    "agreement",
    "meanAbsDiff",
    "p99AbsDiff",
    "shadowP99Ms",
    "activeP99Ms",
    "since",
)
COUNTERS = (
    ("mirrored", "Requests sent to the shadow after the active version answered."),
    ("compared", "Mirrored requests the shadow ran and compared."),
    ("dropped", "Requests not mirrored: the shadow's queue was full (it runs on idle CPU only)."),
    ("errors", "Mirrored requests the shadow failed to run."),
)
GAUGES = (
    ("agreement", "agreement", "Share of compared rows whose label equals the active version's."),
    ("meanAbsDiff", "abs_diff_mean", "Mean absolute difference of float outputs (probabilities, values)."),
    ("p99AbsDiff", "abs_diff_p99", "99th percentile of the absolute difference of float outputs."),
)


def summaries(mirror: ShadowMirror) -> dict[str, dict[str, Any]]:
    """Per model with a running shadow: its figures in the twin's keys (telemetry, status page)."""
    result = {}
    for name, shadow in sorted(mirror.shadows.items()):
        figures = {"version": shadow.version, "sampleRate": mirror.sample_rate, **shadow.report()}
        result[name] = {key: figures.get(key) for key in SUMMARY_FIELDS}
    return result


def expose(mirror: ShadowMirror) -> list[str]:
    """Prometheus text lines for ``/metrics``."""
    rows = [((name, s.version), s.report()) for name, s in sorted(mirror.shadows.items())]
    labels = ("model", "version")
    lines: list[str] = []
    for key, help_text in COUNTERS:
        metric = f"edge_shadow_{key}_total"
        lines += header(metric, "counter", help_text)
        lines += [sample(metric, figures.get(key) or 0, labels, values) for values, figures in rows]
    for key, metric, help_text in GAUGES:
        present = [(values, figures[key]) for values, figures in rows if figures.get(key) is not None]
        lines += expose_gauges(f"edge_shadow_{metric}", help_text, labels, present)
    latency = "edge_shadow_latency_p99_seconds"
    lines += header(latency, "gauge", "p99 on the same requests: the shadow's run, and the active version's request.")
    for (name, version), figures in rows:
        for role, key in (("shadow", "shadowP99Ms"), ("active", "activeP99Ms")):
            if figures.get(key) is not None:
                seconds = figures[key] / 1000.0
                lines.append(sample(latency, seconds, ("model", "version", "role"), (name, version, role)))
    return lines
