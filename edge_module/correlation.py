"""Correlation ids: what joins a request, its response, its ``predictions`` message and its capture records.

A request's own id (the V2 request's ``id``, or the edgeHub message id) is kept. Otherwise one is made
here: 32 hex digits, a random 64-bit prefix drawn once per process and a 64-bit counter. It is unique
like a uuid4 across devices and restarts (64 random bits per process), and costs a fraction of a
microsecond on the request path, where ``uuid.uuid4()`` costs several (it reads the OS random source
each time).
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def new_correlation_id() -> str:
    global _prefix
    if not _prefix:  # drawn on first use, not at import time
        _prefix = os.urandom(8).hex()
    return f"{_prefix}{next(_counter):016x}"
