"""Vetting an untrusted ONNX file before the serving process loads it.

Static checks refuse what no legitimate model from our pipeline has (external data, unknown operator
domains, absurd shapes). Then a child process loads and runs the model once: a file that crashes
onnxruntime kills the child, never the module. ``python -m edge_module.model_check FILE`` is that child.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_module import onnx_wire
from edge_module.errors import ModelLoadError

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
MAX_DIM = 10_000_000
MAX_RANK = 8
CHECK_TIMEOUT_S = 120.0


def static_problems(data: bytes) -> list[str]:
    """Reasons to refuse the file, without running it."""
    try:
        model = onnx_wire.summarize(data)
    except onnx_wire.WireError as exc:
        return [f"not a loadable ONNX file: {exc}"]
    if not model.has_graph:
        return ["not a loadable ONNX file: it has no graph"]
    problems: list[str] = []
    unexpected = sorted(model.domains - ALLOWED_DOMAINS)
    if unexpected:
        problems.append(f"unexpected operator domain(s): {', '.join(unexpected)}")
    if model.function_count:
        problems.append("model-local functions are not accepted")
    for tensor in model.external_tensors:
        problems.append(f"initializer '{tensor.name}' references external data ({tensor.location!r})")
    for value in model.graph_io:
        if len(value.dims) > MAX_RANK:
            problems.append(f"'{value.name}' declares rank {len(value.dims)} (limit {MAX_RANK})")
        for dim in value.dims:
            if dim is not None and not 0 <= dim <= MAX_DIM:
                problems.append(f"'{value.name}' declares an absurd dimension {dim}")
    return problems


@dataclass(frozen=True)
class VetReport:
    """What loading and warming up the model took in the child, which stands for the serving process."""

    baseline_bytes: int  # the child's resident memory before it read the file (interpreter and onnxruntime)
    peak_bytes: int  # its peak resident memory through load and warm-up

    @property
    def model_bytes(self) -> int:
        """Memory one more session of this model needs in a process that already runs onnxruntime."""
        return max(self.peak_bytes - self.baseline_bytes, 0)


def check_in_subprocess(path: Path, max_bytes: int) -> VetReport:
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
    except OSError as exc:  # the model is not at fault: the caller retries
        raise OSError(exc.errno, f"could not start the model check: {exc.strerror or exc}") from exc
    if result.returncode < 0:
        raise ModelLoadError(f"model crashed the loader (signal {-result.returncode}); refused")
    try:
        verdict = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = result.stderr.decode(errors="replace").strip()[-300:]
        raise ModelLoadError(f"model check failed (exit {result.returncode}): {tail}") from None
    if verdict.get("problems"):
        raise ModelLoadError("model refused: " + "; ".join(verdict["problems"]))
    return VetReport(int(verdict.get("baseline_bytes", 0)), int(verdict.get("peak_bytes", 0)))


def _resident() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes; zeros where /proc is not there."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so the peak is the model's alone.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _child(path: Path) -> int:
    from edge_module.runtime import OnnxModel, SessionConfig

    baseline, _ = _resident()
    _reset_peak()
    data = path.read_bytes()
    problems = static_problems(data)
    if not problems:
        try:
            OnnxModel("check", "1", "", data, SessionConfig()).warm_up()
        except ModelLoadError as exc:
            problems.append(exc.message)
    _, peak = _resident()
    sys.stdout.write(json.dumps({"problems": problems, "baseline_bytes": baseline, "peak_bytes": peak}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
