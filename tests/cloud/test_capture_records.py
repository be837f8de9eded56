"""The readers of what IoT Hub routing stores: both Body forms of the JSON encoding, Avro codecs, other
message types, repeats, and the module's segment files."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from cloud.capture_records import RecordReader, file_kind
from tests.support.data_loop import records_for, segments, trained_cancer
from tests.support.iothub import OutputMessage
from tests.support.iothub_routing import Routed, avro_blob, json_blob, routed

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)


def one_record_messages() -> tuple[list[dict[str, object]], list[Routed]]:
    records = records_for(trained_cancer().x_test.head(3), start=T0)
    return records, [routed(m, "line-1", "edge-inference") for m in segments(records, per_segment=1)]


def test_json_encoding_body_as_a_json_value_and_as_base64() -> None:
    records, messages = one_record_messages()
    blob = json_blob(messages)
    stored = [json.loads(line) for line in blob.splitlines()]
    assert all(isinstance(s["Body"], dict) for s in stored)  # one record: one JSON value, stored as such
    assert stored[0]["SystemProperties"]["contentType"] == "application/json"
    # The same messages without content type and encoding: IoT Hub stores the body base64-encoded.
    plain = [Routed(m.enqueued, m.properties, {"connectionDeviceId": "line-1"}, m.body) for m in messages]
    as_base64 = [json.loads(line) for line in json_blob(plain).splitlines()]
    assert base64.b64decode(as_base64[0]["Body"]) == messages[0].body
    for payload in (blob, json_blob(plain)):
        reader = RecordReader()
        assert [r["correlationId"] for r in reader.read("x.json", payload)] == ["req-0", "req-1", "req-2"]
    # A Body holding a list of records reads too.
    listed = {"EnqueuedTimeUtc": "", "Properties": {}, "SystemProperties": {}, "Body": records}
    assert len(list(RecordReader().read("l.json", json.dumps(listed).encode()))) == 3


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_avro_codecs_other_message_types_and_repeats(codec: str) -> None:
    records, messages = one_record_messages()
    other = routed(OutputMessage("predictions", b'{"id": "x"}', {"type": "predictions"}), "line-1", "edge-inference")
    payload = avro_blob([*messages, other, messages[0]], codec=codec)
    reader = RecordReader()
    read = list(reader.read("00.avro", payload))
    assert [r["correlationId"] for r in read] == ["req-0", "req-1", "req-2"]
    assert read[0]["deviceId"] == "line-1" and read[0]["inputs"] == records[0]["inputs"]
    skipped = reader.stats.to_dict()["skipped"]
    assert skipped["otherMessages"] == 1 and skipped["duplicateMessages"] == 1


def test_files_are_recognised_by_content() -> None:
    _, messages = one_record_messages()
    assert file_kind("no-suffix", avro_blob(messages)) == "avro"
    assert file_kind("blob.txt", json_blob(messages)) == "json"
    assert file_kind("capture-000000000001.jsonl", messages[0].body) == "segment"
    reader = RecordReader()
    assert list(reader.read("empty.avro", b"")) == [] and reader.stats.files == 1  # IoT Hub's empty batch blob
    truncated = list(reader.read("t.jsonl", messages[0].body[:-20]))
    assert truncated == [] and reader.stats.corrupt_lines == 1
