"""V2 tensor datatypes and their numpy and onnxruntime equivalents."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# V2 datatype -> numpy dtype. BYTES maps to object (ORT's string tensors are object arrays of str).
V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

NUMPY_TO_V2: dict[np.dtype[np.generic], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def v2_datatype_of(array: np.ndarray) -> str:
    name = NUMPY_TO_V2.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in ("O", "U", "S"):
        return "BYTES"
    raise TypeError(f"no V2 datatype for numpy dtype {array.dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, V2 datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # The dimensions after the first when only the first may vary (the usual [-1, features]), else None.
    _fixed_tail: tuple[int, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tail = self.shape[1:]
        object.__setattr__(self, "_fixed_tail", tail if self.shape and -1 not in tail else None)

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        return V2_TO_NUMPY[self.datatype]

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        tail = self._fixed_tail
        if tail is not None:
            return shape[1:] == tail and self.shape[0] in (-1, shape[0])
        return all(expected in (-1, actual) for expected, actual in zip(self.shape, shape, strict=True))

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
