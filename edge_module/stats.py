"""Per model-version inference statistics in Triton's ``/stats`` shape. Plain integer counters: cheap."""

from __future__ import annotations

import time
from typing import Any

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class VersionStats:
    __slots__ = ("counts", "execution_count", "inference_count", "last_inference_ms", "nanos")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_PHASES, 0)
        self.nanos = dict.fromkeys(_PHASES, 0)
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def record_success(
        self,
        batch: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        total_ns: int,
        executions: int = 1,  # 0 for a request that rode in a merged (batched) run counted by another
    ) -> None:
        counts, nanos = self.counts, self.nanos
        counts["success"] += 1
        nanos["success"] += total_ns
        counts["queue"] += 1
        nanos["queue"] += queue_ns
        counts["compute_input"] += 1
        nanos["compute_input"] += input_ns
        counts["compute_infer"] += 1
        nanos["compute_infer"] += infer_ns
        counts["compute_output"] += 1
        nanos["compute_output"] += output_ns
        self.inference_count += batch
        self.execution_count += executions
        self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, total_ns: int) -> None:
        self.counts["fail"] += 1
        self.nanos["fail"] += total_ns

    def record_batched_execution(self) -> None:
        self.execution_count += 1


class InferenceStats:
    def __init__(self) -> None:
        self._by_version: dict[tuple[str, str], VersionStats] = {}

    def for_version(self, name: str, version: str) -> VersionStats:
        key = (name, version)
        stats = self._by_version.get(key)
        if stats is None:
            stats = self._by_version[key] = VersionStats()
        return stats

    def items(self) -> list[tuple[tuple[str, str], VersionStats]]:
        return list(self._by_version.items())

    def report(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        entries = []
        for (model, ver), stats in sorted(self._by_version.items()):
            if (name and model != name) or (version and ver != version):
                continue
            entries.append(
                {
                    "name": model,
                    "version": ver,
                    "last_inference": stats.last_inference_ms,
                    "inference_count": stats.inference_count,
                    "execution_count": stats.execution_count,
                    "inference_stats": {
                        phase: {"count": stats.counts[phase], "ns": stats.nanos[phase]} for phase in _PHASES
                    },
                    "batch_stats": [],
                }
            )
        return {"model_stats": entries}
