"""On-device drift: per-feature PSI and out-of-range share of live inputs against the training profile.

The request path only appends references to the input arrays to a bounded queue (O(1)). ``flush``,
run periodically off the request path, bins them in bulk into a sliding window of the last ``window``
rows, and ``summaries`` computes PSI over that window.

The profile is ``ModelMetadata.profile`` (cloud/profile.py): numeric features carry quantile bin edges
and proportions, string features category proportions; both carry a missing fraction.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_module.runtime import OnnxModel

EPSILON = 1e-4  # floor for proportions, so an empty bin does not make PSI infinite


@dataclass(frozen=True)
class FeatureBaseline:
    """One feature's profile as bins.

    Codes: 0..k-1 the profile's bins; k below the minimum (numeric) or an unseen category (string);
    k+1 above the maximum; k+2 missing.
    """

    name: str
    numeric: bool
    expected: np.ndarray  # k proportions among present values
    missing: float
    edges: np.ndarray  # numeric: k+1 ascending edges
    categories: Mapping[str, int]  # string: category -> code

    @property
    def bins(self) -> int:
        return len(self.expected)

    def encode(self, column: np.ndarray) -> np.ndarray:
        k = self.bins
        if self.numeric:
            values = column.astype(np.float64, copy=False)
            inner = self.edges[1:-1]
            codes = np.searchsorted(inner, values, side="right").astype(np.int16)
            codes[values < self.edges[0]] = k
            codes[values > self.edges[-1]] = k + 1
            codes[np.isnan(values)] = k + 2
            return codes
        lookup = self.categories
        out = np.empty(len(column), dtype=np.int16)
        for i, value in enumerate(column):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            out[i] = k + 2 if text == "" else lookup.get(text, k)
        return out


def baseline_from_profile(name: str, spec: Mapping[str, Any]) -> FeatureBaseline | None:
    missing = float(spec.get("missing", 0.0) or 0.0)
    if spec.get("type") == "numeric":
        edges = np.asarray(spec.get("edges") or [], dtype=np.float64)
        proportions = np.asarray(spec.get("proportions") or [], dtype=np.float64)
        if len(edges) < 2 or len(proportions) != len(edges) - 1:
            return None
        return FeatureBaseline(name, True, proportions, missing, edges, {})
    categories = spec.get("categories")
    if spec.get("type") == "string" and isinstance(categories, dict) and categories:
        names = sorted(categories)
        expected = np.asarray([float(categories[c]) for c in names], dtype=np.float64)
        return FeatureBaseline(name, False, expected, missing, np.empty(0), {c: i for i, c in enumerate(names)})
    return None


# The request inputs a model's profiled features come from, and how to cut them into one column per feature.
Layout = tuple[tuple[str, ...], Callable[[list[np.ndarray]], list[np.ndarray]]]


def column_layout(model: OnnxModel, features: list[str]) -> Layout | None:
    """Where each profiled feature is in a request's inputs, or None when the model's inputs do not say."""
    inputs = {spec.name: spec for spec in model.inputs}
    if all(name in inputs for name in features):
        return tuple(features), lambda arrays: [a.reshape(len(a), -1)[:, 0] for a in arrays]
    if len(model.inputs) == 1:
        spec = model.inputs[0]
        declared = [f.name for f in model.metadata.features]
        if len(spec.shape) == 2 and spec.shape[1] in (-1, len(declared)) and declared:
            positions = [declared.index(name) for name in features]
            return (spec.name,), lambda arrays: [arrays[0][:, position] for position in positions]
    return None


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    p = np.maximum(expected, EPSILON)
    q = np.maximum(actual, EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def baselines_from_profile(profile: Mapping[str, Any] | None) -> list[FeatureBaseline]:
    """The usable per-feature baselines of a training profile (``edge.profile``), in the profile's order."""
    features = profile.get("features", {}) if profile else {}
    found = [baseline_from_profile(name, spec) for name, spec in features.items() if isinstance(spec, dict)]
    return [b for b in found if b is not None]


def feature_drift(baseline: FeatureBaseline, codes: np.ndarray) -> dict[str, float]:
    """PSI and out-of-range share of one feature's live values, given as bin codes (``baseline.encode``).

    The one implementation of the drift score: the edge's sliding window and ``python -m cloud monitor``
    both call it, so a window of rows scores the same on the device and in the cloud.
    """
    k = baseline.bins
    counts = np.bincount(codes, minlength=k + 3).astype(np.float64)
    rows = counts.sum()
    present = counts[: k + 2].sum()
    outside = counts[k] + counts[k + 1]
    # Out-of-range values count in the outermost bins for PSI; their share is reported apart.
    actual = counts[:k].copy()
    actual[0] += counts[k] if baseline.numeric else 0.0
    actual[-1] += counts[k + 1]
    score = psi(baseline.expected, actual / present) if present else 0.0
    missing_share = counts[k + 2] / rows if rows else 0.0
    if baseline.missing > 0 or missing_share > 0:
        score += psi(np.array([baseline.missing, 1 - baseline.missing]), np.array([missing_share, 1 - missing_share]))
    return {"psi": round(score, 4), "out_of_range": round(float(outside / present) if present else 0.0, 4)}


