"""Captured records out of what IoT Hub message routing writes to a storage endpoint, and the module's segments.

Three file layouts are read (docs/monitoring-and-retraining.md, "What is read"):

- **Avro** (a routing storage endpoint's default encoding): an Avro object container file, one record per
  routed message with ``EnqueuedTimeUtc`` (string), ``Properties`` (map: application properties),
  ``SystemProperties`` (map: ``connectionDeviceId``, ``connectionModuleId``, ``messageId``, ``contentType``,
  ``contentEncoding``, ``enqueuedTime``, ...) and ``Body`` (bytes: the message as sent). Map values are read
  whatever their Avro type (string, bytes, long, ...), so Event Hubs Capture files read too.
- **JSON** (``--encoding json``): one JSON object per line with the same four keys. ``Body`` is the message's
  JSON value when it was sent with ``contentType: application/json`` and ``contentEncoding: utf-8`` and is
  valid JSON; otherwise a base64 string of its bytes. A capture segment of more than one record is JSON
  *lines*, not one JSON value, so both forms occur; a ``Body`` that is an object or a list of objects is
  taken as records directly.
- **Segment files** (``capture-*.jsonl`` from the device's ring, or any ``.jsonl``): the JSON lines of a
  message body, as they are.

A message body holds capture records, one JSON object per line (edge_module/capture.py). The module's
older flat lines (``{"_model", "_version", "_time", <feature>..., "prediction"}``) are read as records too.

Nothing here is fatal to the read: a corrupt Avro block, an unreadable line or a record without the
required keys is skipped and counted in ``ReadStats``. Repeated messages (the same ``segment`` property
or message id: at-least-once delivery) and repeated records are dropped and counted.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

AVRO_MAGIC = b"Obj\x01"
SYNC_SIZE = 16
# The Avro container file header (Avro 1.11 specification, "Object Container Files").
_AVRO_HEADER = {
    "type": "record",
    "name": "org.apache.avro.file.Header",
    "fields": [
        {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": 4}},
        {"name": "meta", "type": {"type": "map", "values": "bytes"}},
        {"name": "sync", "type": {"type": "fixed", "name": "Sync", "size": 16}},
    ],
}
REQUIRED_KEYS = ("correlationId", "model", "version", "time", "inputs")
LEGACY_KEYS = ("_model", "_version", "_time")


@dataclass
class ReadStats:
    """What a read found and what it skipped, by reason (all counts)."""

    files: int = 0
    messages: int = 0
    records: int = 0
    corrupt_files: int = 0
    corrupt_blocks: int = 0
    corrupt_lines: int = 0
    invalid_records: int = 0
    other_messages: int = 0  # routed messages that are not capture segments (e.g. property type=predictions)
    duplicate_messages: int = 0
    duplicate_records: int = 0
    errors: list[str] = field(default_factory=list)  # the first few reasons, for the report

    def note(self, reason: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "messages": self.messages,
            "records": self.records,
            "skipped": {
                "corruptFiles": self.corrupt_files,
                "corruptAvroBlocks": self.corrupt_blocks,
                "corruptLines": self.corrupt_lines,
                "invalidRecords": self.invalid_records,
                "otherMessages": self.other_messages,
                "duplicateMessages": self.duplicate_messages,
                "duplicateRecords": self.duplicate_records,
            },
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class RoutedMessage:
    """One routed message: its body and the properties IoT Hub stored beside it."""

    body: bytes | list[Any] | dict[str, Any]
    properties: dict[str, str]
    system_properties: dict[str, str]
    enqueued_time: str = ""


def file_kind(name: str, payload: bytes) -> str:
    """``avro``, ``json`` (routing JSON encoding) or ``segment`` (record lines), by content, then by name."""
    if payload.startswith(AVRO_MAGIC):
        return "avro"
    first = payload.lstrip()[:1]
    if first == b"{":
        line = payload.lstrip().split(b"\n", 1)[0]
        try:
            head = json.loads(line)
        except ValueError:
            return "json" if name.lower().endswith(".json") else "segment"
        if isinstance(head, dict) and ("Body" in head or "SystemProperties" in head):
            return "json"
        return "segment"
    return "avro" if name.lower().endswith(".avro") else "json" if name.lower().endswith(".json") else "segment"


class RecordReader:
    """Turns files into capture records, keeping one ``ReadStats`` and the duplicate filters across files."""

    def __init__(self) -> None:
        self.stats = ReadStats()
        self._messages: set[str] = set()
        self._records: set[tuple[Any, ...]] = set()

    def read(self, name: str, payload: bytes) -> Iterator[dict[str, Any]]:
        self.stats.files += 1
        if not payload:
            return  # IoT Hub writes an empty blob when a batch period had no data
        kind = file_kind(name, payload)
        if kind == "avro":
            messages: Iterable[RoutedMessage] = self._avro_messages(name, payload)
        elif kind == "json":
            messages = self._json_messages(name, payload)
        else:
            messages = [RoutedMessage(payload, {}, {})]
            self.stats.messages -= 1  # a segment file is not a routed message
        for message in messages:
            self.stats.messages += 1
            yield from self._message_records(name, message)

    # -- Avro -----------------------------------------------------------------------------------

    def _avro_messages(self, name: str, payload: bytes) -> Iterator[RoutedMessage]:
        from fastavro import parse_schema, schemaless_reader

        stream = io.BytesIO(payload)
        try:
            header = schemaless_reader(stream, parse_schema(_AVRO_HEADER), None)
            assert isinstance(header, dict)
            meta = header["meta"]
            schema = parse_schema(json.loads(meta["avro.schema"]))
            codec = meta.get("avro.codec", b"null").decode()
            sync = header["sync"]
        except Exception as error:
            self.stats.corrupt_files += 1
            self.stats.note(f"{name}: not a readable Avro container file ({error})")
            return
        if codec not in ("null", "deflate"):
            self.stats.corrupt_files += 1
            self.stats.note(f"{name}: Avro codec {codec!r} is not supported (null, deflate)")
            return
        # Blocks are delimited by the file's sync marker: a corrupt block is skipped up to the next marker.
        body = payload[stream.tell() :]
        for chunk in body.split(sync):
            if not chunk:
                continue
            try:
                records = list(_avro_block(chunk, schema, codec))
            except Exception as error:
                self.stats.corrupt_blocks += 1
                self.stats.note(f"{name}: corrupt Avro block skipped ({type(error).__name__}: {error})")
                continue
            for record in records:
                message = _routed_from_mapping(record)
                if message is None:
                    self.stats.invalid_records += 1
                    continue
                yield message

    # -- JSON encoding --------------------------------------------------------------------------

    def _json_messages(self, name: str, payload: bytes) -> Iterator[RoutedMessage]:
        for number, line in enumerate(payload.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                self.stats.corrupt_lines += 1
                self.stats.note(f"{name}:{number}: not a JSON object")
                continue
            message = _routed_from_mapping(value) if isinstance(value, dict) else None
            if message is None:
                self.stats.corrupt_lines += 1
                self.stats.note(f"{name}:{number}: not a routed message (no Body)")
                continue
            yield message

    # -- a message's records --------------------------------------------------------------------

    def _message_records(self, name: str, message: RoutedMessage) -> Iterator[dict[str, Any]]:
        kind = message.properties.get("type")
        if kind is not None and kind != "capture":
            self.stats.other_messages += 1
            return
        identity = message.properties.get("segment") or message.system_properties.get("messageId")
        if identity:
            if identity in self._messages:
                self.stats.duplicate_messages += 1
                return
            self._messages.add(identity)
        device = message.system_properties.get("connectionDeviceId", "")
        for value in _body_values(message.body, self.stats, name):
            record = normalize(value, device)
            if record is None:
                self.stats.invalid_records += 1
                self.stats.note(f"{name}: a record without {', '.join(REQUIRED_KEYS)} skipped")
                continue
            key = (
                record["correlationId"], record.get("row"), record["deviceId"], record["model"],
                record["version"], record["time"],
            )  # fmt: skip
            if key in self._records:
                self.stats.duplicate_records += 1
                continue
            self._records.add(key)
            self.stats.records += 1
            yield record


def _avro_block(chunk: bytes, schema: Any, codec: str) -> Iterator[Any]:
    from fastavro import schemaless_reader

    stream = io.BytesIO(chunk)
    count = _read_long(stream)
    size = _read_long(stream)
    data = stream.read(size)
    if count < 0 or size < 0 or len(data) != size or stream.read(1):
        raise ValueError(f"block framing: {count} records, {size} bytes declared, {len(chunk)} in the block")
    if codec == "deflate":
        data = zlib.decompress(data, -15)
    block = io.BytesIO(data)
    for _ in range(count):
        yield schemaless_reader(block, schema, None)
    if block.read(1):
        raise ValueError("bytes left over after the block's records")


def _read_long(stream: io.BytesIO) -> int:
    """An Avro long: zig-zag varint."""
    shift = result = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise ValueError("truncated varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (result >> 1) ^ -(result & 1)
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _routed_from_mapping(value: Any) -> RoutedMessage | None:
    if not isinstance(value, dict) or "Body" not in value:
        return None
    properties = value.get("Properties") or {}
    system = value.get("SystemProperties") or {}
    if not isinstance(properties, dict) or not isinstance(system, dict):
        return None
    body = value["Body"]
    if body is None:
        body = b""
    if not isinstance(body, bytes | str | list | dict):
        return None
    if isinstance(body, str):
        body = _string_body(body, system)
    return RoutedMessage(
        body=body,
        properties={str(k): _text(v) for k, v in properties.items()},
        system_properties={str(k): _text(v) for k, v in system.items()},
        enqueued_time=_text(value.get("EnqueuedTimeUtc")),
    )


def _string_body(body: str, system: dict[str, Any]) -> bytes:
    """A JSON-encoding ``Body`` string: base64 of the bytes (the usual case), else the text itself."""
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return body.encode("utf-8")


def _body_values(body: bytes | list[Any] | dict[str, Any], stats: ReadStats, name: str) -> Iterator[Any]:
    if isinstance(body, dict):
        yield body
        return
    if isinstance(body, list):
        yield from body
        return
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError:
            stats.corrupt_lines += 1
            stats.note(f"{name}: body line {number} is not JSON")


def normalize(value: Any, device: str = "") -> dict[str, Any] | None:
    """A capture record in the current shape, or None when it lacks what a record needs."""
    if not isinstance(value, dict):
        return None
    if all(key in value for key in REQUIRED_KEYS):
        if not isinstance(value["inputs"], dict):
            return None
        outputs = value.get("outputs") or {}
        row = value.get("row")
        return {
            "correlationId": str(value["correlationId"]),
            "row": int(row) if isinstance(row, int) and not isinstance(row, bool) else None,
            "deviceId": str(value.get("deviceId") or device),
            "model": str(value["model"]),
            "version": str(value["version"]),
            "time": str(value["time"]),
            "inputs": value["inputs"],
            "outputs": outputs if isinstance(outputs, dict) else {},
        }
    if all(key in value for key in LEGACY_KEYS):
        # The module's first capture format: flat features, no correlation id (each line is its own row).
        inputs = {k: v for k, v in value.items() if not k.startswith("_") and k != "prediction"}
        return {
            "correlationId": f"legacy:{value['_time']}:{json.dumps(inputs, sort_keys=True)}",
            "row": None,
            "deviceId": device,
            "model": str(value["_model"]),
            "version": str(value["_version"]),
            "time": _legacy_time(value["_time"]),
            "inputs": inputs,
            "outputs": {"prediction": value["prediction"]} if "prediction" in value else {},
        }
    return None


def _legacy_time(value: Any) -> str:
    if isinstance(value, int | float):
        from datetime import datetime, timezone

        return datetime.fromtimestamp(float(value), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return str(value)
