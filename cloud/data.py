"""Load a table, infer column types, clean it, and describe it.

Sources: a CSV or Parquet path, JSON lines captured on a device (a file, or a folder of them),
``sklearn:<name>`` (a dataset shipped with scikit-learn), and, with Azure configured, an ``azureml://``
datastore URI or an Azure Blob URL (see cloud/azure_data.py).

Conventions the ONNX graph relies on: numeric columns are float32 (what devices send as FP32), with NaN for
missing; string columns are ``str``, with the empty string for missing (an ONNX string tensor has no NaN).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud.errors import DataError
from edge_module.model_contract import Feature

SKLEARN_PREFIX = "sklearn:"
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "digits")
MISSING_STRING = ""
MAX_CLASSES = 50
ID_NAMES = ("id", "uuid", "guid", "index", "key")


@dataclass(frozen=True)
class DataReport:
    source: str
    rows: int
    columns: int
    target: str | None
    task: str
    missing_percent: dict[str, float]
    column_types: dict[str, str]
    dropped: dict[str, str]
    class_balance: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "columns": self.columns,
            "target": self.target,
            "task": self.task,
            "missing_percent": self.missing_percent,
            "column_types": self.column_types,
            "dropped": self.dropped,
            "class_balance": self.class_balance,
        }


@dataclass(frozen=True)
class Dataset:
    """Clean features (one column per raw device field), the target, and what was done to get there."""

    features: Any  # pandas.DataFrame
    target: Any  # pandas.Series, or None for clustering
    task: str
    schema: tuple[Feature, ...]
    report: DataReport

    @property
    def numeric_columns(self) -> list[str]:
        return [f.name for f in self.schema if f.type == "numeric"]

    @property
    def string_columns(self) -> list[str]:
        return [f.name for f in self.schema if f.type == "string"]


def read_table(source: str) -> Any:
    """Read a source into a DataFrame; for ``sklearn:`` datasets the target column is named ``target``."""
    import pandas as pd

    if source.startswith(SKLEARN_PREFIX):
        return _sklearn_frame(source[len(SKLEARN_PREFIX) :])
    if source.startswith(("azureml://", "https://")):
        from cloud.azure_data import download

        return _parse_bytes(download(source), source)
    path = Path(source)
    if path.is_dir() or path.suffix.lower() == ".jsonl":
        return read_capture(path)
    if not path.is_file():
        raise DataError(f"no such data file: {source}")
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty: {source}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError as error:
        raise DataError(f"data file is empty: {source}") from error


def read_capture(path: Path) -> Any:
    """Captured rows (edge_module/capture.py): a segment file or a folder of them, or what IoT Hub routing stored
    (Avro or JSON; cloud/capture_records.py). One column per input feature, plus ``prediction``: the first
    output with one value per row (a class label or a regression value). Provenance (correlation id, device,
    model, version, time) is dropped. The module's older flat lines read the same way."""
    import pandas as pd

    from cloud.capture_records import RecordReader

    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    reader = RecordReader()
    rows = []
    for file in files:
        for record in reader.read(file.name, file.read_bytes()):
            row = dict(record["inputs"])
            scalar = [v for v in record["outputs"].values() if not isinstance(v, list | dict)]
            if scalar:
                row["prediction"] = scalar[0]
            rows.append(row)
    if not rows:
        raise DataError(f"no captured records in {path}")
    return pd.DataFrame(rows)


def _parse_bytes(payload: bytes, source: str) -> Any:
    import pandas as pd

    if not payload:
        raise DataError(f"data is empty: {source}")
    if source.split("?")[0].lower().endswith((".parquet", ".pq")):
        return pd.read_parquet(io.BytesIO(payload))
    return pd.read_csv(io.BytesIO(payload))


def _sklearn_frame(name: str) -> Any:
    import sklearn.datasets

    if name not in SKLEARN_DATASETS:
        raise DataError(f"unknown scikit-learn dataset {name!r}; choose from {', '.join(SKLEARN_DATASETS)}")
    bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    if "target" not in frame.columns and hasattr(bunch, "target"):
        frame["target"] = bunch.target
    return frame


def default_target(source: str, task: str | None) -> str | None:
    if task == "clustering":
        return None
    return "target" if source.startswith(SKLEARN_PREFIX) else None


