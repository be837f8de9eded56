"""Vetting an untrusted ONNX file before the serving process loads it.

Static checks refuse what no legitimate model from our pipeline has (external data, unknown operator
domains, absurd shapes). Then a child process loads and runs the model once: a file that crashes
onnxruntime kills the child, never the module. ``python -m edge_module.model_check FILE`` is that child.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_module.errors import ModelLoadError

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
MAX_DIM = 10_000_000
MAX_RANK = 8
CHECK_TIMEOUT_S = 120.0


def static_problems(data: bytes) -> list[str]:
    """Reasons to refuse the file, without running it."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and others
        return [f"not a loadable ONNX file: {exc}"]
    problems: list[str] = []
    domains = {opset.domain for opset in model.opset_import}
    for node in _all_nodes(model.graph):
        domains.add(node.domain)
    unexpected = sorted(domains - ALLOWED_DOMAINS)
    if unexpected:
        problems.append(f"unexpected operator domain(s): {', '.join(unexpected)}")
    if model.functions:
        problems.append("model-local functions are not accepted")
    for tensor in _all_initializers(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "?")
            problems.append(f"initializer '{tensor.name}' references external data ({location!r})")
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > MAX_RANK:
            problems.append(f"'{value.name}' declares rank {len(dims)} (limit {MAX_RANK})")
        for dim in dims:
            if dim.HasField("dim_value") and not 0 <= dim.dim_value <= MAX_DIM:
                problems.append(f"'{value.name}' declares an absurd dimension {dim.dim_value}")
    return problems


def _all_nodes(graph: Any) -> list[Any]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.g is not None and attribute.HasField("g"):
                nodes.extend(_all_nodes(attribute.g))
            for subgraph in attribute.graphs:
                nodes.extend(_all_nodes(subgraph))
    return nodes


def _all_initializers(graph: Any) -> list[Any]:
    tensors = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                tensors.append(attribute.t)
            if attribute.HasField("g"):
                tensors.extend(_all_initializers(attribute.g))
    return tensors


def check_in_subprocess(path: Path, max_bytes: int) -> None:
    """Vet ``path`` in a child process; raise ModelLoadError with the reason when it is refused."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"model file is {size} bytes, over the {max_bytes}-byte cap")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_module.model_check", str(path)],
            capture_output=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"model check did not finish within {CHECK_TIMEOUT_S:.0f}s") from None
    if result.returncode < 0:
        raise ModelLoadError(f"model crashed the loader (signal {-result.returncode}); refused")
    try:
        verdict = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = result.stderr.decode(errors="replace").strip()[-300:]
        raise ModelLoadError(f"model check failed (exit {result.returncode}): {tail}") from None
    if verdict.get("problems"):
        raise ModelLoadError("model refused: " + "; ".join(verdict["problems"]))


def _child(path: Path) -> int:
    data = path.read_bytes()
    problems = static_problems(data)
    if not problems:
        from edge_module.runtime import OnnxModel, SessionConfig

        try:
            OnnxModel("check", "1", "", data, SessionConfig()).warm_up()
        except ModelLoadError as exc:
            problems.append(exc.message)
    sys.stdout.write(json.dumps({"problems": problems}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
