from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

NAME = "endpoint"
HELP = "serve a registered model from an Azure ML managed online endpoint running the edge module image"


def _key_value(value: str) -> tuple[str, str]:
    key, sep, item = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return key, item


def configure(parser: argparse.ArgumentParser) -> None:
    from cloud.azureml_endpoint import DEFAULT_INSTANCE_TYPE
    from cloud.registry_location import LOCATION_HELP

    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    deploy = actions.add_parser(
        "deploy",
        help="create or update the endpoint and a deployment of MODEL, then route traffic to it",
        description="The workspace comes from AZUREML_SUBSCRIPTION_ID, AZUREML_RESOURCE_GROUP and AZUREML_WORKSPACE; "
        "authentication is DefaultAzureCredential (e.g. a CI service principal in AZURE_CLIENT_ID, "
        "AZURE_TENANT_ID, AZURE_CLIENT_SECRET). Autoscale is an Azure Monitor autoscale setting on the "
        "deployment, outside this command.",
    )
    deploy.add_argument("model", help="model name in the registry")
    which = deploy.add_mutually_exclusive_group()
    which.add_argument("--version", help="registry version (default: the latest)")
    which.add_argument("--alias", help="registry alias, e.g. production")
    deploy.add_argument("--registry", metavar="LOCATION", help=LOCATION_HELP)
    deploy.add_argument("--endpoint", required=True, help="endpoint name (unique in the Azure region)")
    deploy.add_argument("--deployment", default="blue", help="deployment name (default: %(default)s)")
    deploy.add_argument(
        "--image", required=True, help="the edge module image, e.g. <acr>.azurecr.io/edge-module:0.1.0-amd64"
    )
    deploy.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE, help="VM size (default: %(default)s)")
    deploy.add_argument("--instance-count", type=int, default=1, help="instances (default: %(default)s)")
    deploy.add_argument(
        "--traffic", type=int, default=100, help="percent of the endpoint's traffic for this deployment (default: 100)"
    )
    deploy.add_argument("--auth-mode", choices=["key", "aml_token"], default="key")
    deploy.add_argument(
        "--env",
        action="append",
        type=_key_value,
        default=[],
        metavar="NAME=VALUE",
        help="extra EDGE_* settings for the container (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from cloud.azureml import ml_client
    from cloud.azureml_endpoint import EndpointPlan, deploy
    from cloud.errors import CloudError
    from cloud.registry_location import open_registry

    try:
        registry = open_registry(args.registry)
        entry = registry.get(args.model, version=args.version, alias=args.alias)
        plan = EndpointPlan(
            endpoint=args.endpoint,
            deployment=args.deployment,
            image=args.image,
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            traffic_percent=args.traffic,
            auth_mode=args.auth_mode,
            environment_variables=dict(args.env),
        )
        with tempfile.TemporaryDirectory(prefix="edge-endpoint-") as work_dir:
            model_file = registry.fetch(entry, Path(work_dir) / "registry")
            result = deploy(ml_client(), plan, replace(entry, path=model_file), Path(work_dir))
    except CloudError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return error.exit_code
    sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
