"""Serve a registered model from an Azure ML managed online endpoint that runs our own edge module image.

The deployment is a custom container: the image's entrypoint (``python -m edge_module``) serves the Open
Inference Protocol V2 on port 8000, and Azure ML probes ``/v2/health/live`` and ``/v2/health/ready`` and forwards
every scoring path (route ``/``), so tritonclient works against the endpoint as against a device.

The model reaches the container as an Azure ML model asset mounted read-only: a folder laid out as the module's
own model store (written with ``edge_module.store.ModelStore``) holding the registry version as the active one,
and ``EDGE_MODEL_DIR`` points the module at it. The module then serves exactly the registry's bytes (same
sha256, same version in every infer response) and nothing else.

Scaling: ``instance_count`` is fixed here. Autoscale for managed online deployments is an Azure Monitor
autoscale setting on the deployment's resource id (CPU or request-latency rules), managed outside this tool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.errors import CloudError
from cloud.registry import RegistryEntry

PORT = 8000
LIVENESS_PATH = "/v2/health/live"
READINESS_PATH = "/v2/health/ready"
# Every path is forwarded to the container, so /v2/models/<m>/infer (and the rest of V2) work as on a device.
SCORING_PATH = "/"
MODEL_MOUNT_PATH = "/var/azureml-app/edge-model"
STORE_FOLDER = "store"
DEFAULT_INSTANCE_TYPE = "Standard_DS2_v2"
ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
DEPLOYMENT_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
ENVIRONMENT_VERSION = re.compile(r"[^A-Za-z0-9._-]")


class EndpointError(CloudError):
    """The endpoint or deployment request is invalid, or Azure ML refused it."""


@dataclass(frozen=True)
class EndpointPlan:
    endpoint: str
    deployment: str
    image: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    traffic_percent: int = 100
    auth_mode: str = "key"
    environment_variables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not ENDPOINT_NAME.fullmatch(self.endpoint):
            raise EndpointError(f"invalid endpoint name {self.endpoint!r}: 3-32 letters, digits or '-', letter first")
        if not DEPLOYMENT_NAME.fullmatch(self.deployment):
            raise EndpointError(f"invalid deployment name {self.deployment!r}: 3-32 letters, digits or '-'")
        if not self.image or "/" not in self.image:
            raise EndpointError(
                f"the image must be a registry reference (e.g. <acr>.azurecr.io/...), got {self.image!r}"
            )
        if self.instance_count < 1:
            raise EndpointError("instance_count must be at least 1")
        if not 0 <= self.traffic_percent <= 100:
            raise EndpointError("traffic_percent must be between 0 and 100")
        if self.auth_mode not in ("key", "aml_token"):
            raise EndpointError("auth_mode must be 'key' or 'aml_token'")


def split_traffic(current: dict[str, int], deployment: str, percent: int) -> dict[str, int]:
    """Give ``deployment`` ``percent`` and share the rest among the others in their current proportions."""
    others = {name: share for name, share in current.items() if name != deployment and share > 0}
    rest = 100 - percent
    total = sum(others.values())
    if not others or total == 0:
        return {deployment: 100 if percent > 0 else 0}
    shares = {name: share * rest // total for name, share in others.items()}
    # Integer shares must still add up to 100: the largest current deployment absorbs the rounding.
    largest = max(others, key=lambda name: (others[name], name))
    shares[largest] += rest - sum(shares.values())
    return {**shares, deployment: percent}


def write_store_bundle(entry: RegistryEntry, folder: Path) -> Path:
    """Lay out ``folder/store`` as the module's model store with ``entry`` active; return that store folder."""
    from edge_module.store import ModelStore

    root = folder / STORE_FOLDER
    store = ModelStore(root)
    store.open()
    sha256 = store.put_bytes(entry.local_path().read_bytes())
    if sha256 != entry.sha256:
        raise EndpointError(f"{entry.name} {entry.version}: file sha256 {sha256} differs from the registry's")
    store.activate(entry.name, entry.version, sha256)
    # Blob storage keeps no empty folders, and the module opens its store's tmp/ at start.
    (root / "tmp" / ".keep").write_bytes(b"")
    return root


