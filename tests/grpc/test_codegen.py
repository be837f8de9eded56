"""The committed generated code matches the .proto, and the .proto matches tritonclient's on the wire."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc.service_pb2 as triton_pb

from edge_module.grpc import inference_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "generate-grpc"), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_our_messages_and_tritons_read_each_other() -> None:
    """Field numbers and types agree with Triton's grpc_service.proto, which implements the same specification."""
    theirs = triton_pb.ModelInferRequest(model_name="iris", model_version="2", id="r1")
    tensor = theirs.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    tensor.parameters["binary_data_size"].int64_param = 32
    theirs.outputs.add(name="label").parameters["classification"].int64_param = 0
    theirs.parameters["priority"].uint64_param = 3
    theirs.raw_input_contents.append(np.arange(8, dtype=np.float32).tobytes())
    ours = pb.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (ours.model_name, ours.model_version, ours.id) == ("iris", "2", "r1")
    assert ours.inputs[0].name == "input" and list(ours.inputs[0].shape) == [2, 4]
    assert ours.inputs[0].parameters["binary_data_size"].int64_param == 32
    assert ours.outputs[0].name == "label" and ours.parameters["priority"].uint64_param == 3
    assert ours.raw_input_contents[0] == theirs.raw_input_contents[0]
    assert ours.SerializeToString() == theirs.SerializeToString()

    typed = pb.ModelInferResponse(model_name="iris", model_version="2", id="r1")
    output = typed.outputs.add(name="label", datatype="INT64", shape=[2])
    output.contents.int64_contents.extend([1, 2])
    typed.outputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"ok")
    typed.raw_output_contents.append(b"\x00" * 4)
    back = triton_pb.ModelInferResponse.FromString(typed.SerializeToString())
    assert list(back.outputs[0].contents.int64_contents) == [1, 2]
    assert list(back.outputs[1].contents.bytes_contents) == [b"ok"] and back.raw_output_contents[0] == b"\x00" * 4

    metadata = pb.ModelMetadataResponse(name="iris", versions=["1", "2"], platform="onnxruntime_onnx")
    metadata.inputs.add(name="input", datatype="FP32", shape=[-1, 4])
    read = triton_pb.ModelMetadataResponse.FromString(metadata.SerializeToString())
    assert list(read.versions) == ["1", "2"] and list(read.inputs[0].shape) == [-1, 4]
    ready = pb.ModelReadyRequest.FromString(triton_pb.ModelReadyRequest(name="iris", version="2").SerializeToString())
    assert (ready.name, ready.version) == ("iris", "2")
    server = triton_pb.ServerMetadataResponse.FromString(
        pb.ServerMetadataResponse(name="edge-module", version="1", extensions=["a", "b"]).SerializeToString()
    )
    assert list(server.extensions) == ["a", "b"]
