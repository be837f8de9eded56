"""Module settings, read from the environment with the ``EDGE_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _in_container() -> bool:
    return Path("/.dockerenv").exists() or os.environ.get("EDGE_IN_CONTAINER") == "1"


def _default_model_dir() -> Path:
    if _in_container():
        return Path("/var/lib/edge-module/models")
    import platformdirs

    return Path(platformdirs.user_data_dir("edge-module")) / "models"


def _default_host() -> str:
    return "0.0.0.0" if _in_container() else "127.0.0.1"  # containers publish the port


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", protected_namespaces=())

    host: str = Field(default_factory=_default_host)
    port: int = Field(default=8000, ge=0, le=65535)
    # V2 inference over gRPC on this port (same host, token and TLS as HTTP); off when unset.
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    model_dir: Path = Field(default_factory=_default_model_dir)
    trusted_keys: Path | None = None
    allow_insecure_uris: bool = False
    admin_token: str | None = None
    api_token: str | None = None

    # Serving the bundled default model when the store holds nothing keeps a fresh device useful.
    serve_default_model: bool = True
    default_model_name: str | None = None

    request_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    # HTTPS for the API when both are set (PEM files).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # Vet every new model in a child process first, so a file that crashes onnxruntime cannot take serving down.
    vet_models: bool = True
    keep_versions: int = Field(default=2, ge=1, le=16)

    # onnxruntime threads per session; 1 suits small models on a shared 2-core box.
    ort_intra_op_threads: int = Field(default=1, ge=0)
    # Models whose warm-up median exceeds this run in a worker thread instead of on the event loop.
    inline_threshold_ms: float = Field(default=1.0, ge=0)
    inference_workers: int = Field(default=2, ge=1)

    # Module twin (IoT Edge only). Connecting retries with backoff up to connect_backoff_max seconds;
    # after a drop the SDK reconnects every reconnect_interval seconds.
    connect_backoff_max: float = Field(default=60.0, gt=0)
    reconnect_interval: int = Field(default=10, ge=1)
    # Bounds every twin, message and method call: the SDK's own calls have no timeout.
    hub_call_timeout: float = Field(default=30.0, gt=0)
    download_timeout: float = Field(default=60.0, gt=0)
    download_attempts: int = Field(default=5, ge=1, le=100)
    download_backoff: float = Field(default=1.0, ge=0)
    # A release that failed for a transient reason (network) is tried again after this many seconds.
    update_retry_interval: float = Field(default=300.0, gt=0)

    log_level: str = "INFO"
    access_log: bool = False

    # Observability (docs/observability.md). The twin's desired "observability" block overrides the
    # telemetry interval, drift threshold, capture rate and log level at run time.
    metrics_enabled: bool = True
    telemetry_interval: float = Field(default=60.0, ge=1.0, le=86400.0)
    drift_window: int = Field(default=1000, ge=10, le=1_000_000)
    drift_min_rows: int = Field(default=100, ge=1)
    drift_threshold: float = Field(default=0.2, gt=0)
    capture_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Default: "capture" inside the model store, so the ring lives on the store's mounted volume.
    capture_dir: Path | None = None
    capture_budget_bytes: int = Field(default=64 * 1024 * 1024, ge=16 * 1024)
    # A segment goes upstream when full or when its oldest record is this old, so a quiet device delivers too.
    capture_flush_seconds: float = Field(default=60.0, ge=1.0, le=86400.0)
    # The capture records' deviceId outside IoT Edge (inside, IOTEDGE_DEVICEID wins); default: the host name.
    device_id: str | None = None

    # Dynamic batching, per model unless overridden: rows per merged run (1 = off) and how long a
    # partial batch may wait for batch-mates. A lone request on an idle model never waits.
    batch_max_size: int = Field(default=1, ge=1, le=4096)
    batch_max_delay_ms: float = Field(default=0.0, ge=0, le=1000)

    @field_validator("admin_token", "api_token")
    @classmethod
    def _reject_placeholder_tokens(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.lower() in {"changeme", "change-me", "secret", "token"} or len(value) < 16:
            raise ValueError("tokens must be at least 16 characters and not a placeholder")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both EDGE_TLS_CERT_FILE and EDGE_TLS_KEY_FILE, or neither")
        return self

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()