def infer_task(target: Any) -> str:
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.dropna().to_numpy()
    is_integral = bool(np.all(np.equal(np.mod(values, 1), 0)))
    return (
        "classification" if is_integral and target.nunique() <= min(MAX_CLASSES, len(values) // 5 + 2) else "regression"
    )


def load_dataset(
    source: str,
    target: str | None = None,
    task: str | None = None,
    drop: tuple[str, ...] = (),
) -> Dataset:
    """Read and clean a source. ``target`` None means clustering unless the source has a known target."""
    frame = read_table(source)
    if target is None:
        target = default_target(source, task)
    if target is None and source.startswith(SKLEARN_PREFIX):
        # Clustering a labelled dataset: the label must not leak in as a feature.
        drop = (*drop, "target")
    return prepare(frame, source=source, target=target, task=task, drop=drop)


def prepare(
    frame: Any, *, source: str = "<frame>", target: str | None, task: str | None = None, drop: tuple[str, ...] = ()
) -> Dataset:
    import pandas as pd

    if frame is None or len(frame) == 0 or len(frame.columns) == 0:
        raise DataError(f"no rows in {source}")
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    if task is not None and task not in ("classification", "regression", "clustering"):
        raise DataError(f"unknown task {task!r}")
    if task == "clustering":
        target = None
    if target is not None and target not in frame.columns:
        raise DataError(f"target column {target!r} not in the data; columns: {', '.join(frame.columns)}")
    if target is None and task in ("classification", "regression"):
        raise DataError(f"a {task} task needs --target")

    y = None
    if target is not None:
        frame = frame[frame[target].notna()]
        if len(frame) == 0:
            raise DataError(f"target column {target!r} has no values")
        y = frame.pop(target).reset_index(drop=True)
        frame = frame.reset_index(drop=True)
        task = task or infer_task(y)
        if task == "classification":
            if y.nunique() < 2:
                raise DataError(f"target column {target!r} has a single class ({y.iloc[0]!r}); nothing to learn")
            y = _class_labels(y)
        else:
            if not pd.api.types.is_numeric_dtype(y):
                raise DataError(f"regression target {target!r} is not numeric")
            y = y.astype(np.float64)
    task = task or "clustering"

    dropped = {name: "requested" for name in drop if name in frame.columns}
    frame = frame.drop(columns=list(dropped))
    missing_percent = {c: round(float(frame[c].isna().mean() * 100), 3) for c in frame.columns}
    schema: list[Feature] = []
    for column in list(frame.columns):
        reason = _drop_reason(frame[column], column)
        if reason:
            dropped[column] = reason
            frame = frame.drop(columns=[column])
            continue
        if _is_numeric(frame[column]):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float32)
            schema.append(Feature(column, "numeric"))
        else:
            frame[column] = frame[column].map(lambda v: MISSING_STRING if _is_missing(v) else str(v)).astype(object)
            schema.append(Feature(column, "string"))
    if not schema:
        raise DataError(f"no usable feature columns in {source} (dropped: {dropped})")

    report = DataReport(
        source=source,
        rows=len(frame),
        columns=len(schema),
        target=target,
        task=task,
        missing_percent=missing_percent,
        column_types={f.name: f.type for f in schema},
        dropped=dropped,
        class_balance={str(k): int(v) for k, v in y.value_counts().sort_index().items()}
        if task == "classification" and y is not None
        else {},
    )
    return Dataset(features=frame, target=y, task=task, schema=tuple(schema), report=report)


def _class_labels(y: Any) -> Any:
    """Integers stay int64 labels; anything else becomes strings (ONNX has int64 or string labels)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y):
        values = y.to_numpy()
        if np.all(np.equal(np.mod(values, 1), 0)):
            return y.astype(np.int64)
    return y.astype(str).astype(object)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _is_numeric(column: Any) -> bool:
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return False
    if pd.api.types.is_numeric_dtype(column):
        return True
    present = column.dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().all())


def _drop_reason(column: Any, name: str) -> str | None:
    import pandas as pd

    present = column.dropna()
    if present.nunique() <= 1:
        return "constant"
    rows = len(column)
    unique = present.nunique()
    looks_like_id_name = name.lower() in ID_NAMES or name.lower().endswith(("_id", "-id", " id"))
    if unique == rows and rows >= 20:
        if not _is_numeric(column):
            return "id-like (every value distinct)"
        numeric = pd.to_numeric(present, errors="coerce")
        integral = bool(np.all(np.equal(np.mod(numeric.to_numpy(dtype=float), 1), 0)))
        if integral and (looks_like_id_name or numeric.is_monotonic_increasing):
            return "id-like (distinct increasing integers)"
    if looks_like_id_name and unique > 0.9 * rows:
        return "id-like (name and distinct values)"
    if not _is_numeric(column) and rows >= 20 and unique > 0.5 * rows:
        return "id-like (high-cardinality text)"
    return None
