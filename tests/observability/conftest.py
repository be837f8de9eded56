from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx

from tests.observability.models import breast_cancer_model
from tests.support.inprocess import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def install_cancer_model(client: httpx.AsyncClient, version: str = "1") -> str:
    """Load the profiled breast-cancer model through the repository API; returns its sha256."""
    onnx = breast_cancer_model().onnx
    body = {"parameters": {f"file:{version}/model.onnx": base64.b64encode(onnx).decode()}}
    response = await client.post("/v2/repository/models/cancer/load", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    return hashlib.sha256(onnx).hexdigest()


def cancer_request(rows: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}]}
