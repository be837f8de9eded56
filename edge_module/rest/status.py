"""Operator routes: Prometheus ``/metrics``, the status page at ``/`` and its data at ``/status.json``.

The page is one self-contained HTML file (inline CSS and JS, SVG charts): it works on a LAN with no
internet. It polls ``/status.json`` and keeps a short history in the browser for its charts.
"""

from __future__ import annotations

from importlib import resources

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from edge_module.metrics import CONTENT_TYPE
from edge_module.observability import Observability
from edge_module.rest.openapi import METRICS_RESPONSES, STATUS, responses


def status_page() -> bytes:
    return (resources.files("edge_module.rest") / "status.html").read_bytes()


def status_router(observability: Observability) -> APIRouter:
    router = APIRouter(tags=["observability"])
    page = status_page()

    @router.get("/metrics", responses=METRICS_RESPONSES)
    async def metrics() -> Response:
        return Response(observability.metrics.render(), media_type=CONTENT_TYPE)

    @router.get("/status.json", responses=responses(STATUS))
    async def status() -> Response:
        return Response(orjson.dumps(observability.status()), media_type="application/json")

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})

    return router
