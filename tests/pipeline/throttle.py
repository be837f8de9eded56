"""IoT Hub's operation throttles for the stand-in hub, per tier and unit count.

From "IoT Hub quotas and throttling", Operation throttles (values per hub; Free shares the S1 column):

| throttle | Free, S1 | S2 | S3 |
| --- | --- | --- | --- |
| Queries | 20/min/unit | 20/min/unit | 1,000/min/unit |
| Twin (device and module) reads | 100/sec | higher of 100/sec or 10/sec/unit | 500/sec/unit |
| Twin updates (device and module) | 50/sec | higher of 50/sec or 5/sec/unit | 250/sec/unit |
| Configurations and edge deployments (create, update, list, delete) | 0.33/sec/unit (20/min/unit) | same | same |

"Operation throttles are rate limitations that are applied in minute ranges"; past them "IoT Hub responds
with error code 429 and the client should back off and retry", as ``429001 ThrottlingException`` ("Throttling
limits are exceeded for the requested operation", Understand and resolve IoT Hub errors). Traffic shaping
lets a burst through before the 429s start; we model "minute ranges" and that allowance as a token bucket
per operation holding one minute's worth, refilled at the documented rate. The docs do not say IoT Hub sends
``Retry-After``; the stand-in does (the seconds until the bucket holds a token again), and the client also
copes without it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable

QUERIES = "queries"
TWIN_READS = "twin reads"
TWIN_UPDATES = "twin updates"
CONFIGURATIONS = "configurations"
TIERS = ("F1", "S1", "S2", "S3")


def rates(tier: str, units: int = 1) -> dict[str, float]:
    """Operations per second each throttle allows a hub of ``units`` units of ``tier``."""
    if tier not in TIERS:
        raise ValueError(f"unknown IoT Hub tier {tier!r}: one of {', '.join(TIERS)}")
    if tier == "F1" and units != 1:
        raise ValueError("a free (F1) hub has exactly one unit")
    if units < 1:
        raise ValueError(f"a hub has at least one unit, got {units}")
    configurations = 20 / 60 * units
    if tier in ("F1", "S1"):
        return {QUERIES: 20 / 60 * units, TWIN_READS: 100.0, TWIN_UPDATES: 50.0, CONFIGURATIONS: configurations}
    if tier == "S2":
        return {
            QUERIES: 20 / 60 * units,
            TWIN_READS: max(100.0, 10.0 * units),
            TWIN_UPDATES: max(50.0, 5.0 * units),
            CONFIGURATIONS: configurations,
        }
    return {QUERIES: 1000 / 60 * units, TWIN_READS: 500.0 * units, TWIN_UPDATES: 250.0 * units,
            CONFIGURATIONS: configurations}  # fmt: skip


class Throttle:
    """Token buckets, one per operation: ``admit`` says whether a call goes through, or how long to wait."""

    def __init__(self, tier: str, units: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.tier, self.units = tier, units
        self.rates = rates(tier, units)
        self._clock = clock
        now = clock()
        self._tokens = {operation: rate * 60 for operation, rate in self.rates.items()}
        self._stamp = dict.fromkeys(self.rates, now)
        self._lock = threading.Lock()
        self.admitted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def admit(self, operation: str) -> int | None:
        """None when the call may proceed; else the whole seconds until it would (for ``Retry-After``)."""
        rate = self.rates[operation]
        with self._lock:
            now = self._clock()
            tokens = min(rate * 60, self._tokens[operation] + (now - self._stamp[operation]) * rate)
            self._stamp[operation] = now
            if tokens >= 1:
                self._tokens[operation] = tokens - 1
                self.admitted[operation] += 1
                return None
            self._tokens[operation] = tokens
            self.refused[operation] += 1
            return max(1, math.ceil((1 - tokens) / rate))
