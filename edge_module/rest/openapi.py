"""What the HTTP API answers, for the OpenAPI schema: every status each route can return, and the body of each.

The handlers return plain ``Response`` objects (the infer path bypasses FastAPI altogether), so FastAPI cannot
infer any of this; it is declared here, next to nothing else, and tests/test_schemathesis.py holds the server
to it. Errors are ``{"error": "<message>"}`` everywhere (edge_module/rest/errors.py).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _object(required: Schema, optional: Schema | None = None, closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})}}
    if closed:
        schema["additionalProperties"] = False
    return schema


_STRING: Schema = {"type": "string"}
_INTEGER: Schema = {"type": "integer"}
_BOOLEAN: Schema = {"type": "boolean"}
_STRINGS: Schema = {"type": "array", "items": _STRING}
_SHAPE: Schema = {"type": "array", "items": _INTEGER}

ERROR = _object({"error": _STRING})
TENSOR_METADATA = _object({"name": _STRING, "datatype": _STRING, "shape": _SHAPE})
SERVER_METADATA = _object({"name": _STRING, "version": _STRING, "extensions": _STRINGS})
LIVE = _object({"live": _BOOLEAN})
READY = _object({"ready": _BOOLEAN})
MODEL_METADATA = _object(
    {
        "name": _STRING,
        "versions": _STRINGS,
        "platform": _STRING,
        "inputs": {"type": "array", "items": TENSOR_METADATA},
        "outputs": {"type": "array", "items": TENSOR_METADATA},
        "parameters": _object(
            {
                "active_version": _STRING,
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "task": {"type": ["string", "null"]},
                "feature_names": _STRINGS,
                "class_labels": {"type": "array"},
            }
        ),
    }
)
MODEL_READY = _object({"name": _STRING, "ready": _BOOLEAN}, {"version": _STRING})
_CONFIG_TENSOR = _object({"name": _STRING, "data_type": _STRING, "dims": _SHAPE})
MODEL_CONFIG = _object(
    {
        "name": _STRING,
        "platform": _STRING,
        "backend": _STRING,
        "max_batch_size": _INTEGER,
        "version_policy": {"type": "object"},
        "input": {"type": "array", "items": _CONFIG_TENSOR},
        "output": {"type": "array", "items": _CONFIG_TENSOR},
        "parameters": {"type": "object"},
    },
    {"dynamic_batching": _object({"max_batch_size": _INTEGER, "max_queue_delay_microseconds": _INTEGER})},
)
_PHASE = _object({"count": _INTEGER, "ns": _INTEGER})
MODEL_STATS = _object(
    {
        "model_stats": {
            "type": "array",
            "items": _object(
                {
                    "name": _STRING,
                    "version": _STRING,
                    "last_inference": _INTEGER,
                    "inference_count": _INTEGER,
                    "execution_count": _INTEGER,
                    "inference_stats": {"type": "object", "additionalProperties": _PHASE},
                    "batch_stats": {"type": "array"},
                }
            ),
        }
    }
)
INFER_RESPONSE = _object(
    {
        "model_name": _STRING,
        "model_version": _STRING,
        "outputs": {
            "type": "array",
            "items": _object(
                {"name": _STRING, "datatype": _STRING, "shape": _SHAPE},
                # JSON outputs carry "data"; binary ones carry parameters.binary_data_size instead.
                {"data": {"type": "array"}, "parameters": {"type": "object"}},
            ),
        },
    },
    {"id": _STRING, "parameters": {"type": "object"}},
)
REPOSITORY_INDEX: Schema = {
    "type": "array",
    "items": _object({"name": _STRING, "version": _STRING, "state": _STRING, "reason": _STRING}),
}
LOADED = _object({"name": _STRING, "version": _STRING, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}})
UNLOADED = _object({"name": _STRING, "unloaded": _BOOLEAN})
STATUS = _object(
    {
        "time": _STRING,
        "uptime_seconds": {"type": "number"},
        "models": {"type": "array", "items": {"type": "object"}},
        "config": {"type": "object"},
        "capture": {"type": "object"},
        "telemetry": {"type": "object"},
    },
    closed=False,
)

_WHY = {
    400: "the request, or a model it sends, is invalid",
    401: "missing or wrong bearer token",
    403: "the repository API is disabled (no EDGE_ADMIN_TOKEN)",
    404: "no such model or version",
    408: "the request body did not arrive in time",
    413: "the request body is over the size limit",
    415: "unsupported Content-Encoding",
    500: "the model failed to run, or the store could not be written",
    503: "not ready: no model is loaded",
}


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def responses(ok: Schema, *errors: int, ok_description: str = "OK") -> dict[int | str, dict[str, Any]]:
    """A 200 with ``ok`` as its JSON body, and an ``{"error"}`` body for each status in ``errors``."""
    declared: dict[int | str, dict[str, Any]] = {200: {"description": ok_description, "content": json_content(ok)}}
    for status in errors:
        declared[status] = {"description": _WHY[status], "content": json_content(ERROR)}
    return declared


INFER_RESPONSES = responses(INFER_RESPONSE, 400, 401, 404, 408, 413, 415, 500)
INFER_RESPONSES[200]["content"]["application/octet-stream"] = {
    "schema": {"type": "string", "format": "binary"},
}
INFER_RESPONSES[200]["description"] = (
    "The outputs: JSON, or with binary outputs requested, the JSON header followed by the tensors' bytes "
    "(Content-Type application/octet-stream, Inference-Header-Content-Length the header's length)"
)
INFER_RESPONSES[200]["headers"] = {
    "Inference-Header-Content-Length": {
        "description": "length of the JSON header, with binary outputs only",
        "schema": _INTEGER,
    }
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready: at least one model is loaded", "content": json_content(READY)},
    503: {"description": _WHY[503], "content": json_content(READY)},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format 0.0.4",
        "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": _STRING}},
    }
}

TRUST_BUNDLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The CA chain (PEM) that verifies this module's HTTPS certificate",
        "content": {"application/x-pem-file": {"schema": _STRING}},
    },
    404: {
        "description": "no trust bundle: TLS is off, or files mode without EDGE_TLS_CA_FILE",
        "content": json_content(ERROR),
    },
}


def without_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop the 422 FastAPI adds to every route with parameters: this app answers invalid requests with 400."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    if "components" in schema and not components:
        schema["components"].pop("schemas", None)
        if not schema["components"]:
            del schema["components"]
    return schema
