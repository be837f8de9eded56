"""One loaded ONNX model version: its onnxruntime session, signature and request validation."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_module.errors import InvalidInput, ModelLoadError
from edge_module.model_contract import ModelMetadata
from edge_module.store import VERSION_PATTERN
from edge_module.tensors import FLOAT_TYPES, ORT_TO_V2, TensorSpec

WARMUP_RUNS = 5


@dataclass(frozen=True)
class SessionConfig:
    intra_op_threads: int = 1
    inline_threshold_ms: float = 1.0


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape)


def _spec(node: Any, role: str) -> TensorSpec:
    datatype = ORT_TO_V2.get(node.type)
    if datatype is None:
        hint = " (convert classifiers with zipmap=False)" if "map" in node.type else ""
        raise ModelLoadError(f"{role} '{node.name}' has unsupported type {node.type}{hint}")
    return TensorSpec(name=node.name, datatype=datatype, shape=_dims(node.shape))


def _safe_version(version: str | None) -> str:
    if version and VERSION_PATTERN.fullmatch(version):
        return version
    return "1"


class OnnxModel:
    """An immutable, thread-safe model version. onnxruntime sessions may be run concurrently."""

    def __init__(self, name: str, version: str | None, sha256: str, model_bytes: bytes, config: SessionConfig) -> None:
        """``version`` None takes the version from the model's metadata, else "1"."""
        import onnxruntime as ort

        self.name = name
        self.sha256 = sha256
        self.size = len(model_bytes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelLoadError(f"model '{name}' version {version or '?'} is not a loadable ONNX file: {exc}") from exc
        # The session's Python wrapper re-checks every feed (names, OrtValue ownership, graph capture,
        # provider fallback): about 1.5 µs a call, a quarter of a small model's run. We validate inputs
        # ourselves, pass numpy arrays and use the CPU provider only, so call the binding it wraps.
        self._run = getattr(self._session, "_sess", self._session).run
        self.inputs = tuple(_spec(node, "input") for node in self._session.get_inputs())
        self.outputs = tuple(_spec(node, "output") for node in self._session.get_outputs())
        self._inputs_by_name = {spec.name: spec for spec in self.inputs}
        self._input_names = frozenset(self._inputs_by_name)
        self.output_names = tuple(spec.name for spec in self.outputs)
        self._all_outputs = list(self.output_names)
        # Every input and output has a dynamic leading (batch) dimension: requests can be merged.
        self.batchable = all(spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs))
        meta = self._session.get_modelmeta()
        self.metadata = ModelMetadata.from_props(dict(meta.custom_metadata_map))
        self.version = version or _safe_version(self.metadata.version)
        self.producer = meta.producer_name
        self.service_time_ms = 0.0
        self.inline_threshold_ms = config.inline_threshold_ms
        # The codec's decoded binary request headers for this version (edge_module/codec.py).
        self.decode_plans: dict[bytes, Any] = {}

    @property
    def runs_inline(self) -> bool:
        """Microsecond models run on the event loop: a thread hop would cost more than the model."""
        return self.service_time_ms <= self.inline_threshold_ms

    def input_spec(self, name: str) -> TensorSpec:
        try:
            return self._inputs_by_name[name]
        except KeyError:
            expected = ", ".join(self._inputs_by_name)
            raise InvalidInput(f"unexpected input '{name}' for model '{self.name}'; expected: {expected}") from None

    def validate(self, inputs: Mapping[str, np.ndarray]) -> None:
        if inputs.keys() != self._input_names:
            self._check_names(inputs)
        batch: int | None = None
        for name, array in inputs.items():
            spec = self._inputs_by_name[name]
            shape = array.shape
            if not spec.shape_matches(shape):
                raise InvalidInput(
                    f"input '{name}' has shape {list(shape)}, model '{self.name}' expects {list(spec.shape)}"
                )
            if array.size == 0:
                raise InvalidInput(f"input '{name}' is empty (shape {list(shape)})")
            if shape and spec.shape and spec.shape[0] == -1:
                if batch is not None and shape[0] != batch:
                    raise InvalidInput(f"input '{name}' has batch size {shape[0]}, other inputs have {batch}")
                batch = shape[0]
            if spec.datatype in FLOAT_TYPES:
                self._check_finite(name, array)

    def _check_names(self, inputs: Mapping[str, np.ndarray]) -> None:
        missing = [name for name in self._inputs_by_name if name not in inputs]
        if missing:
            raise InvalidInput(f"missing input(s) {', '.join(repr(m) for m in missing)} for model '{self.name}'")
        for name in inputs:
            self.input_spec(name)

    def _check_finite(self, name: str, array: np.ndarray) -> None:
        # One dot product (BLAS) is cheaper than an element-wise test: NaN and inf propagate into it. Only
        # a non-finite result (bad data, or finite values whose squares overflow) needs the element-wise check.
        if math.isfinite(np.vdot(array, array)):
            return
        if self.metadata.allow_missing:
            if np.isinf(array).any():
                raise InvalidInput(f"input '{name}' contains inf; only finite values or NaN (missing) are accepted")
        elif not np.isfinite(array).all():
            raise InvalidInput(f"input '{name}' contains NaN or inf; model '{self.name}' accepts finite values only")

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else self._all_outputs
        feed = inputs if type(inputs) is dict else dict(inputs)
        return dict(zip(names, self._run(names, feed, None), strict=True))

    def sample_inputs(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zeros (empty strings for BYTES) shaped like the signature, for warm-up."""
        samples: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = tuple(
                batch if i == 0 and dim == -1 else (1 if dim == -1 else dim) for i, dim in enumerate(spec.shape)
            )
            if spec.datatype == "BYTES":
                samples[spec.name] = np.full(shape, "", dtype=object)
            else:
                samples[spec.name] = np.zeros(shape, dtype=spec.numpy_dtype)
        return samples

    def warm_up(self) -> float:
        """Run the model a few times; record the median service time. Raises ModelLoadError if it cannot run."""
        samples = self.sample_inputs()
        timings: list[float] = []
        try:
            for _ in range(WARMUP_RUNS):
                start = time.perf_counter()
                self.run(samples)
                timings.append((time.perf_counter() - start) * 1000.0)
        except Exception as exc:
            raise ModelLoadError(f"model '{self.name}' version {self.version} failed its warm-up run: {exc}") from exc
        self.service_time_ms = statistics.median(timings)
        if not math.isfinite(self.service_time_ms):
            self.service_time_ms = 0.0
        return self.service_time_ms

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "inputs": [spec.as_dict() for spec in self.inputs],
            "outputs": [spec.as_dict() for spec in self.outputs],
            "service_time_ms": round(self.service_time_ms, 4),
        }
