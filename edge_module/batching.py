"""Dynamic batching: concurrent requests to one model version merged into one onnxruntime call.

A request that finds its model idle runs at once, alone: batching never makes a lone request wait.
Requests that arrive while a run is in flight queue up; when the run ends, the queue is merged along
dimension 0 (up to ``max_size`` rows), run once and split back in arrival order. ``max_delay_ms``
lets a partial batch wait, counted from its oldest request's arrival, for more batch-mates.

Requests are validated before they are queued, so one bad request never fails its batch-mates; if a
merged run fails anyway, each request of that batch is retried alone and gets its own outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_module.runtime import OnnxModel

Tensors = dict[str, np.ndarray]
# Runs a model on a set of inputs (inline or in a worker thread: the caller decides).
Execute = Callable[[OnnxModel, Mapping[str, np.ndarray], Sequence[str] | None], Awaitable[Tensors]]


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int = 1  # rows per merged run; 1 turns batching off
    max_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be at least 1")
        if self.max_delay_ms < 0:
            raise ValueError("max_delay_ms must not be negative")

    @property
    def enabled(self) -> bool:
        return self.max_size > 1


def batchable(model: OnnxModel) -> bool:
    """Only models whose every input and output has a dynamic leading (batch) dimension can be merged."""
    return model.batchable


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple[tuple[str, tuple[int, ...], str], ...]
    enqueued_ns: int
    future: asyncio.Future[tuple[Tensors, int, bool]]


class _ModelQueue:
    __slots__ = ("filled", "pending", "rows", "running")

    def __init__(self) -> None:
        self.pending: deque[_Pending] = deque()
        self.rows = 0
        self.running = False
        self.filled = asyncio.Event()


def _merge_key(inputs: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in inputs.items()))


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0])
    return 0


class Batcher:
    """Per model-version queues. ``policy_for``/``set_policy`` let the twin tune each model by name."""

    def __init__(self, default: BatchPolicy, execute: Execute) -> None:
        self.default = default
        self._execute = execute
        self._overrides: dict[str, BatchPolicy] = {}
        self._queues: weakref.WeakKeyDictionary[OnnxModel, _ModelQueue] = weakref.WeakKeyDictionary()
        self._drains: set[asyncio.Task[None]] = set()

    # -- policy ----------------------------------------------------------------------------------

    def policy_for(self, name: str) -> BatchPolicy:
        return self._overrides.get(name, self.default)

    def set_policy(self, name: str, policy: BatchPolicy | None) -> None:
        """Override the policy of one model by name; None restores the default."""
        if policy is None:
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = policy

    def policies(self) -> dict[str, BatchPolicy]:
        return dict(self._overrides)

    def applies_to(self, model: OnnxModel) -> bool:
        return model.batchable and self.policy_for(model.name).enabled

    # -- running ---------------------------------------------------------------------------------

    async def run(self, model: OnnxModel, inputs: Mapping[str, np.ndarray]) -> tuple[Tensors, int, bool]:
        """All outputs for ``inputs``, nanoseconds spent queued, and whether this request counts the execution.

        A merged run is one execution for several requests: only the first of them counts it.
        """
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _ModelQueue()
        if not queue.running:
            queue.running = True
            try:
                return await self._execute(model, inputs, None), 0, True
            finally:
                self._after_run(model, queue)
        future: asyncio.Future[tuple[Tensors, int, bool]] = asyncio.get_running_loop().create_future()
        rows = _rows(inputs)
        queue.pending.append(_Pending(inputs, rows, _merge_key(inputs), time.perf_counter_ns(), future))
        queue.rows += rows
        if queue.rows >= self.policy_for(model.name).max_size:
            queue.filled.set()
        return await future

    def _after_run(self, model: OnnxModel, queue: _ModelQueue) -> None:
        if not queue.pending:
            queue.running = False
            return
        task = asyncio.get_running_loop().create_task(self._drain(model, queue), name=f"batch-{model.name}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, model: OnnxModel, queue: _ModelQueue) -> None:
        try:
            while queue.pending:
                policy = self.policy_for(model.name)
                await self._wait_for_batch_mates(queue, policy)
                batch = self._take(queue, policy.max_size)
                if batch:
                    await self._run_batch(model, batch)
        finally:
            queue.running = False
            if queue.pending:  # only when cancelled at shutdown: nobody will run them
                for item in queue.pending:
                    item.future.cancel()
                queue.pending.clear()
                queue.rows = 0

    async def _wait_for_batch_mates(self, queue: _ModelQueue, policy: BatchPolicy) -> None:
        if policy.max_delay_ms <= 0 or queue.rows >= policy.max_size:
            return
        deadline_ns = queue.pending[0].enqueued_ns + int(policy.max_delay_ms * 1_000_000)
        remaining = (deadline_ns - time.perf_counter_ns()) / 1e9
        if remaining <= 0:
            return
        queue.filled.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(queue.filled.wait(), remaining)

    def _take(self, queue: _ModelQueue, max_size: int) -> list[_Pending]:
        """The oldest request, then later ones that can merge with it, up to ``max_size`` rows."""
        first = queue.pending.popleft()
        batch, rows, kept = [first], first.rows, deque[_Pending]()
        while queue.pending:
            item = queue.pending.popleft()
            if item.key == first.key and rows + item.rows <= max_size:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        queue.pending = kept
        queue.rows = sum(item.rows for item in kept)
        return [item for item in batch if not item.future.done()]  # drop requests whose client left

    async def _run_batch(self, model: OnnxModel, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        if len(batch) == 1:
            await self._run_alone(model, batch[0], started)
            return
        names = list(batch[0].inputs)
        merged = {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}
        total = sum(item.rows for item in batch)
        try:
            results = await self._execute(model, merged, None)
            if any(array.ndim == 0 or array.shape[0] != total for array in results.values()):
                raise ValueError("an output does not follow the batch dimension")
        except Exception:
            for item in batch:  # find the culprit: every request gets its own outcome
                await self._run_alone(model, item, started)
            return
        offset = 0
        for index, item in enumerate(batch):
            end = offset + item.rows
            if not item.future.done():
                split = {name: array[offset:end] for name, array in results.items()}
                item.future.set_result((split, started - item.enqueued_ns, index == 0))
            offset = end

    async def _run_alone(self, model: OnnxModel, item: _Pending, started: int) -> None:
        try:
            results = await self._execute(model, item.inputs, None)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result((results, started - item.enqueued_ns, True))
