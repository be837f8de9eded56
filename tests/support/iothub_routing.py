"""IoT Hub message routing to an Azure Storage endpoint, stood in for: the blobs the service writes.

What it reproduces, from the service's documentation:

- One blob per batch, named by the endpoint's file name format, default ``{iothub}/{partition}/{YYYY}/{MM}/{DD}/
  {HH}/{mm}`` (every token required, in any order) (learn.microsoft.com/azure/iot-hub/
  iot-hub-devguide-messages-d2c, "Azure Storage as a routing endpoint"); here with the suffix ``.avro`` or
  ``.json``. A batch period without data writes an empty blob (same page).
- Encodings ``avro`` (default), ``avrodeflate`` (the same, deflate codec) and ``JSON`` (RoutingStorageContainer
  Properties.Encoding, Azure.ResourceManager.IotHub: "Supported values are 'avro', 'avrodeflate', and 'JSON'").
- **Avro**: an Avro object container file of records with ``EnqueuedTimeUtc``,
  ``Properties`` (application properties), ``SystemProperties`` and ``Body`` (the message bytes), the layout
  IoT Hub's Avro files are read with (HubAvroReader of Azure-Samples/IoTEdgeAndMlSample; IoT Central's export
  docs: "the same format as the message files exported by IoT Hub message routing").
- **JSON** encoding: one JSON object per line with the same four keys. ``Body`` is the message's JSON value
  when its ``contentType`` is ``application/json`` and ``contentEncoding`` ``utf-8``, otherwise the body base64
  encoded (iot-hub-devguide-messages-construct: the content type and charset must be set for "JSON being
  treated as a parsable string instead of Base64 encoded binary data"; the message enrichment tutorial's
  stored sample shows the base64 form, IoT Central's export sample the JSON form). What the service does with
  a body that claims ``application/json`` but is not one JSON value (a capture segment of several JSON lines)
  is not documented; this stand-in stores such a body base64 encoded, and the reader accepts both forms.
- ``SystemProperties`` as IoT Hub stores them for a module message: ``connectionDeviceId``,
  ``connectionModuleId``, ``connectionAuthMethod``, ``connectionDeviceGenerationId``, ``enqueuedTime``, and
  ``messageId``/``correlationId``/``contentType``/``contentEncoding`` when the message set them
  (iot-hub-devguide-messages-construct, "System properties of D2C IoT Hub messages").
- At-least-once: the same message may be written again (``duplicate``).

It takes the messages ``EmulatedHub`` collected (their MQTT topic properties: ``$.mid``, ``$.cid``, ``$.ct``,
``$.ce`` and application properties).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tests.support.iothub import OutputMessage

AVRO_SCHEMA = {
    "type": "record",
    "name": "Message",
    "namespace": "Microsoft.Azure.Devices",
    "fields": [
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {"name": "Properties", "type": {"type": "map", "values": "string"}},
        {"name": "SystemProperties", "type": {"type": "map", "values": "string"}},
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}
SYSTEM_KEYS = {"$.mid": "messageId", "$.cid": "correlationId", "$.ct": "contentType", "$.ce": "contentEncoding"}


@dataclass(frozen=True)
class Routed:
    """One message as the routing endpoint stores it."""

    enqueued: datetime
    properties: dict[str, str]
    system_properties: dict[str, str]
    body: bytes


def routed(message: OutputMessage, device_id: str, module_id: str, enqueued: datetime | None = None) -> Routed:
    enqueued = enqueued or datetime.now(timezone.utc)
    stamp = enqueued.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    system = {
        "connectionDeviceId": device_id,
        "connectionModuleId": module_id,
        "connectionAuthMethod": '{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}',
        "connectionDeviceGenerationId": "638000000000000000",
        "enqueuedTime": stamp,
    }
    app: dict[str, str] = {}
    for key, value in message.properties.items():
        if key in SYSTEM_KEYS:
            system[SYSTEM_KEYS[key]] = value
        elif not key.startswith("$."):
            app[key] = value
    return Routed(enqueued, app, system, message.body)


def blob_name(hub: str, partition: int, when: datetime, encoding: str) -> str:
    return f"{hub}/{partition:02d}/{when:%Y/%m/%d/%H/%M}.{'avro' if encoding == 'avro' else 'json'}"


def avro_blob(messages: Iterable[Routed], codec: str = "null") -> bytes:
    """One record per Avro block (sync_interval=1 byte), so a corrupt block costs one message."""
    from fastavro import parse_schema, writer

    stream = io.BytesIO()
    records = [
        {
            "EnqueuedTimeUtc": m.enqueued.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z",
            "Properties": m.properties,
            "SystemProperties": m.system_properties,
            "Body": m.body,
        }
        for m in messages
    ]
    writer(stream, parse_schema(AVRO_SCHEMA), records, codec=codec, sync_interval=1)
    return stream.getvalue()


def json_blob(messages: Iterable[Routed]) -> bytes:
    lines = []
    for m in messages:
        body: Any
        if m.system_properties.get("contentType") == "application/json" and m.system_properties.get(
            "contentEncoding", ""
        ).lower() in ("utf-8", "utf8"):
            try:
                body = json.loads(m.body)
            except ValueError:
                body = base64.b64encode(m.body).decode()
        else:
            body = base64.b64encode(m.body).decode()
        record = {
            "EnqueuedTimeUtc": m.enqueued.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z",
            "Properties": m.properties,
            "SystemProperties": m.system_properties,
            "Body": body,
        }
        lines.append(json.dumps(record, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def write_endpoint(container: Any, messages: list[Routed], encoding: str, hub: str = "edge-hub") -> list[str]:
    """Write the messages as the endpoint would (one blob per minute of enqueued time, partition 0 and 1
    alternating by device); returns the blob names."""
    batches: dict[str, list[Routed]] = {}
    for message in messages:
        partition = sum(message.system_properties["connectionDeviceId"].encode()) % 2
        batches.setdefault(blob_name(hub, partition, message.enqueued, encoding), []).append(message)
    for name, batch in batches.items():
        payload = avro_blob(batch) if encoding == "avro" else json_blob(batch)
        container.upload_blob(name, payload, overwrite=True)
    return sorted(batches)
