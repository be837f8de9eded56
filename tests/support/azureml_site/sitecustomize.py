"""Test-only: put the Azure ML stand-in (tests/cloud/azureml_service.py) under every Python process started
with this folder first on PYTHONPATH and ``AZUREML_FAKE_STATE=<dir>`` set; without that variable it does
nothing. The product code holds no hook for it: the stand-in replaces the HTTP transport azure-core uses.

    export AZUREML_FAKE_STATE=/tmp/state/azureml
    export PYTHONPATH=<repo>/tests/support/azureml_site:<repo>
    python -m cloud train ... --registry azureml://subscriptions/<guid>/resourceGroups/<g>/workspaces/<w>

Every process sees the one registry kept in that folder. A service principal for DefaultAzureCredential is
filled in (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET) unless set; the stand-in answers Entra ID too.
"""

import importlib.util
import os


def _has_azure_sdk() -> bool:
    # Another interpreter on the same PYTHONPATH (e.g. a system python3 in a shell pipe) has no Azure SDK to
    # stand in for; it must start quietly.
    try:
        return importlib.util.find_spec("azure.core") is not None and importlib.util.find_spec("requests") is not None
    except ModuleNotFoundError:
        return False


if os.environ.get("AZUREML_FAKE_STATE") and _has_azure_sdk():
    from tests.support.azureml_fake import install_from_environment

    install_from_environment()
