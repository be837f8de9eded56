"""Post-swap probation: a freshly activated version is watched on live traffic and swapped back if it misbehaves.

A version that loads and warms up can still fail on inputs the warm-up never tried, or be much slower on real
traffic. For ``requests`` requests or ``seconds`` seconds after a swap (whichever comes first), the guard
counts the new version's runtime failures (inference errors, not client errors) and samples its latency. It
judges two signals:

- **failure rate**: failures over ``max(requests seen, min_requests)`` above ``max_failure_rate``. Taking at
  least ``min_requests`` as the denominator lets a version that fails every request go after a handful of
  failures without condemning one that fails once in its first few requests;
- **latency**: with at least ``min_requests`` answers, its p99 above ``max_latency_ratio`` times the p99 of
  the version it replaced (on that version's last live requests before the swap) and more than
  ``latency_slack_ms`` above it (microsecond models jitter by large ratios on a loaded host).

A failed verdict calls the manager back to swap to the previous version; the outcome is kept per model for
reported properties, the status page and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edge_module.errors import EdgeError
from edge_module.metrics import expose_gauges, header, sample
from edge_module.runtime import OnnxModel

log = logging.getLogger(__name__)

WINDOW = 1024  # latency samples kept per version: enough for a p99 over the probation's requests
LATENCY_CHECK_EVERY = 32  # requests between latency verdicts (a p99 sorts the window)


@dataclass(frozen=True)
class ProbationPolicy:
    requests: int = 1000
    seconds: float = 300.0
    max_failure_rate: float = 0.05
    max_latency_ratio: float = 3.0
    latency_slack_ms: float = 1.0
    min_requests: int = 50

    @property
    def enabled(self) -> bool:
        return self.requests > 0 or self.seconds > 0


class LatencyWindow:
    """The last ``WINDOW`` latencies of one version, in nanoseconds; adding one is a list store."""

    __slots__ = ("_next", "_samples", "count", "version")

    def __init__(self, version: str) -> None:
        self.version = version
        self._samples = [0] * WINDOW
        self._next = 0
        self.count = 0

    def add(self, nanoseconds: int) -> None:
        self._samples[self._next] = nanoseconds
        self._next = (self._next + 1) % WINDOW
        self.count += 1

    def p99_ns(self) -> float | None:
        if self.count == 0:
            return None
        held = self._samples if self.count >= WINDOW else self._samples[: self.count]
        return float(np.percentile(held, 99))


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(nanoseconds: float | None) -> float | None:
    return None if nanoseconds is None else round(nanoseconds / 1e6, 3)


@dataclass
class Probation:
    """One version's probation, running or ended."""

    name: str
    version: str
    previous_version: str
    baseline_p99_ns: float | None
    started: float
    since: str = field(default_factory=_utc_now)
    state: str = "running"  # then "passed", or "rollingBack" and "rolledBack"
    requests: int = 0
    failures: int = 0
    signal: str | None = None
    reason: str | None = None
    ended_at: str | None = None
    window: LatencyWindow = field(init=False)

    def __post_init__(self) -> None:
        self.window = LatencyWindow(self.version)

    def reported(self) -> dict[str, Any]:
        """The ``models.<name>.probation`` block of reported properties (also the status page's)."""
        return {
            "state": self.state,
            "version": self.version,
            "previousVersion": self.previous_version,
            "requests": self.requests,
            "failures": self.failures,
            "p99Ms": _ms(self.window.p99_ns()),
            "baselineP99Ms": _ms(self.baseline_p99_ns),
            "signal": self.signal,
            "reason": self.reason,
            "since": self.since,
            "endedAt": self.ended_at,
        }


Verdict = Callable[[Probation], None]


