"""Where the registry of record lives, and opening it: one place for every command that reads or writes models.

A location is one of:

- a folder (``./registry``, ``/srv/models``): ``LocalRegistry``;
- ``azureml:``: the Azure ML workspace named by ``AZUREML_SUBSCRIPTION_ID``, ``AZUREML_RESOURCE_GROUP`` and
  ``AZUREML_WORKSPACE``;
- ``azureml://subscriptions/<s>/resourceGroups/<g>/workspaces/<w>``: that Azure ML workspace.

Chosen by ``--registry``, else ``$CLOUD_REGISTRY``, else the deprecated ``$CLOUD_REGISTRY_DIR``, else ``./registry``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.errors import RegistryError

if TYPE_CHECKING:
    from cloud.registry import Registry

ENV_LOCATION = "CLOUD_REGISTRY"
DEPRECATED_ENV = "CLOUD_REGISTRY_DIR"
DEFAULT_FOLDER = "registry"
AZUREML_SCHEME = "azureml:"
# ARM names: a subscription id is a GUID; resource groups allow 1-90 of word chars, '-', '.', '(' and ')';
# workspaces 3-33 of alphanumerics, '-' and '_' starting with an alphanumeric.
_WORKSPACE_URI = re.compile(
    r"^azureml://subscriptions/(?P<subscription>[0-9a-fA-F-]{36})"
    r"/resourceGroups/(?P<group>[\w.()-]{1,90})"
    r"/workspaces/(?P<workspace>[A-Za-z0-9][A-Za-z0-9_-]{2,32})/?$"
)
LOCATION_HELP = (
    "the registry of record: a folder, 'azureml:' (workspace from AZUREML_*), or "
    "azureml://subscriptions/<s>/resourceGroups/<g>/workspaces/<w> "
    f"(default: ${ENV_LOCATION}, else ./{DEFAULT_FOLDER})"
)


@dataclass(frozen=True)
class RegistryLocation:
    kind: str  # "folder" | "azureml"
    folder: Path | None = None
    subscription_id: str | None = None  # None with kind "azureml": the workspace comes from AZUREML_*
    resource_group: str | None = None
    workspace: str | None = None

    def describe(self) -> str:
        if self.kind == "folder":
            return str(self.folder)
        if self.subscription_id is None:
            return AZUREML_SCHEME
        return f"azureml://subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/workspaces/{self.workspace}"


def parse_location(text: str) -> RegistryLocation:
    """Parse a location; anything that looks like a URI but is not one of ours is refused, never taken as a folder."""
    value = text.strip()
    if not value:
        raise RegistryError("empty registry location: give a folder, 'azureml:' or an azureml://... workspace URI")
    if value == AZUREML_SCHEME:
        return RegistryLocation("azureml")
    if value.lower().startswith("azureml:"):
        match = _WORKSPACE_URI.fullmatch(value)
        if match is None:
            raise RegistryError(
                f"malformed Azure ML registry location {text!r}: expected 'azureml:' or "
                "azureml://subscriptions/<subscription-guid>/resourceGroups/<group>/workspaces/<workspace>"
            )
        return RegistryLocation(
            "azureml",
            subscription_id=match["subscription"],
            resource_group=match["group"],
            workspace=match["workspace"],
        )
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", value):
        raise RegistryError(
            f"unsupported registry location {text!r}: use a folder, 'azureml:' or an azureml://... workspace URI"
        )
    return RegistryLocation("folder", folder=Path(value))


def resolve_location(given: str | Path | None = None) -> RegistryLocation:
    if given is not None:
        return parse_location(str(given))
    if os.environ.get(ENV_LOCATION):
        return parse_location(os.environ[ENV_LOCATION])
    if os.environ.get(DEPRECATED_ENV):
        sys.stderr.write(f"warning: ${DEPRECATED_ENV} is deprecated; set ${ENV_LOCATION} instead\n")
        return RegistryLocation("folder", folder=Path(os.environ[DEPRECATED_ENV]))
    return RegistryLocation("folder", folder=Path(DEFAULT_FOLDER))


def open_registry(given: str | Path | None = None, credential: Any = None) -> Registry:
    """The registry at ``given`` (else from the environment). Azure ML settings are checked here, before any work."""
    from cloud.registry import LocalRegistry

    location = resolve_location(given)
    if location.kind == "folder":
        assert location.folder is not None
        return LocalRegistry(location.folder)
    from cloud.azureml import AzureWorkspace, workspace_from_environment
    from cloud.azureml_registry import AzureMLRegistry

    if location.subscription_id is None:
        workspace = workspace_from_environment()
    else:
        assert location.resource_group is not None and location.workspace is not None
        workspace = AzureWorkspace(
            subscription_id=location.subscription_id,
            resource_group=location.resource_group,
            workspace=location.workspace,
        )
    return AzureMLRegistry.for_workspace(workspace, credential=credential)
