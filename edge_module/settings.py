"""Module settings, read from the environment with the ``EDGE_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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
    # HTTPS (docs/security.md): off, files (the PEM pair below) or workload (IoT Edge's workload API issues and
    # renews a certificate signed by the device CA). Unset: files when the pair is set, else off.
    tls: Literal["off", "files", "workload"] | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The CA chain clients verify against, served at /trust-bundle.pem in files mode (workload mode has its own).
    tls_ca_file: Path | None = None
    # The certificate's common name in workload mode; default: IOTEDGE_GATEWAYHOSTNAME, else the host name.
    tls_common_name: str | None = Field(default=None, max_length=64)
    tls_certificate_lifetime_s: float = Field(default=7 * 86400.0, ge=5)
    # Renew once this share of the certificate's lifetime has passed.
    tls_renew_at: float = Field(default=0.8, gt=0, lt=1)
    tls_retry_max_s: float = Field(default=60.0, gt=0)
    # How long start-up waits for the first certificate before the module exits (edgeAgent restarts it).
    tls_startup_timeout_s: float = Field(default=120.0, gt=0)

    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # Vet every new model in a child process first, so a file that crashes onnxruntime cannot take serving down.
    vet_models: bool = True
    keep_versions: int = Field(default=2, ge=1, le=16)
    # Versions of a model kept loaded in memory (the rest of keep_versions stay on disk only).
    keep_loaded: int = Field(default=2, ge=1, le=16)
    # Before vetting and loading a model, check it fits under the cgroup's memory limit (or the host's) with
    # this margin; else drop the loaded last-known-good, else refuse the release (docs/reliability.md).
    memory_check: bool = True
    memory_margin_mib: int = Field(default=32, ge=0)
    # Post-swap probation (docs/reliability.md): a new version is watched for this many requests or seconds,
    # whichever comes first (0 = no bound of that kind; both 0 = off), and swapped back if its runtime failure
    # rate, or its p99 latency against the version it replaced, passes these limits.
    probation_requests: int = Field(default=1000, ge=0)
    probation_seconds: float = Field(default=300.0, ge=0)
    probation_max_failure_rate: float = Field(default=0.05, ge=0, le=1)
    probation_max_latency_ratio: float = Field(default=3.0, gt=1)
    probation_latency_slack_ms: float = Field(default=1.0, ge=0)
    probation_min_requests: int = Field(default=50, ge=1)
    # Shadow releases (docs/shadow.md): the share of served requests mirrored to a shadow. The shadow only gets
    # idle CPU and mirroring pauses while its pipe is full, so every request is offered by default; a lower
    # share saves a busy device's idle CPU (and energy) for other work.
    shadow_sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)

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
    # Window of the random delay before downloading a new release (0 = off); a release's spreadSeconds wins.
    download_spread_s: float = Field(default=0.0, ge=0, le=3600)
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
        if self.tls == "files" and self.tls_cert_file is None:
            raise ValueError("EDGE_TLS=files needs EDGE_TLS_CERT_FILE and EDGE_TLS_KEY_FILE")
        if self.tls in ("off", "workload") and self.tls_cert_file is not None:
            raise ValueError(f"EDGE_TLS={self.tls} does not use EDGE_TLS_CERT_FILE/EDGE_TLS_KEY_FILE: unset them")
        return self

    @property
    def tls_mode(self) -> str:
        if self.tls is not None:
            return self.tls
        return "files" if self.tls_cert_file is not None else "off"

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()
