"""The floor: a minimal raw-ASGI app on uvicorn doing the same V2 decode -> onnxruntime -> encode.

No validation, no stats, no routing beyond the model name: what any V2 server must at least spend.
``python -m benchmarks.floor PORT NAME=PATH.onnx ...``
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import orjson

Message = MutableMapping[str, Any]


def session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def make_app(models: dict[str, Any]) -> Callable[[Message, Any, Any], Awaitable[None]]:
    sessions = {name: (s, s.get_inputs()[0].name, [o.name for o in s.get_outputs()]) for name, s in models.items()}

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        name = scope["path"].split("/")[3]
        sess, input_name, output_names = sessions[name]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        header_length = next((int(v) for k, v in scope["headers"] if k == b"inference-header-content-length"), None)
        if header_length is None:
            request = orjson.loads(body)
            spec = request["inputs"][0]
            array = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
        else:
            request = orjson.loads(body[:header_length])
            spec = request["inputs"][0]
            array = np.frombuffer(body, dtype=np.float32, offset=header_length).reshape(spec["shape"])
        results = sess.run(output_names, {input_name: array})
        binary = request.get("parameters", {}).get("binary_data_output") is True
        outputs: list[dict[str, Any]] = []
        buffers: list[bytes] = []
        for out_name, result in zip(output_names, results, strict=True):
            entry: dict[str, Any] = {"name": out_name, "datatype": "FP32", "shape": list(result.shape)}
            if binary:
                data = result.tobytes()
                entry["parameters"] = {"binary_data_size": len(data)}
                buffers.append(data)
            else:
                entry["data"] = result.reshape(-1)
            outputs.append(entry)
        header = orjson.dumps({"model_name": name, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-type", b"application/json")]
        if buffers:
            headers = [(b"content-type", b"application/octet-stream")]
            headers.append((b"inference-header-content-length", str(len(header)).encode()))
            header += b"".join(buffers)
        headers.append((b"content-length", str(len(header)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": header})

    return app


def main(argv: list[str]) -> None:
    import uvicorn

    port = int(argv[0])
    models = {spec.partition("=")[0]: session(spec.partition("=")[2]) for spec in argv[1:]}
    uvicorn.run(
        make_app(models),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
