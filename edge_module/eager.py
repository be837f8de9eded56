"""Start a coroutine at once, and give it a task only if it has to wait: Python 3.12's eager tasks, for 3.11.

Most calls to a small model never wait (the model runs inline), so they finish inside ``start`` without a
task, a scheduling round or a context switch (about 6 µs a call on this hardware). A coroutine that does wait
(a model in the thread pool, a batch) continues in an ordinary task from exactly where it stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")
_FIRST_STEP_TAKEN = object()


def start(coroutine: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None] | None:
    """Run ``coroutine`` until it finishes (None) or waits (the task that continues it)."""
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_Resumed(coroutine, waiting), name=name)


def first_step(coroutine: Coroutine[Any, Any, T]) -> tuple[T, None] | tuple[None, Coroutine[Any, Any, T]]:
    """Run ``coroutine`` to its first wait: (its result, None) if it finished, else (None, an awaitable that
    continues it from there). Lets a caller skip work that only a waiting coroutine needs (a deadline timer)."""
    try:
        waiting = coroutine.send(None)
    except StopIteration as done:
        return done.value, None
    return None, _Resumed(coroutine, waiting)


class _Resumed(Coroutine[Any, Any, T]):
    """A started coroutine as a task's coroutine: the task's first step is handed what it already waits on."""

    def __init__(self, coroutine: Coroutine[Any, Any, T], waiting: Any) -> None:
        self._coroutine = coroutine
        self._waiting = waiting

    def send(self, value: Any) -> Any:
        waiting = self._waiting
        if waiting is not _FIRST_STEP_TAKEN:
            self._waiting = _FIRST_STEP_TAKEN
            return waiting
        return self._coroutine.send(value)

    def throw(self, typ: Any, value: Any = None, traceback: Any = None) -> Any:
        # Thrown before the first step too (a task cancelled at once): it lands where the coroutine waits.
        self._waiting = _FIRST_STEP_TAKEN
        if value is None and traceback is None:
            return self._coroutine.throw(typ)
        return self._coroutine.throw(typ, value, traceback)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self

    def __iter__(self) -> _Resumed[T]:
        return self

    def __next__(self) -> Any:
        return self.send(None)
