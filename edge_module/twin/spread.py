"""Download spreading: a bounded random start delay before a device downloads a new release.

Without it, every device of a fleet fetches a release the moment its desired patch arrives, and the blob
endpoint takes the whole fleet at once. With a window of W seconds each device waits a uniform random
delay in [0, W) first, so the downloads spread evenly over the window. The window is the release's
``spreadSeconds`` when it has one (0 turns spreading off for that release), else ``EDGE_DOWNLOAD_SPREAD_S``.

The wait is part of the update task: a newer release, or ``null``, cancels it like a download in progress.
A release whose file is already in the store does not wait (nothing to download).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from edge_module.release import Release

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadSpread:
    default_seconds: float = 0.0
    # A number in [0, 1); tests pass a fixed one.
    fraction: Callable[[], float] = field(default=random.random)

    def window(self, release: Release) -> float:
        return float(release.spread_seconds) if release.spread_seconds is not None else self.default_seconds

    def delay(self, release: Release) -> float:
        window = self.window(release)
        return window * self.fraction() if window > 0 else 0.0


async def wait_to_download(spread: DownloadSpread, release: Release, announce: Callable[[str], None]) -> float:
    """Sleep this device's share of the spread window; ``announce`` gets the UTC time the download starts.

    Returns the delay waited (0 when spreading is off)."""
    delay = spread.delay(release)
    if delay <= 0:
        return 0.0
    starts_at = datetime.now(timezone.utc) + timedelta(seconds=delay)
    announce(starts_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    log.info("model %s version %s: download starts in %.1fs (spread)", release.name, release.version, delay)
    await asyncio.sleep(delay)
    return delay
