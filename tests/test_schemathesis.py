"""schemathesis against the running module's own OpenAPI schema: no request it generates gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.support.inprocess import ADMIN_TOKEN
from tests.support.server import ModuleProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleProcess]:
    store: Path = tmp_path_factory.mktemp("schemathesis") / "store"
    with ModuleProcess(store, env={"EDGE_ADMIN_TOKEN": ADMIN_TOKEN}) as process:
        yield process


def test_no_server_errors(module: ModuleProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{module.url}/openapi.json")
    results: list[Any] = list(schema.get_all_operations())  # Ok | Err; an Err raises on .ok()
    operations = [result.ok() for result in results]
    assert len(operations) >= 15
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy(), with_token=st.booleans())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: Any, with_token: bool) -> None:
            nonlocal calls
            # Half the cases carry the admin token, so the repository endpoints are exercised past auth too.
            response = case.call(base_url=module.url, headers=auth if with_token else {}, timeout=30)
            calls += 1
            case.validate_response(response, checks=[not_a_server_error])

        exercise()
        # Whatever was thrown at it, the module still serves.
        assert module.process is not None and module.process.poll() is None
    assert calls >= len(operations)
