"""Log the selected model's metrics to MLflow when a tracking server is configured.

Azure ML sets ``MLFLOW_TRACKING_URI`` inside jobs; a sweep job ranks its trials by these metrics. Outside a
job, or without mlflow installed, this does nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any


def log_metrics(metrics: dict[str, Any], params: dict[str, Any]) -> bool:
    if not os.environ.get("MLFLOW_TRACKING_URI") or importlib.util.find_spec("mlflow") is None:
        return False
    mlflow = importlib.import_module("mlflow")
    mlflow.log_metrics(
        {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    mlflow.log_params({k: str(v) for k, v in params.items()})
    return True
