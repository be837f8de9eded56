"""``python -m cloud monitor``: drift, prediction shift and live metrics of captured rows, per device x model
version x time window, against each version's training profile and registered metrics.

PSI comes from edge_module/drift.py (``baselines_from_profile``, ``FeatureBaseline.encode``,
``feature_drift``): the same code scores the device's sliding window, so both sides agree to the digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cloud.captured import Capture, Joined, Labels, join_labels, records_frame
from cloud.errors import CloudError, DataError, ModelNotFound
from cloud.registry import Registry, RegistryEntry
from cloud.scoring import read_metadata
from edge_module.drift import FeatureBaseline, baseline_from_profile, baselines_from_profile, feature_drift
from edge_module.model_contract import ModelMetadata

HEALTHY = 0
RETRAIN = 10
WINDOW = re.compile(r"^(\d+)([mhd])$")
PREDICTION = "prediction"
# Metrics compared with the registered ones, and whether higher is better.
LIVE_METRICS = {"classification": {"accuracy": True, "f1_macro": True}, "regression": {"rmse": False, "mae": False}}


@dataclass(frozen=True)
class MonitorSettings:
    window: str = "1h"
    psi_threshold: float = 0.2
    metric_drop: float = 0.05  # relative: 0.05 = 5 % worse than the registered value
    min_rows: int = 100  # a window with fewer rows is reported, not judged (the edge's EDGE_DRIFT_MIN_ROWS)
    min_labels: int = 30


def window_length(text: str) -> timedelta | None:
    """A window's length; None for ``all`` (one window over the whole range read)."""
    if text.strip() == "all":
        return None
    match = WINDOW.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise DataError(f"window {text!r}: use a number and m, h or d (e.g. 15m, 1h, 1d), or all")
    amount = int(match.group(1))
    return {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}[match.group(2)]


def window_start(stamp: datetime, length: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return epoch + ((stamp - epoch) // length) * length


@dataclass(frozen=True)
class VersionProfile:
    """What a registered version is compared against."""

    entry: RegistryEntry
    metadata: ModelMetadata
    baselines: list[FeatureBaseline]
    prediction: FeatureBaseline | None

    @property
    def features(self) -> tuple[str, ...]:
        return self.metadata.feature_names


def version_profile(registry: Registry, name: str, version: str, folder: Path) -> VersionProfile:
    entry = registry.get(name, version=version)
    metadata = read_metadata(registry.fetch(entry, folder))
    if not metadata.features:
        raise DataError(f"{name} version {version} has no feature metadata (edge.features); cannot monitor it")
    baselines = baselines_from_profile(metadata.profile)
    spec = metadata.profile.get("predictions") if metadata.profile else None
    prediction = baseline_from_profile(PREDICTION, spec) if isinstance(spec, dict) else None
    return VersionProfile(entry, metadata, baselines, prediction)


def feature_codes(baseline: FeatureBaseline, column: Any) -> np.ndarray:
    """The drift bin codes of a table column, read as the device's tensors would hold it."""
    import pandas as pd

    if baseline.numeric:
        return baseline.encode(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64))
    values = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in column])
    return baseline.encode(values.astype(object))


def drift_of(baselines: list[FeatureBaseline], frame: Any) -> dict[str, dict[str, float]]:
    return {b.name: feature_drift(b, feature_codes(b, frame[b.name])) for b in baselines if b.name in frame}


def prediction_column(frame: Any, task: str | None) -> str | None:
    preferred = {"classification": "output:label", "regression": "output:variable"}.get(task or "", "")
    if preferred in frame.columns:
        return preferred
    outputs = [c for c in frame.columns if c.startswith("output:")]
    return outputs[0] if outputs else None


def prediction_shift(profile: VersionProfile, frame: Any) -> dict[str, Any]:
    column = prediction_column(frame, profile.metadata.task)
    if column is None:
        return {"output": None, "psi": None, "distribution": {}}
    values = frame[column]
    result: dict[str, Any] = {"output": column.split(":", 1)[1]}
    if profile.metadata.task == "regression":
        numeric = np.asarray(values, dtype=np.float64)
        result["distribution"] = {"mean": _round(np.nanmean(numeric)), "std": _round(np.nanstd(numeric))}
    else:
        labels, counts = np.unique(np.array([str(v) for v in values]), return_counts=True)
        result["distribution"] = {str(k): round(int(c) / len(values), 4) for k, c in zip(labels, counts, strict=True)}
    if profile.prediction is None:
        result["psi"] = None
        result["note"] = "no prediction baseline in the model's profile (trained before it was recorded)"
    else:
        result["psi"] = feature_drift(profile.prediction, feature_codes(profile.prediction, values))["psi"]
    return result


def live_metrics(task: str | None, frame: Any) -> dict[str, float] | None:
    from sklearn import metrics

    column = prediction_column(frame, task)
    if column is None or task not in LIVE_METRICS or not len(frame):
        return None
    if task == "regression":
        truth = np.asarray(frame["label"], dtype=np.float64)
        predicted = np.asarray(frame[column], dtype=np.float64)
        return {
            "rmse": _round(np.sqrt(metrics.mean_squared_error(truth, predicted))),
            "mae": _round(metrics.mean_absolute_error(truth, predicted)),
        }
    truth_labels = [_label_text(v) for v in frame["label"]]
    predicted_labels = [_label_text(v) for v in frame[column]]
    return {
        "accuracy": _round(metrics.accuracy_score(truth_labels, predicted_labels)),
        "f1_macro": _round(metrics.f1_score(truth_labels, predicted_labels, average="macro", zero_division=0)),
    }


