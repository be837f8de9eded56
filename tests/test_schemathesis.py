"""schemathesis against the running module's own OpenAPI schema, over real HTTP.

Every response must conform to the schema: a status code the operation declares, its content type, a body that
validates against the declared schema (edge_module/rest/openapi.py), declared headers; and none may be a 5xx.
schemathesis generates the requests; three cases in five are then aimed at what the module serves (its model,
with the generated body or a valid V2 one, a real ONNX file to load), so success bodies and the errors of real
models are held to the schema too, not only the 404s of random names.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.inprocess import ADMIN_TOKEN
from tests.support.models import WINE_ROW, iris_classifier
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow
EXAMPLES = 100
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SERVED = {"name": "wine", "version": "1"}  # the bundled default model
LOADED = {"name": "iris", "version": "1"}  # what the steered load cases install
WINE = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 13], "data": WINE_ROW}]}


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleProcess]:
    store: Path = tmp_path_factory.mktemp("schemathesis") / "store"
    with ModuleProcess(store, env={"EDGE_ADMIN_TOKEN": ADMIN_TOKEN}) as process:
        yield process


def aim(case: Any, path: str, how: str) -> None:
    """Point a generated case at what exists: its path ("model"), or also a valid body ("json", "binary")."""
    repository = path.startswith("/v2/repository/models/")
    target = LOADED if repository else SERVED
    for key in ("name", "version"):
        if key in (case.path_parameters or {}):
            case.path_parameters[key] = target[key]
    if how == "model":
        return  # the generated body, sent to a real model
    if path.endswith("/infer"):
        case.media_type = "application/json"
        case.body = {**WINE, "parameters": {"binary_data_output": True}} if how == "binary" else WINE
    elif path.endswith("/load"):
        case.media_type = "application/json"
        onnx = base64.b64encode(iris_classifier().onnx).decode()
        case.body = {"parameters": {f"file:{LOADED['version']}/model.onnx": onnx}}


def explore(operation: Any, url: str) -> set[int]:
    """Run EXAMPLES generated cases against one operation, every response checked; the statuses seen."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    seen: list[int] = []

    @given(
        case=operation.as_strategy(),
        with_token=st.booleans(),
        aimed=st.sampled_from(["generated", "generated", "model", "json", "binary"]),
    )
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def exercise(case: Any, with_token: bool, aimed: str) -> None:
        if aimed != "generated":
            aim(case, operation.path, aimed)
        # Half the cases carry the admin token, so the repository endpoints are exercised past auth too.
        response = case.call(base_url=url, headers=auth if with_token else {}, timeout=30)
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    exercise()
    # At least EXAMPLES cases. An operation without parameters or body has few distinct cases (token or not,
    # times the aims): Hypothesis stops once it has tried them all.
    has_inputs = bool(operation.path_parameters or operation.query or operation.body)
    assert len(seen) >= (EXAMPLES if has_inputs else 2), (operation.label, len(seen))
    return set(seen)


def test_every_response_conforms_to_the_openapi_schema(module: ModuleProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{module.url}/openapi.json")
    results: list[Any] = list(schema.get_all_operations())  # Ok | Err; an Err raises on .ok()
    operations = [result.ok() for result in results]
    assert len(operations) >= 19
    statuses = {}
    for operation in operations:
        statuses[f"{operation.method.upper()} {operation.path}"] = explore(operation, module.url)
        # Whatever was thrown at it, the module still serves.
        assert module.process is not None and module.process.poll() is None, module.logs()
    # The aimed cases reached the success bodies of the model and repository operations.
    for label in (
        "POST /v2/models/{name}/infer",
        "GET /v2/models/{name}/versions/{version}",
        "POST /v2/repository/models/{name}/load",
        "POST /v2/repository/models/{name}/unload",
    ):
        assert 200 in statuses[label], (label, statuses[label])
