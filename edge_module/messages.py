"""edgeHub input messages -> inference -> an output message for ``predictions`` or ``errors``.

Input ``input1`` carries JSON telemetry: an object of named features, a list of such objects, or a V2
inference request. The model is named by the message property ``model``, else the module's default.
Knows nothing of MQTT: it maps an SDK ``Message`` to the output name and the ``Message`` to send.

The reply's correlation id, the prediction's ``id`` and the capture records' ``correlationId`` are one
value: the V2 request's ``id``, else the input's message id (else its correlation id), else a new one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from edge_module.codec import decode_request
from edge_module.correlation import new_correlation_id
from edge_module.dataplane import DataPlane
from edge_module.errors import EdgeError, InvalidRequest
from edge_module.runtime import OnnxModel
from edge_module.tensors import v2_datatype_of

log = logging.getLogger(__name__)

INPUT = "input1"
PREDICTIONS = "predictions"
ERRORS = "errors"
MODEL_PROPERTY = "model"
MAX_MESSAGE_BYTES = 256 * 1024  # edgeHub's own message cap
MAX_ROWS = 1024


class MessageRouter:
    def __init__(self, dataplane: DataPlane, default_model: str | None = None) -> None:
        self.dataplane = dataplane
        self.default_model = default_model

    def _model_name(self, properties: dict[str, Any]) -> str:
        name = properties.get(MODEL_PROPERTY)
        if isinstance(name, str) and name:
            return name
        if self.default_model and self.repository_has(self.default_model):
            return self.default_model
        served = list(self.dataplane.repository.snapshot())
        if len(served) == 1:
            return served[0]
        raise InvalidRequest(f"name the model in the '{MODEL_PROPERTY}' message property; serving: {served}")

    def repository_has(self, name: str) -> bool:
        return self.dataplane.repository.served(name) is not None

    async def route(self, message: Any) -> tuple[str, Any]:
        """The output name and the SDK ``Message`` to send for one input message. Never raises."""
        from azure.iot.device import Message as _Message

        new_message: Callable[..., Any] = _Message
        properties = dict(message.custom_properties or {})
        correlation_id = message.message_id or message.correlation_id or new_correlation_id()
        try:
            if message.input_name not in (INPUT, None):
                raise InvalidRequest(f"unknown input '{message.input_name}'; route telemetry to '{INPUT}'")
            body = await self._predict(message, properties, correlation_id)
            correlation_id = body["id"]
            output = PREDICTIONS
        except EdgeError as exc:
            body = {"error": exc.message, "status": exc.status_code}
            output = ERRORS
        except Exception as exc:  # a message must never take the module down
            log.exception("unexpected error handling an input message")
            body = {"error": f"internal error: {type(exc).__name__}", "status": 500}
            output = ERRORS
        if output == ERRORS:
            body["input"] = message.input_name
            log.info("input message %s rejected: %s", message.message_id, body["error"])
        reply = new_message(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            message_id=str(uuid.uuid4()),
            content_encoding="utf-8",
            content_type="application/json",
        )
        reply.correlation_id = correlation_id
        reply.custom_properties = {str(k): "" if v is None else str(v) for k, v in properties.items()}
        return output, reply

    async def _predict(self, message: Any, properties: dict[str, Any], correlation_id: str) -> dict[str, Any]:
        data = message.data
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray) or not data:
            raise InvalidRequest("the message body must be JSON")
        if len(data) > MAX_MESSAGE_BYTES:
            raise InvalidRequest(f"the message body is over {MAX_MESSAGE_BYTES} bytes")
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the message body is not JSON: {exc}") from None
        name = self._model_name(properties)
        model = self.dataplane.repository.get(name)
        if isinstance(document, dict) and "inputs" in document:
            request = decode_request(bytes(data), None, model)
            inputs = request.inputs
            correlation_id = request.id or correlation_id
        else:
            inputs = features_to_inputs(model, document)
        ran, results = await self.dataplane.infer_arrays(name, model.version, inputs, correlation_id)
        return {
            "id": correlation_id,
            "model_name": name,
            "model_version": ran.version,
            "outputs": [
                {"name": key, "datatype": v2_datatype_of(array), "shape": list(array.shape), "data": _data(array)}
                for key, array in results.items()
            ],
        }


def _data(array: np.ndarray) -> Any:
    flat = array.reshape(-1)
    if flat.dtype.kind in ("O", "U", "S"):
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in flat]
    return flat.tolist()


def features_to_inputs(model: OnnxModel, document: Any) -> dict[str, np.ndarray]:
    """Named features (one object or a list) -> the model's input tensors, using its feature names."""
    rows = document if isinstance(document, list) else [document]
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise InvalidRequest("expected an object of named features, a list of them, or a V2 inference request")
    if len(rows) > MAX_ROWS:
        raise InvalidRequest(f"at most {MAX_ROWS} rows per message")
    features = model.metadata.features
    if not features:
        raise InvalidRequest(f"model '{model.name}' declares no feature names; send a V2 inference request")
    names = [feature.name for feature in features]
    for index, row in enumerate(rows):
        missing = [name for name in names if name not in row]
        if missing:
            raise InvalidRequest(f"row {index} lacks feature(s): {', '.join(missing)}")
    try:
        return _tensors(model, names, rows)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"features do not fit model '{model.name}' inputs: {exc}") from None


def _tensors(model: OnnxModel, names: list[str], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if len(model.inputs) == 1 and model.inputs[0].name not in names:
        # One 2-D input [N, n_features], columns in the model's feature order.
        spec = model.inputs[0]
        values = [[_number(row[name], name) for name in names] for row in rows]
        return {spec.name: np.asarray(values, dtype=spec.numpy_dtype)}
    # One [N, 1] input per feature, named like it (pipelines over raw columns).
    inputs: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if spec.name not in names:
            raise InvalidRequest(f"model '{model.name}' input '{spec.name}' is not one of its features")
        if spec.datatype == "BYTES":
            column = [_text(row[spec.name], spec.name) for row in rows]
            inputs[spec.name] = np.asarray(column, dtype=object).reshape(-1, 1)
        else:
            numbers = [_number(row[spec.name], spec.name) for row in rows]
            inputs[spec.name] = np.asarray(numbers, dtype=spec.numpy_dtype).reshape(-1, 1)
    return inputs


def _number(value: Any, name: str) -> float:
    if value is None:
        return float("nan")  # a missing reading; models without imputation reject it with a clear error
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"feature '{name}' must be a number, got {type(value).__name__}")
    return float(value)


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""  # the cloud pipeline encodes a missing category as the empty string (cloud/data.py)
    if not isinstance(value, str):
        raise InvalidRequest(f"feature '{name}' must be a string, got {type(value).__name__}")
    return value