def metric_drops(
    task: str | None, registered: dict[str, Any], live: dict[str, float], limit: float
) -> list[dict[str, Any]]:
    drops = []
    for name, higher_is_better in LIVE_METRICS.get(task or "", {}).items():
        base = registered.get(name)
        if not isinstance(base, int | float) or name not in live or base == 0:
            continue
        worse = (base - live[name]) / abs(base) if higher_is_better else (live[name] - base) / abs(base)
        if worse > limit:
            drops.append({"metric": name, "registered": base, "live": live[name], "relativeDrop": _round(worse)})
    return drops


def monitor(
    name: str,
    capture: Capture,
    registry: Registry,
    settings: MonitorSettings,
    labels: Labels | None,
    workdir: Path,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The JSON summary (see docs/monitoring-and-retraining.md); ``exitCode`` is 0 healthy or 10 retrain."""
    length = window_length(settings.window)
    summary: dict[str, Any] = {
        "model": name,
        "since": _iso(since),
        "until": _iso(until),
        "window": settings.window,
        "psiThreshold": settings.psi_threshold,
        "metricDrop": settings.metric_drop,
        "minRows": settings.min_rows,
        "minLabels": settings.min_labels,
        "capture": capture.summary(),
    }
    if not capture.records:
        raise EmptyWindow(
            f"no capture records of {name} between {_iso(since) or 'the start'} and {_iso(until) or 'now'} "
            f"({capture.outside_window} records of {name} lie outside that window)"
        )
    by_version: dict[str, list[dict[str, Any]]] = {}
    for record in capture.records:
        by_version.setdefault(record["version"], []).append(record)
    versions: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    signals: list[dict[str, Any]] = []
    unknown: dict[str, int] = {}
    label_counts = {"matched": 0, "unknownIds": 0, "ambiguous": 0, "duplicates": 0}
    all_frames = []
    for version in sorted(by_version, key=_version_key):
        try:
            profile = version_profile(registry, name, version, workdir)
        except ModelNotFound:
            unknown[version] = len(by_version[version])
            continue
        frame = records_frame(by_version[version], profile.features)
        all_frames.append(frame)
        if length is None:
            first = since or min(r["timestamp"] for r in capture.records)
            frame["window"] = [first] * len(frame)
        else:
            frame["window"] = [window_start(t, length) for t in frame["timestamp"]]
        labelled = None
        if labels is not None:
            joined: Joined = join_labels(frame, labels)
            labelled = joined.frame
            label_counts["matched"] += joined.matched
            label_counts["ambiguous"] += joined.ambiguous
            label_counts["duplicates"] = joined.duplicate
        version_block: dict[str, Any] = {
            "rows": len(frame),
            "registered": {k: v for k, v in profile.entry.metrics.items() if isinstance(v, int | float | str)},
            "task": profile.metadata.task,
            "profiled": [b.name for b in profile.baselines],
            "drift": drift_of(profile.baselines, frame),
            "predictions": prediction_shift(profile, frame),
        }
        if labelled is not None:
            live = live_metrics(profile.metadata.task, labelled)
            version_block["labelledRows"] = len(labelled)
            version_block["live"] = live
            if live and len(labelled) >= settings.min_labels:
                drops = metric_drops(profile.metadata.task, profile.entry.metrics, live, settings.metric_drop)
                version_block["metricDrops"] = drops
                signals.extend({"kind": "metric", "version": version, **drop} for drop in drops)
        versions[version] = version_block
        for (device, start), part in frame.groupby(["deviceId", "window"], sort=True):
            drift = drift_of(profile.baselines, part)
            enough = len(part) >= settings.min_rows
            drifted = sorted(f for f, s in drift.items() if s["psi"] > settings.psi_threshold)
            group = {
                "deviceId": device,
                "version": version,
                "window": _iso(start.to_pydatetime() if hasattr(start, "to_pydatetime") else start),
                "rows": len(part),
                "enoughData": enough,
                "psiMax": max((s["psi"] for s in drift.values()), default=0.0),
                "drifted": drifted if enough else [],
                "overThreshold": drifted,
                "psi": drift,
                "predictions": prediction_shift(profile, part),
            }
            if labelled is not None:
                part_labels = labelled[(labelled["deviceId"] == device) & (labelled["window"] == start)]
                group["labelledRows"] = len(part_labels)
                group["live"] = live_metrics(profile.metadata.task, part_labels)
            groups.append(group)
            if enough and drifted:
                signals.append(
                    {"kind": "drift", "deviceId": device, "version": version, "window": group["window"],
                     "features": drifted}
                )  # fmt: skip
    if not versions:
        raise DataError(
            f"none of the captured versions of {name} is in the registry at {registry.location}: "
            + ", ".join(f"version {v} ({n} records)" for v, n in unknown.items())
        )
    if labels is not None:
        everything = _concat(all_frames)
        label_counts["unknownIds"] = join_labels(everything, labels).unknown
    drift_signals = [s for s in signals if s["kind"] == "drift"]
    summary.update(
        {
            "versions": versions,
            "unknownVersions": unknown,
            "labels": None if labels is None else {"source": labels.source, "sha256": labels.sha256, **label_counts},
            "groups": groups,
            "signals": signals,
            "driftedFeatures": sorted({f for s in drift_signals for f in s["features"]}),
            "driftedDevices": sorted({s["deviceId"] for s in drift_signals}),
            "metricSignals": [s for s in signals if s["kind"] == "metric"],
            "exitCode": RETRAIN if signals else HEALTHY,
            "status": "retrain recommended" if signals else "healthy",
        }
    )
    return summary


class EmptyWindow(CloudError):
    """The source holds records of the model, but none in the requested window."""


def _concat(frames: list[Any]) -> Any:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 62, version)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _round(value: Any) -> float:
    return round(float(value), 6)
