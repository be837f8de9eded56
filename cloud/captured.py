"""Captured production rows of one model as a table, and ground-truth labels joined to them.

The join key is ``(correlationId, row)``: ``row`` is the row's index in its request (0 for a single-row
request). A label file without a ``row`` column joins on ``correlationId`` alone, which is only unambiguous for
single-row requests: a label whose id names a multi-row request is counted as ambiguous, not guessed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloud.capture_records import ReadStats, RecordReader
from cloud.capture_sources import SourceDigest, iter_files, redacted
from cloud.errors import DataError

ID_COLUMNS = ("correlationId", "correlation_id", "id")
ROW_COLUMN = "row"
META_COLUMNS = ("correlationId", "row", "deviceId", "model", "version", "time")


@dataclass
class Capture:
    """The records of one model read from a source, and what was skipped on the way."""

    source: str
    model: str
    records: list[dict[str, Any]]
    stats: ReadStats
    sha256: str
    other_models: Counter[str] = field(default_factory=Counter)
    outside_window: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "read": self.stats.to_dict(),
            "records": len(self.records),
            "otherModels": dict(self.other_models),
            "outsideWindow": self.outside_window,
        }


def parse_time(text: str, what: str = "time") -> datetime:
    """ISO 8601 (``Z`` or an offset; a naive time is UTC) to an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise DataError(f"{what}: {text!r} is not an ISO 8601 time (e.g. 2026-12-04T15:00:00Z)") from error
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def read_capture(
    source: str, model: str, since: datetime | None = None, until: datetime | None = None, credential: Any = None
) -> Capture:
    """Every record of ``model`` in ``source`` with ``since <= time < until``; records of other models are
    counted, not returned. Raises DataError when the source holds no record of the model at all."""
    reader = RecordReader()
    digest = SourceDigest()
    records: list[dict[str, Any]] = []
    others: Counter[str] = Counter()
    outside = 0
    for file in iter_files(source, credential):
        digest.add(file)
        for record in reader.read(file.name, file.payload):
            if record["model"] != model:
                others[record["model"]] += 1
                continue
            try:
                stamp = parse_time(record["time"])
            except DataError:
                reader.stats.invalid_records += 1
                reader.stats.note(f"{file.name}: record time {record['time']!r} is not ISO 8601")
                continue
            if (since is not None and stamp < since) or (until is not None and stamp >= until):
                outside += 1
                continue
            record["timestamp"] = stamp
            records.append(record)
    capture = Capture(redacted(source), model, records, reader.stats, digest.hexdigest(), others, outside)
    if not records and not outside:
        if reader.stats.files == 0:
            raise DataError(f"no files in {redacted(source)}")
        found = ", ".join(f"{name} ({count})" for name, count in others.most_common()) or "none"
        raise DataError(
            f"no capture records of model {model!r} in {redacted(source)}: {reader.stats.records} records read, "
            f"of other models: {found}"
        )
    return capture


def records_frame(records: list[dict[str, Any]], features: tuple[str, ...]) -> Any:
    """One row per record: the meta columns, then one column per feature (from ``inputs``), then outputs as
    ``output:<name>``. Raises DataError naming the features the records lack or have in excess."""
    import pandas as pd

    seen: set[str] = set()
    for record in records:
        seen.update(record["inputs"])
    missing = [f for f in features if f not in seen]
    extra = sorted(seen - set(features))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing features {missing}")
        if extra:
            parts.append(f"unexpected inputs {extra}")
        raise DataError(
            "the captured inputs do not match the model's features: "
            + "; ".join(parts)
            + f" (expected {list(features)})"
        )
    rows = []
    for record in records:
        row = {key: record.get(key) for key in META_COLUMNS}
        row["timestamp"] = record["timestamp"]
        for name in features:
            row[name] = record["inputs"].get(name)
        for name, value in record["outputs"].items():
            row[f"output:{name}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Labels:
    frame: Any  # correlationId, [row], label
    source: str
    sha256: str
    by_row: bool


def read_labels(path: Path, label_column: str) -> Labels:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"no such label file: {path}")
    payload = path.read_bytes()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS})
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataError(f"cannot read labels {path}: {error}") from error
    id_column = next((c for c in ID_COLUMNS if c in frame.columns), None)
    if id_column is None:
        raise DataError(f"labels {path} have no correlation id column (one of {list(ID_COLUMNS)})")
    if label_column not in frame.columns:
        raise DataError(f"labels {path} have no column {label_column!r}; columns: {list(frame.columns)}")
    by_row = ROW_COLUMN in frame.columns
    columns = [id_column, *([ROW_COLUMN] if by_row else []), label_column]
    frame = frame[columns].rename(columns={id_column: "correlationId", label_column: "label"})
    frame = frame[frame["label"].notna()]
    frame["correlationId"] = frame["correlationId"].astype(str)
    if by_row:
        frame[ROW_COLUMN] = pd.to_numeric(frame[ROW_COLUMN], errors="coerce").fillna(0).astype(int)
    return Labels(frame.reset_index(drop=True), str(path), hashlib.sha256(payload).hexdigest(), by_row)


@dataclass(frozen=True)
class Joined:
    frame: Any  # the records frame with a ``label`` column, labelled rows only
    matched: int
    unknown: int  # labels whose id is in no captured record
    ambiguous: int  # labels without a row whose id names a multi-row request
    duplicate: int  # labels given twice for the same key (the first is kept)

    def summary(self) -> dict[str, int]:
        return {"matched": self.matched, "unknownIds": self.unknown, "ambiguous": self.ambiguous,
                "duplicates": self.duplicate}  # fmt: skip


def join_labels(frame: Any, labels: Labels) -> Joined:
    import pandas as pd

    table = labels.frame
    keys = ["correlationId", ROW_COLUMN] if labels.by_row else ["correlationId"]
    duplicate = int(table.duplicated(keys).sum())
    table = table.drop_duplicates(keys)
    records = frame.copy()
    records[ROW_COLUMN] = records[ROW_COLUMN].fillna(0).astype(int)
    ambiguous = 0
    if not labels.by_row:
        rows_per_id = records.groupby("correlationId")[ROW_COLUMN].nunique()
        multi = set(rows_per_id[rows_per_id > 1].index)
        ambiguous = int(table["correlationId"].isin(multi).sum())
        table = table[~table["correlationId"].isin(multi)]
    known = records[keys].drop_duplicates()
    merged = table.merge(known, on=keys, how="left", indicator=True)
    unknown = int((merged["_merge"] == "left_only").sum())
    joined = records.merge(table, on=keys, how="inner")
    joined = joined.drop_duplicates(["correlationId", ROW_COLUMN])
    return Joined(pd.DataFrame(joined).reset_index(drop=True), len(joined), unknown, ambiguous, duplicate)
