"""Azure ML: the workspace from the environment and an MLClient (the registry backend is cloud/azureml_registry.py).

The workspace comes from ``AZUREML_SUBSCRIPTION_ID``, ``AZUREML_RESOURCE_GROUP`` and ``AZUREML_WORKSPACE``;
authentication is ``DefaultAzureCredential`` unless a credential is passed in.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.errors import AzureConfigError


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
