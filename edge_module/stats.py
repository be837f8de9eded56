"""Per model-version inference statistics in Triton's ``/stats`` shape. Plain integer counters: cheap."""

from __future__ import annotations

import time
from typing import Any

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class VersionStats:
    """Counters on slots: a request adds to a few integers; dicts are built only when read."""

    __slots__ = (
        "execution_count",
        "fail_count",
        "fail_ns",
        "infer_ns",
        "inference_count",
        "input_ns",
        "last_inference",
        "output_ns",
        "queue_ns",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_ns = 0
        self.input_ns = 0
        self.infer_ns = 0
        self.output_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0.0  # seconds since the epoch

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
        self.success_count += 1
        self.success_ns += total_ns
        self.queue_ns += queue_ns
        self.input_ns += input_ns
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.inference_count += batch
        self.execution_count += executions
        self.last_inference = time.time()

    def record_failure(self, total_ns: int) -> None:
        self.fail_count += 1
        self.fail_ns += total_ns

    def record_batched_execution(self) -> None:
        self.execution_count += 1

    @property
    def last_inference_ms(self) -> int:
        return int(self.last_inference * 1000)

    @property
    def counts(self) -> dict[str, int]:
        # Every successful request passes through each phase once (Triton counts them the same way).
        done = self.success_count
        return {"success": done, "fail": self.fail_count} | dict.fromkeys(_PHASES[2:], done)

    @property
    def nanos(self) -> dict[str, int]:
        return {
            "success": self.success_ns,
            "fail": self.fail_ns,
            "queue": self.queue_ns,
            "compute_input": self.input_ns,
            "compute_infer": self.infer_ns,
            "compute_output": self.output_ns,
        }


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
            counts, nanos = stats.counts, stats.nanos
            entries.append(
                {
                    "name": model,
                    "version": ver,
                    "last_inference": stats.last_inference_ms,
                    "inference_count": stats.inference_count,
                    "execution_count": stats.execution_count,
                    "inference_stats": {phase: {"count": counts[phase], "ns": nanos[phase]} for phase in _PHASES},
                    "batch_stats": [],
                }
            )
        return {"model_stats": entries}
