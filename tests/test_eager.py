"""edge_module.eager: a coroutine runs at once; only one that waits becomes a task, continued where it stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from edge_module import eager


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., object]:
    def runner(main: Callable[[], object]) -> object:
        if request.param == "uvloop":
            return uvloop.run(main())  # type: ignore[arg-type]
        return asyncio.run(main())  # type: ignore[arg-type]

    return runner


def test_a_coroutine_that_never_waits_finishes_without_a_task(run: Callable[..., object]) -> None:
    seen: list[str] = []

    async def work() -> None:
        seen.append("ran")

    async def main() -> None:
        assert eager.start(work()) is None
        assert seen == ["ran"]  # before start returned

    run(main)


def test_a_coroutine_that_waits_continues_in_a_task(run: Callable[..., object]) -> None:
    steps: list[str] = []

    async def work(gate: asyncio.Future[str]) -> None:
        steps.append("before")
        steps.append(await gate)
        await asyncio.sleep(0)
        steps.append("after")

    async def main() -> None:
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = eager.start(work(gate))
        assert task is not None and steps == ["before"]
        gate.set_result("opened")
        await task
        assert steps == ["before", "opened", "after"]

    run(main)


@pytest.mark.parametrize("when", ["before its first step", "while it waits"])
def test_cancelling_the_task_reaches_the_coroutine_at_its_await(run: Callable[..., object], when: str) -> None:
    outcome: list[str] = []

    async def work(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        except asyncio.CancelledError:
            outcome.append("cancelled at the await")
            raise

    async def main() -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = eager.start(work(gate))
        assert task is not None
        if when == "while it waits":
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outcome == ["cancelled at the await"]

    run(main)


def test_an_exception_after_waiting_is_the_task_s(run: Callable[..., object]) -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        raise ValueError("late")

    async def main() -> None:
        task = eager.start(work())
        assert task is not None
        with pytest.raises(ValueError, match="late"):
            await task

    run(main)
