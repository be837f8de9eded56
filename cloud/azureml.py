"""Azure ML: the workspace from the environment, an MLClient, and the model registry backend.

The workspace comes from ``AZUREML_SUBSCRIPTION_ID``, ``AZUREML_RESOURCE_GROUP`` and ``AZUREML_WORKSPACE``;
authentication is ``DefaultAzureCredential`` unless a credential is passed in.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.errors import AzureConfigError
from cloud.registry import RegistryEntry, validate_name


class AzureWorkspace(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AZUREML_", extra="ignore")

    subscription_id: str
    resource_group: str
    workspace: str


def workspace_from_environment() -> AzureWorkspace:
    try:
        return AzureWorkspace()  # type: ignore[call-arg]
    except ValidationError as error:
        missing = ", ".join(f"AZUREML_{str(e['loc'][0]).upper()}" for e in error.errors())
        raise AzureConfigError(f"no Azure ML workspace configured: set {missing}") from error


def ml_client(workspace: AzureWorkspace | None = None, credential: Any = None, **client_options: Any) -> Any:
    from azure.ai.ml import MLClient

    workspace = workspace or workspace_from_environment()
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    # The SDK's upload progress bars write to stdout; our commands print their own results.
    client_options.setdefault("show_progress", False)
    return MLClient(
        credential,
        subscription_id=workspace.subscription_id,
        resource_group_name=workspace.resource_group,
        workspace_name=workspace.workspace,
        **client_options,
    )


class AzureMLRegistry:
    """Registers ONNX files as Azure ML model versions (``MLClient.models.create_or_update``).

    Versions mirror the local registry's: the ONNX file embeds its version in its metadata, so the same
    bytes (same sha256) are registered under the same number in both places.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def from_environment(cls, credential: Any = None) -> AzureMLRegistry:
        return cls(ml_client(credential=credential))

    def register_entry(self, entry: RegistryEntry) -> Any:
        return self.register(
            entry.name,
            entry.path.read_bytes(),
            version=entry.version,
            metrics=entry.metrics,
            tags=entry.tags,
            metadata=entry.metadata,
            sha256=entry.sha256,
        )

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        *,
        version: str,
        metrics: dict[str, Any],
        tags: dict[str, str],
        metadata: dict[str, Any],
        sha256: str | None = None,
    ) -> Any:
        import hashlib

        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        validate_name(name)
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise AzureConfigError(f"{name} {version}: file sha256 {digest} differs from the registry's {sha256}")
        with tempfile.TemporaryDirectory(prefix="azureml-model-") as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(onnx_bytes)
            model = Model(
                name=name,
                version=version,
                path=str(path),
                type=AssetTypes.CUSTOM_MODEL,
                description=f"ONNX model {name} {version} ({metadata.get('task', 'unknown task')})",
                tags={**{str(k): str(v) for k, v in tags.items()}, "sha256": digest, "format": "onnx"},
                properties={
                    "sha256": digest,
                    "size": str(len(onnx_bytes)),
                    "metrics": json.dumps(metrics, sort_keys=True),
                    "metadata": json.dumps(metadata, sort_keys=True),
                },
            )
            return self.client.models.create_or_update(model)
