"""The data plane: health, metadata and inference over the repository. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edge_module import __version__
from edge_module.batching import Batcher, BatchPolicy
from edge_module.codec import decode_request, encode_response
from edge_module.correlation import new_correlation_id
from edge_module.errors import EdgeError, InferenceError, InvalidInput
from edge_module.repository import ModelRepository
from edge_module.runtime import OnnxModel
from edge_module.stats import InferenceStats, VersionStats

SERVER_NAME = "edge-module"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "schedule_policy")
PLATFORM = "onnxruntime_onnx"

_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


# (model, inputs, results, queue_ns, compute_ns, total_ns, correlation_id) of one successful request.
InferenceObserver = Callable[[OnnxModel, dict[str, np.ndarray], dict[str, np.ndarray], int, int, int, str], None]
# (model, error) of one request that failed after its model was chosen.
FailureObserver = Callable[[OnnxModel, EdgeError], None]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        stats: InferenceStats,
        inference_workers: int = 2,
        batching: BatchPolicy | None = None,
    ) -> None:
        self.repository = repository
        self.stats = stats
        self._executor = ThreadPoolExecutor(max_workers=inference_workers, thread_name_prefix="infer")
        self.batcher = Batcher(batching or BatchPolicy(), self._execute)
        # Called after each successful inference; each must be O(1) and must not raise (edge_module/metrics.py).
        self.observers: list[InferenceObserver] = []
        self.failure_observers: list[FailureObserver] = []

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- health and metadata ---------------------------------------------------------------------

    def ready(self) -> bool:
        return self.repository.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.repository.get(name, version)
        served = self.repository.served(name)
        versions = list(served.versions) if served else [model.version]
        meta = model.metadata
        return {
            "name": name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [spec.as_dict() for spec in model.inputs],
            "outputs": [spec.as_dict() for spec in model.outputs],
            "parameters": {
                "active_version": served.active.version if served else model.version,
                "sha256": model.sha256,
                "task": meta.task,
                "feature_names": list(meta.feature_names),
                "class_labels": list(meta.class_labels),
            },
        }

    def model_ready(self, name: str, version: str | None) -> bool:
        self.repository.get(name, version)
        return True

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.repository.get(name, version)

        def tensor(spec_dict: dict[str, Any]) -> dict[str, Any]:
            return {
                "name": spec_dict["name"],
                "data_type": _TRITON_TYPES.get(spec_dict["datatype"], "TYPE_INVALID"),
                "dims": spec_dict["shape"],
            }

        config: dict[str, Any] = {
            "name": name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "version_policy": {"specific": {"versions": [model.version]}},
            "input": [tensor(spec.as_dict()) for spec in model.inputs],
            "output": [tensor(spec.as_dict()) for spec in model.outputs],
            "parameters": {"execution": {"string_value": "inline" if model.runs_inline else "thread_pool"}},
        }
        if self.batcher.applies_to(model):
            # Shapes keep their batch dimension (max_batch_size 0); the policy is reported Triton-style.
            policy = self.batcher.policy_for(name)
            config["dynamic_batching"] = {
                "max_batch_size": policy.max_size,
                "max_queue_delay_microseconds": int(policy.max_delay_ms * 1000),
            }
        return config

    def repository_index(self) -> list[dict[str, Any]]:
        index = []
        for name, served in sorted(self.repository.snapshot().items()):
            for version in served.versions:
                state = "READY"
                index.append({"name": name, "version": version, "state": state, "reason": ""})
        return index

    def model_stats(self, name: str | None, version: str | None) -> dict[str, Any]:
        if name:
            self.repository.get(name, version)
        return self.stats.report(name, version)

    # -- inference -------------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, body: bytes, header_length: int | None
    ) -> tuple[bytes, int | None]:
        """Decode, validate, run and encode one V2 request; returns the body and binary header length.

        The response's ``id`` is the request's, or a new correlation id when it has none (or an empty one).
        """
        clock = time.perf_counter_ns
        started = clock()
        # One reference for the whole request: a concurrent swap cannot change the version under it.
        model = self.repository.get(name, version)
        stats = self.stats.for_version(name, model.version)
        try:
            request = decode_request(body, header_length, model)
            correlation_id = request.id = request.id or new_correlation_id()
            inputs = request.inputs
            model.validate(inputs)
            decoded = clock()
            wanted = [output for output, _ in request.outputs] if request.outputs else None
            if model.runs_inline and not self.batcher.applies_to(model):
                # Inline, as _run would, minus a coroutine: this is most requests to a small model.
                try:
                    results, queued, executions = model.run(inputs, wanted), 0, 1
                except Exception as exc:
                    raise _run_error(model, exc) from exc
            else:
                results, queued, executions = await self._run(model, inputs, wanted)
            ran = clock()
            encoded = encode_response(name, model.version, results, request)
        except EdgeError as exc:
            stats.record_failure(clock() - started)
            for failure_observer in self.failure_observers:
                failure_observer(model, exc)
            raise
        finished = clock()
        self._succeeded(
            model,
            stats,
            inputs,
            results,
            queued,
            decoded - started,
            ran - decoded - queued,
            finished - ran,
            executions,
            correlation_id,
        )
        return encoded

    async def infer_arrays(
        self, name: str, version: str | None, inputs: dict[str, np.ndarray], correlation_id: str | None = None
    ) -> tuple[OnnxModel, dict[str, np.ndarray]]:
        """Inference on already-decoded tensors (edgeHub messages). Returns the model that ran."""
        started = time.perf_counter_ns()
        model = self.repository.get(name, version)
        stats = self.stats.for_version(name, model.version)
        try:
            model.validate(inputs)
            if model.runs_inline and not self.batcher.applies_to(model):
                try:  # as in infer: no coroutine for a small model
                    results, queued, executions = model.run(inputs, None), 0, 1
                except Exception as exc:
                    raise _run_error(model, exc) from exc
            else:
                results, queued, executions = await self._run(model, inputs, None)
        except EdgeError as exc:
            stats.record_failure(time.perf_counter_ns() - started)
            for failure_observer in self.failure_observers:
                failure_observer(model, exc)
            raise
        elapsed = time.perf_counter_ns() - started
        correlation_id = correlation_id or new_correlation_id()
        self._succeeded(model, stats, inputs, results, queued, 0, elapsed - queued, 0, executions, correlation_id)
        return model, results

    def _succeeded(
        self,
        model: OnnxModel,
        stats: VersionStats,
        inputs: dict[str, np.ndarray],
        results: dict[str, np.ndarray],
        queue_ns: int,
        input_ns: int,
        compute_ns: int,
        output_ns: int,
        executions: int,
        correlation_id: str,
    ) -> None:
        """Count a successful request and show it to the observers."""
        total = queue_ns + input_ns + compute_ns + output_ns
        stats.record_success(_batch_size(inputs), queue_ns, input_ns, compute_ns, output_ns, total, executions)
        for observer in self.observers:
            observer(model, inputs, results, queue_ns, compute_ns, total, correlation_id)

    async def _run(
        self, model: OnnxModel, inputs: dict[str, np.ndarray], output_names: list[str] | None
    ) -> tuple[dict[str, np.ndarray], int, int]:
        """Outputs, nanoseconds queued for a batch, and executions to count (0 when another request counted it)."""
        try:
            if self.batcher.applies_to(model):
                results, queued, counted = await self.batcher.run(model, inputs)
                return results, queued, int(counted)
            return await self._execute(model, inputs, output_names), 0, 1
        except EdgeError:
            raise
        except Exception as exc:
            raise _run_error(model, exc) from exc

    async def _execute(
        self, model: OnnxModel, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        """Inline or in a worker thread, as the model's service time says (the batcher runs merged batches so)."""
        if model.runs_inline:
            return model.run(inputs, output_names)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, model.run, inputs, output_names)


def _run_error(model: OnnxModel, exc: Exception) -> EdgeError:
    """What a failed run means for the client. onnxruntime's errors are not a stable API: go by name."""
    if type(exc).__name__ in ("InvalidArgument", "InvalidGraph"):
        return InvalidInput(f"model '{model.name}' rejected the input: {exc}")
    return InferenceError(f"model '{model.name}' version {model.version} failed to run: {exc}")


def _batch_size(inputs: dict[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0
