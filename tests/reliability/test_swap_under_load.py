"""20 version swaps through the twin (desired-property patches) while HTTP load runs against the real module.

Each version is a distinct real model (a random forest of a different size), so a response can be traced
to exactly one version: its outputs must equal that version's scikit-learn predictions, and its
``model_version`` must name that version. Zero failed requests are allowed.
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from tests.support.models import TrainedModel, iris_classifier
from tests.twin.conftest import EdgeFactory, v2_request
from tests.twin.release_server import ReleaseServer

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SWAPS = 20
WORKERS = 4
MAX_REQUESTS = 200_000  # a bound, never reached in practice


def version_model(version: int) -> TrainedModel:
    return iris_classifier(str(version), n_estimators=version + 1)


@dataclass
class Tally:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)
    by_version: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _check(body: dict[str, object], expected: dict[str, tuple[np.ndarray, np.ndarray]]) -> str | None:
    version = body.get("model_version")
    if not isinstance(version, str) or version not in expected:
        return f"response names no known version: {version!r}"
    outputs = {o["name"]: o for o in body["outputs"]}  # type: ignore[attr-defined]
    labels, probabilities = expected[version]
    got_labels = np.asarray(outputs["label"]["data"])
    got_probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(probabilities.shape)
    if not (np.array_equal(got_labels, labels) and np.allclose(got_probabilities, probabilities, atol=1e-5)):
        return f"outputs are not version {version}'s predictions"
    return None


def test_twenty_swaps_under_load_fail_no_request_and_mix_no_versions(
    start_edge: EdgeFactory, releases: ReleaseServer, record_property: Callable[[str, object], None]
) -> None:
    models = {v: version_model(v) for v in range(1, SWAPS + 2)}
    rows = models[1].x_test
    expected = {
        str(v): (m.estimator.predict(rows), m.estimator.predict_proba(rows).astype(np.float32))
        for v, m in models.items()
    }
    # Distinct models: any two versions disagree somewhere, by far more than float32 noise.
    assert min(np.abs(expected[a][1] - expected[b][1]).max() for a, b in itertools.combinations(expected, 2)) > 1e-3

    # Probation watches every swap, but only its failure rate may act here: on a loaded machine a p99 spike of
    # the load itself could roll a version back, and this test is about swaps, not latency verdicts.
    edge = start_edge(
        desired={"models": {"iris": releases.release("iris", "1", models[1].onnx)}},
        env={"EDGE_PROBATION_MAX_LATENCY_RATIO": "1000000"},
    )
    edge.hub.wait_model_state("iris", "active", activeVersion="1")
    request = v2_request(rows)
    tally = Tally()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=edge.module.url, timeout=10) as client:
            while not stop.is_set() and tally.requests < MAX_REQUESTS:
                try:
                    response = client.post("/v2/models/iris/infer", json=request)
                except httpx.HTTPError as exc:
                    problem: str | None = f"transport error: {type(exc).__name__}: {exc}"
                    body: dict[str, object] = {}
                else:
                    body = response.json()
                    problem = None if response.status_code == 200 else f"HTTP {response.status_code}: {body}"
                mixed = _check(body, expected) if problem is None else None
                with tally.lock:
                    tally.requests += 1
                    if problem is not None:
                        tally.failures.append(problem)
                    elif mixed is not None:
                        tally.mixed.append(mixed)
                    else:
                        version = str(body["model_version"])
                        tally.by_version[version] = tally.by_version.get(version, 0) + 1

    workers = [threading.Thread(target=load, name=f"load-{i}") for i in range(WORKERS)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    durations: list[float] = []

    def until_served(version: int) -> None:
        # Let the load reach this version before the next swap, however busy the machine is (bounded).
        deadline = time.monotonic() + 30
        while not (tally.by_version.get(str(version)) or tally.failures or tally.mixed):
            if time.monotonic() > deadline:
                return  # the assertions below report which version got no load
            time.sleep(0.05)

    try:
        until_served(1)
        for version in range(2, SWAPS + 2):
            block = releases.release("iris", str(version), models[version].onnx)
            patched = time.monotonic()
            edge.hub.patch_desired({"models": {"iris": block}})
            edge.hub.wait_model_state("iris", "active", activeVersion=str(version), timeout=90)
            durations.append(time.monotonic() - patched)
            until_served(version)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    elapsed = time.monotonic() - started

    figures = {
        "swaps": len(durations),
        "requests": tally.requests,
        "failed": len(tally.failures),
        "mixed_or_unknown_version": len(tally.mixed),
        "requests_per_s": round(tally.requests / elapsed, 1),
        "load_workers": WORKERS,
        "rows_per_request": len(rows),
        "swap_s": {
            "min": round(min(durations), 2),
            "median": round(statistics.median(durations), 2),
            "max": round(max(durations), 2),
        },
        "responses_by_version": dict(sorted(tally.by_version.items(), key=lambda item: int(item[0]))),
    }
    # See them with: pytest tests/reliability/test_swap_under_load.py -o log_cli=true --log-cli-level=INFO
    log.info("SWAP-UNDER-LOAD %s", json.dumps(figures))
    record_property("swap_under_load", figures)
    assert tally.failures == [], tally.failures[:5]
    assert tally.mixed == [], tally.mixed[:5]
    assert len(durations) == SWAPS
    # Every version served some requests: the load really ran across every swap.
    assert set(tally.by_version) == set(expected), tally.by_version
    assert edge.infer_version("iris", rows) == str(SWAPS + 1)
    reported = edge.hub.wait_reported(lambda r: r.get("lastDesiredStatus", {}).get("code") == 200)
    assert reported["models"]["iris"]["activeVersion"] == str(SWAPS + 1)