def inference_config() -> dict[str, Any]:
    return {
        "liveness_route": {"port": PORT, "path": LIVENESS_PATH},
        "readiness_route": {"port": PORT, "path": READINESS_PATH},
        "scoring_route": {"port": PORT, "path": SCORING_PATH},
    }


def build_endpoint(plan: EndpointPlan, entry: RegistryEntry) -> Any:
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(
        name=plan.endpoint,
        auth_mode=plan.auth_mode,
        description=f"edge module image serving {entry.name} over the Open Inference Protocol V2",
        tags={"model": entry.name, "image": plan.image},
    )


def build_deployment(plan: EndpointPlan, entry: RegistryEntry, bundle: Path) -> Any:
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import (
        Environment,
        ManagedOnlineDeployment,
        Model,
        OnlineRequestSettings,
        ProbeSettings,
    )

    environment = Environment(
        name="edge-module",
        version=ENVIRONMENT_VERSION.sub("-", plan.image.rsplit(":", 1)[-1] if ":" in plan.image else "latest"),
        image=plan.image,
        inference_config=inference_config(),
        description="the edge module's own container image (python -m edge_module)",
    )
    model = Model(
        name=f"{entry.name}-edge-store",
        version=entry.version,
        path=str(bundle),
        type=AssetTypes.CUSTOM_MODEL,
        description=f"{entry.name} {entry.version} laid out as the edge module's model store",
        tags={"model": entry.name, "version": entry.version, "sha256": entry.sha256},
    )
    variables = {
        "EDGE_MODEL_DIR": f"{MODEL_MOUNT_PATH}/{STORE_FOLDER}",
        "EDGE_SERVE_DEFAULT_MODEL": "false",
        "EDGE_HOST": "0.0.0.0",
        "EDGE_PORT": str(PORT),
        **plan.environment_variables,
    }
    return ManagedOnlineDeployment(
        name=plan.deployment,
        endpoint_name=plan.endpoint,
        model=model,
        model_mount_path=MODEL_MOUNT_PATH,
        environment=environment,
        environment_variables=variables,
        instance_type=plan.instance_type,
        instance_count=plan.instance_count,
        request_settings=OnlineRequestSettings(request_timeout_ms=5000, max_concurrent_requests_per_instance=8),
        liveness_probe=ProbeSettings(initial_delay=10, period=10, timeout=2, failure_threshold=3),
        readiness_probe=ProbeSettings(initial_delay=5, period=5, timeout=2, failure_threshold=3),
        tags={"model": entry.name, "version": entry.version, "sha256": entry.sha256},
    )


@dataclass(frozen=True)
class EndpointResult:
    endpoint: str
    deployment: str
    scoring_uri: str | None
    traffic: dict[str, int]
    model: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "scoring_uri": self.scoring_uri,
            "traffic": self.traffic,
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
        }


def deploy(client: Any, plan: EndpointPlan, entry: RegistryEntry, work_dir: Path) -> EndpointResult:
    """Create or update the endpoint, then the deployment, then route ``plan.traffic_percent`` to it."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    bundle = write_store_bundle(entry, work_dir)
    try:
        try:
            # An existing endpoint keeps its traffic and other deployments: only the new one is added.
            endpoint = client.online_endpoints.get(plan.endpoint)
        except ResourceNotFoundError:
            endpoint = client.online_endpoints.begin_create_or_update(build_endpoint(plan, entry)).result()
        client.online_deployments.begin_create_or_update(build_deployment(plan, entry, bundle)).result()
        traffic = split_traffic(dict(endpoint.traffic or {}), plan.deployment, plan.traffic_percent)
        endpoint.traffic = traffic
        endpoint = client.online_endpoints.begin_create_or_update(endpoint).result()
    except HttpResponseError as error:
        raise EndpointError(f"Azure ML refused the deployment: {error.message}") from error
    return EndpointResult(
        endpoint=plan.endpoint,
        deployment=plan.deployment,
        scoring_uri=endpoint.scoring_uri,
        traffic=dict(endpoint.traffic or traffic),
        model=entry.name,
        version=entry.version,
        sha256=entry.sha256,
    )
