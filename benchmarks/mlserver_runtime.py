# mypy: ignore-errors
# (Runs inside MLServer's own virtual environment, where mlserver is installed; the project's doesn't have it.)
"""A minimal onnxruntime runtime for MLServer 1.7.1, which ships none: decode, run, encode, nothing else.

Used only by ``python -m benchmarks.run --mlserver``; the file is copied into MLServer's model folder.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        # The same session settings as the module's: one thread, inline on the event loop.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {item.name: NumpyCodec.decode_input(item).astype(np.float32, copy=False) for item in payload.inputs}
        results = self._session.run(self._outputs, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._outputs, results, strict=True)],
        )
