"""``python -m benchmarks.shadow``: what a shadow costs the active version's requests, in one process.

Drives the data plane (decode, validate, run, encode and the observers: the same path HTTP, edgeHub and
gRPC take) with a real iris forest active, with and without a different real forest as its shadow.
Rounds alternate on/off back to back; the figures are the medians over rounds. The bar (issue 20):
c=1 p50 with the shadow within 1.1x of without, c=32 throughput within 0.9x. Prints MET or MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from collections.abc import Sequence

import numpy as np
import orjson

from edge_module.dataplane import DataPlane
from edge_module.repository import ModelRepository
from edge_module.runtime import OnnxModel, SessionConfig
from edge_module.shadow.mirror import ShadowMirror
from edge_module.stats import InferenceStats


def _forest(version: str, trees: int) -> tuple[OnnxModel, np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    x = data.data.astype(np.float32)
    estimator = RandomForestClassifier(n_estimators=trees, max_depth=4, random_state=0).fit(x, data.target)
    onnx = to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}}).SerializeToString()
    return OnnxModel("iris", version, hashlib.sha256(onnx).hexdigest(), onnx, SessionConfig()), x


def _plane(active: OnnxModel, shadow: OnnxModel | None) -> tuple[DataPlane, ShadowMirror | None]:
    repository = ModelRepository()
    repository.publish("iris", active, {active.version: active})
    plane = DataPlane(repository, InferenceStats())
    if shadow is None:
        return plane, None
    mirror = ShadowMirror()
    mirror.install("iris", shadow)
    plane.observers.append(mirror.observe)
    return plane, mirror


async def _c1_p50_us(plane: DataPlane, body: bytes, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        await plane.infer("iris", None, body, None)
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1000


async def _throughput(plane: DataPlane, body: bytes, connections: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await plane.infer("iris", None, body, None)
            done += 1
            await asyncio.sleep(0)  # a request's network turn: lets the other clients in

    await asyncio.gather(*(client() for _ in range(connections)))
    return done / seconds


async def _run(rounds: int, count: int, seconds: float) -> dict[str, dict[str, float]]:
    active, x = _forest("1", 10)
    candidate, _ = _forest("2", 3)
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": x[0].tolist()}]})
    planes = {"off": _plane(active, None), "on": _plane(active, candidate)}
    figures: dict[str, dict[str, list[float]]] = {k: {"p50_us": [], "rps": []} for k in planes}
    for round_ in range(rounds):
        for config in list(planes) if round_ % 2 == 0 else list(reversed(planes)):
            plane, mirror = planes[config]
            figures[config]["p50_us"].append(await _c1_p50_us(plane, body, count))
            figures[config]["rps"].append(await _throughput(plane, body, 32, seconds))
            if mirror is not None:
                mirror.wait_idle(30)
            print(
                f"  round {round_} {config:3} c1 p50 {figures[config]['p50_us'][-1]:7.1f} µs  "
                f"c32 {figures[config]['rps'][-1]:8.0f} req/s",
                flush=True,
            )
    _, mirror = planes["on"]
    assert mirror is not None
    print("shadow figures:", orjson.dumps(mirror.shadows["iris"].stats.report()).decode())
    return {k: {m: statistics.median(v) for m, v in f.items()} for k, f in figures.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="c=1 requests per round")
    parser.add_argument("--seconds", type=float, default=2.0, help="c=32 duration per round")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args.rounds, args.requests, args.seconds))
    p50_ratio = result["on"]["p50_us"] / result["off"]["p50_us"]
    rps_ratio = result["on"]["rps"] / result["off"]["rps"]
    print(
        f"c=1 p50: off {result['off']['p50_us']:.1f} µs, on {result['on']['p50_us']:.1f} µs, "
        f"ratio {p50_ratio:.3f} (bar <= 1.1): {'MET' if p50_ratio <= 1.1 else 'MISS'}"
    )
    print(
        f"c=32 throughput: off {result['off']['rps']:.0f}/s, on {result['on']['rps']:.0f}/s, "
        f"ratio {rps_ratio:.3f} (bar >= 0.9): {'MET' if rps_ratio >= 0.9 else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
