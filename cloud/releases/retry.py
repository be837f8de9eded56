"""When and how long the IoT Hub client waits before trying a call again.

IoT Hub answers 429 when a throttle is exceeded and "the client should back off and retry" (IoT Hub quotas and
throttling, "Operation throttles"; error family 429xxx, e.g. 429001 ThrottlingException, in "Understand and
resolve Azure IoT Hub errors"). A 5xx (500 ServerError, 503 ServiceUnavailable...) is transient by the same
documentation. The docs do not promise a ``Retry-After`` header on IoT Hub's 429; we honour one when it comes
(seconds or an HTTP date, RFC 9110 section 10.2.3) and otherwise back off exponentially with full jitter,
so that many clients throttled together do not come back together.

Which failures a call may be retried after depends on whether the hub may already have done it:

- ``REFUSED``: 429 (the hub refused the call: nothing was done) and a connection that could not be opened
  (nothing was sent). Every call may be retried after these.
- ``MAYBE_DONE``: a 5xx (500, 502, 503, 504) or a connection lost after the request was sent. Only calls
  whose repetition cannot change the outcome are retried after these: see ``Idempotency``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


class Idempotency(enum.Enum):
    """How a call behaves when the hub receives it twice."""

    # Reads (GET, POST /devices/query), DELETE (a second delete finds nothing: the state is the same), a
    # merge PATCH of a twin (applying the same merge patch twice gives the same twin, RFC 7396), a write
    # with a specific If-Match etag (a repeat after a success gets 412, never a second write) and
    # applyConfigurationContent (replaces the device's whole content: twice is once).
    IDEMPOTENT = "idempotent"
    # PUT /configurations/{id} without If-Match: a repeat after an unseen success gets 409. That is safe to
    # retry only because the caller checks, on a 409 after a retry, that what the hub holds is what it sent.
    CREATE = "create"
    # Anything else: retried only when the hub refused it or never got it.
    UNSAFE = "unsafe"


class Outcome(enum.Enum):
    REFUSED = "refused"
    MAYBE_DONE = "maybe done"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``max_attempts`` tries and ``budget_seconds`` of waiting in all."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    budget_seconds: float = 120.0
    random: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def may_retry(self, idempotency: Idempotency, outcome: Outcome) -> bool:
        return outcome is Outcome.REFUSED or idempotency is not Idempotency.UNSAFE

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            # The server's figure is a floor; a little jitter on top spreads clients that got the same one.
            return retry_after + self.random.uniform(0.0, min(1.0, self.base_delay))
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return self.random.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