class ProbationGuard:
    """Watches each model's newest version after a swap. Runs on the event loop; its hooks are O(1)."""

    def __init__(self, policy: ProbationPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._running: dict[str, Probation] = {}
        self._baselines: dict[str, LatencyWindow] = {}
        self.latest: dict[str, Probation] = {}
        self.rollbacks: dict[tuple[str, str], int] = {}
        # on_failed swaps back (the manager); listeners hear every start and verdict (the twin's reporter).
        self.on_failed: Verdict | None = None
        self.listeners: list[Verdict] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # -- hot path (data plane observers) ---------------------------------------------------------

    def observe(
        self,
        model: OnnxModel,
        inputs: Any,
        results: Any,
        queue_ns: int,
        compute_ns: int,
        total_ns: int,
        correlation_id: str,
    ) -> None:
        name = model.name
        probation = self._running.get(name)
        if probation is not None and probation.version == model.version:
            probation.requests += 1
            probation.window.add(total_ns)
            if probation.state == "running":
                self._judge(probation)
            return
        baseline = self._baselines.get(name)
        if baseline is None or baseline.version != model.version:
            baseline = self._baselines[name] = LatencyWindow(model.version)
        baseline.add(total_ns)

    def observe_failure(self, model: OnnxModel, error: EdgeError) -> None:
        if error.status_code < 500:
            return  # the client's mistake says nothing about the version
        probation = self._running.get(model.name)
        if probation is not None and probation.version == model.version:
            probation.requests += 1
            probation.failures += 1
            if probation.state == "running":
                self._judge(probation)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, name: str, version: str, previous_version: str) -> Probation | None:
        """Put ``version`` on probation against ``previous_version``; a running probation of ``name`` ends."""
        if not self.policy.enabled:
            return None
        self._cancel_timer(name)
        baseline = self._baseline_for(name, previous_version)
        enough = baseline is not None and baseline.count >= self.policy.min_requests
        probation = Probation(
            name, version, previous_version, baseline.p99_ns() if enough and baseline else None, self.clock()
        )
        self._running[name] = probation
        self.latest[name] = probation
        if self.policy.seconds > 0:
            loop = asyncio.get_running_loop()
            self._timers[name] = loop.call_later(self.policy.seconds, self._expire, probation)
        log.info(
            "model %s version %s on probation (%s requests or %ss; baseline p99 %s ms of version %s)",
            name,
            version,
            self.policy.requests or "any",
            self.policy.seconds or "any",
            _ms(probation.baseline_p99_ns),
            previous_version,
        )
        self._tell(probation)
        return probation

    def forget(self, name: str) -> None:
        """The model is gone (removed) or swapped by hand: no verdict for its running probation."""
        self._cancel_timer(name)
        self._running.pop(name, None)

    def _baseline_for(self, name: str, version: str) -> LatencyWindow | None:
        running = self._running.get(name)
        if running is not None and running.version == version:
            return running.window  # swapped again while still on probation: its samples are the baseline
        baseline = self._baselines.get(name)
        return baseline if baseline is not None and baseline.version == version else None

    def _expire(self, probation: Probation) -> None:
        if self._running.get(probation.name) is probation:
            self._judge(probation, ended=True)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # -- verdicts --------------------------------------------------------------------------------

    def _judge(self, probation: Probation, ended: bool = False) -> None:
        policy = self.policy
        if probation.failures:
            rate = probation.failures / max(probation.requests, policy.min_requests)
            if rate > policy.max_failure_rate:
                share = probation.failures / probation.requests
                reason = (
                    f"failure rate: {probation.failures} of {probation.requests} requests failed ({share:.1%}; "
                    f"limit {policy.max_failure_rate:.1%})"
                )
                self._fail(probation, "failure_rate", reason)
                return
        if policy.requests and probation.requests >= policy.requests:
            ended = True
        if policy.seconds and self.clock() - probation.started >= policy.seconds:
            ended = True
        answered = probation.requests - probation.failures
        if (
            probation.baseline_p99_ns is not None
            and answered >= policy.min_requests
            and (ended or answered % LATENCY_CHECK_EVERY == 0)
        ):
            p99 = probation.window.p99_ns() or 0.0
            baseline = probation.baseline_p99_ns
            if p99 > policy.max_latency_ratio * baseline and p99 - baseline > policy.latency_slack_ms * 1e6:
                reason = (
                    f"latency: p99 {p99 / 1e6:.2f} ms vs {baseline / 1e6:.2f} ms of version "
                    f"{probation.previous_version} ({p99 / baseline:.1f}x; limit {policy.max_latency_ratio:g}x)"
                )
                self._fail(probation, "latency", reason)
                return
        if ended:
            self._end(probation, "passed")

    def _fail(self, probation: Probation, signal: str, reason: str) -> None:
        # "rollingBack" until the manager has swapped: requests the version still answers meanwhile are
        # counted, so the reported figures hold every failure clients saw.
        probation.signal, probation.reason, probation.state = signal, reason, "rollingBack"
        self._cancel_timer(probation.name)
        key = (probation.name, signal)
        self.rollbacks[key] = self.rollbacks.get(key, 0) + 1
        log.error("model %s version %s failed probation: %s", probation.name, probation.version, reason)
        self._tell(probation)
        if self.on_failed is not None:
            self.on_failed(probation)

    def rolled_back(self, probation: Probation) -> None:
        """The manager swapped ``probation``'s version out (or found it already gone)."""
        self._end(probation, "rolledBack")

    def _end(self, probation: Probation, state: str) -> None:
        probation.state, probation.ended_at = state, _utc_now()
        if self._running.get(probation.name) is probation:
            del self._running[probation.name]
            self._cancel_timer(probation.name)
        if state == "passed":
            # Its probation samples seed the baseline the next swap is judged against.
            self._baselines[probation.name] = probation.window
            log.info("model %s version %s passed probation", probation.name, probation.version)
        self._tell(probation)

    def _tell(self, probation: Probation) -> None:
        for listener in self.listeners:
            try:
                listener(probation)
            except Exception:  # a reporter's bug must not stop the verdict
                log.exception("probation listener failed")

    # -- exposition ------------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        probation = self.latest.get(name)
        return probation.reported() if probation else None

    def expose(self) -> list[str]:
        latest = sorted(self.latest.items())
        lines = expose_gauges(
            "edge_model_probation",
            "1 while the version is on post-swap probation, 0 after it passed or was rolled back.",
            ("model", "version"),
            (((name, p.version), int(p.state == "running")) for name, p in latest),
        )
        lines += expose_gauges(
            "edge_model_probation_requests",
            "Requests the version answered or failed during its latest probation.",
            ("model", "version"),
            (((name, p.version), p.requests) for name, p in latest),
        )
        lines += expose_gauges(
            "edge_model_probation_failures",
            "Runtime failures (not client errors) of the version during its latest probation.",
            ("model", "version"),
            (((name, p.version), p.failures) for name, p in latest),
        )
        lines += list(
            header("edge_model_probation_rollbacks_total", "counter", "Automatic rollbacks after a failed probation.")
        )
        lines += [
            sample("edge_model_probation_rollbacks_total", count, ("model", "signal"), key)
            for key, count in sorted(self.rollbacks.items())
        ]
        return lines