class ModelDrift:
    """The sliding window of one model version's live inputs, as bin codes."""

    def __init__(self, model: OnnxModel, window: int) -> None:
        self.name = model.name
        self.version = model.version
        candidates = baselines_from_profile(model.metadata.profile)
        layout = column_layout(model, [b.name for b in candidates]) if candidates else None
        self.baselines = candidates if layout else []
        self.needed, self.columns = layout or ((), lambda arrays: [])
        self.window = np.zeros((window, len(self.baselines)), dtype=np.int16)
        self.filled = 0
        self.position = 0
        # Arrays are queued, not the request's dict: arrays are not tracked by the garbage collector.
        self.pending: deque[tuple[np.ndarray, ...]] = deque()
        self.pending_rows = 0
        self.capacity = window
        self.seen = 0

    @property
    def active(self) -> bool:
        return bool(self.baselines)

    def add(self, inputs: Mapping[str, np.ndarray]) -> None:
        # Once a window's worth of rows is queued, requests until the next flush are not kept: holding
        # every request's arrays at high rates costs the allocator more than the window gains.
        if self.pending_rows < self.capacity:
            arrays = tuple(inputs[name] for name in self.needed)
            self.pending.append(arrays)
            self.pending_rows += len(arrays[0])

    def flush(self) -> int:
        """Bin what the request path queued into the window, in one vectorized pass. Returns rows added."""
        if not self.pending or not self.needed:
            return 0
        # Only the newest requests that fill the window matter; older ones would be binned and overwritten.
        queued: list[tuple[np.ndarray, ...]] = []
        rows = 0
        size = len(self.window)
        while self.pending and rows < size:
            arrays = self.pending.pop()
            queued.append(arrays)
            rows += len(arrays[0])
        self.pending.clear()
        self.pending_rows = 0
        queued.reverse()
        try:
            # One array per input across all queued requests: per-request numpy calls would cost more
            # than the inference they observe.
            merged = [np.concatenate([arrays[i] for arrays in queued]) for i in range(len(self.needed))]
            columns = self.columns(merged)
            codes = np.stack([b.encode(c) for b, c in zip(self.baselines, columns, strict=True)], axis=1)
        except (KeyError, IndexError, ValueError):  # inputs that do not fit the profile are ignored
            return 0
        codes = codes[-size:]
        end = self.position + len(codes)
        if end <= size:
            self.window[self.position : end] = codes
        else:
            split = size - self.position
            self.window[self.position :] = codes[:split]
            self.window[: end - size] = codes[split:]
        self.position = end % size
        self.filled = min(size, self.filled + len(codes))
        self.seen += len(codes)
        return len(codes)

    def summary(self, threshold: float, min_rows: int) -> dict[str, Any]:
        rows = self.filled
        features: dict[str, dict[str, float]] = {}
        if rows:
            window = self.window[:rows]
            for index, baseline in enumerate(self.baselines):
                features[baseline.name] = feature_drift(baseline, window[:, index])
        scores = [f["psi"] for f in features.values()]
        worst = max(scores) if scores else 0.0
        top = max(features, key=lambda f: features[f]["psi"]) if features else None
        enough = rows >= min_rows
        return {
            "version": self.version,
            "rows": rows,
            "psi_max": round(worst, 4) if math.isfinite(worst) else None,
            "feature": top,
            "out_of_range_max": max((f["out_of_range"] for f in features.values()), default=0.0),
            "drifted": bool(enough and worst > threshold),
            "enough_data": enough,
            "threshold": threshold,
            "features": features,
        }


class DriftMonitor:
    """Drift of every served model's active version. ``observe`` is the data plane observer."""

    def __init__(self, window: int = 1000, threshold: float = 0.2, min_rows: int = 100) -> None:
        self.window = window
        self.threshold = threshold
        self.min_rows = min_rows
        self._models: dict[tuple[str, str], ModelDrift] = {}

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
        key = (model.name, model.version)
        drift = self._models.get(key)
        if drift is None:
            drift = self._models[key] = ModelDrift(model, self.window)
        if drift.active:
            drift.add(inputs)

    def flush(self) -> int:
        """Bin queued inputs (run it periodically, off the request path)."""
        return sum(drift.flush() for drift in list(self._models.values()))

    def forget(self, active: Mapping[str, str]) -> None:
        """Drop windows of versions no longer active (``active``: model -> version)."""
        for key in list(self._models):
            if active.get(key[0]) != key[1]:
                del self._models[key]

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Per model (its latest observed version): psi_max, the worst feature, drifted, per-feature scores."""
        self.flush()
        result: dict[str, dict[str, Any]] = {}
        for (name, _), drift in self._models.items():
            if drift.active:
                result[name] = drift.summary(self.threshold, self.min_rows)
        return result
